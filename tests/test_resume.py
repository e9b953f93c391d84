"""Tests for stopping and resuming train.py's runs: --max-minutes and Ctrl-C stop at a checkpoint and
say how to go on; a run killed mid-way or after its draw picks up where it was; a resumed run continues
exactly (the same weights, optimizer moments, logs and ticket as one run straight through); a resume in
another precision is refused with nothing lost. The tiny model and corpus of test_train.py (helpers.py)."""
import json
import os
import shlex
import signal
from dataclasses import replace

import pytest
import torch

import runtime
import train
from helpers import error_of, files_under, log, tiny
from ticket import Ticket


def test_max_minutes_stops_at_the_first_log_step_past_the_budget(corpus, tmp_path):
    summary = train.train(tiny(corpus, tmp_path, max_minutes=1e-6, log_every=3))  # 60 microseconds
    assert summary["steps"] == 3
    assert torch.load(tmp_path / "full" / "ckpt.pt", weights_only=False)["step"] == 3  # resumable from there


def test_max_minutes_stops_a_search_resumably_without_drawing(corpus, tmp_path, capsys):
    """A time budget is no draw step: the search stops, saves, says so and how to go on; no ticket."""
    cfg = tiny(corpus, tmp_path, phase="search", eb_epsilon=0.0, max_minutes=1e-6, log_every=3)
    assert train.train(cfg) is None
    printed = capsys.readouterr().err
    assert ("stopped at step 3 of 12 (--max-minutes 1e-06, before the early-bird rule fired: no ticket drawn yet); "
            f"{tmp_path / 'search' / 'ckpt.pt'} saved; go on with: ") in printed
    assert train.parse_args(shlex.split(printed.split("go on with: ")[1].splitlines()[0])[2:]) == replace(
        cfg, resume=True, max_minutes=0.0)
    written = sorted(set(os.listdir(tmp_path / "search")) - {".lock"})
    assert written == ["ckpt.pt", "log.jsonl", "start", "train_config.json"]  # no ticket, no summary
    summary = train.train(replace(cfg, resume=True, max_minutes=0.0))
    assert (summary["steps"], summary["drawn_at"], summary["rule"]) == (12, 12, "last-step")


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(corpus, tmp_path, monkeypatch, capsys):
    """Ctrl-C ends the step, saves ckpt.pt and stops with one line: the step, the checkpoint and the
    exact --resume command (the user's flags); the resumed run says where it resumes."""
    cfg = tiny(corpus, tmp_path, log_every=1)
    real = train.check_finite  # called at every log step: here, every step

    def press_ctrl_c(loss, step):
        if step == 5:
            signal.raise_signal(signal.SIGINT)
        real(loss, step)
    monkeypatch.setattr(train, "check_finite", press_ctrl_c)
    with pytest.raises(KeyboardInterrupt) as e:
        train.train(cfg)
    message, ckpt = str(e.value), tmp_path / "full" / "ckpt.pt"
    assert message.startswith(f"{tmp_path / 'full'}: stopped at step 5 of 12 (Ctrl-C); {ckpt} saved; go on with: ")
    assert "\n" not in message and torch.load(ckpt, weights_only=False)["step"] == 5
    assert train.parse_args(shlex.split(message.split("go on with: ")[1])[2:]) == replace(cfg, resume=True)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works as before again
    monkeypatch.setattr(train, "check_finite", real)
    assert train.train(replace(cfg, resume=True))["steps"] == 12
    assert "full: resuming from step 5" in capsys.readouterr().err
    assert [r["step"] for r in log(tmp_path, "full") if "loss" in r] == list(range(1, 13))


def test_a_resumed_run_logs_each_step_once(corpus, tmp_path, monkeypatch):
    """Killed after step 6, with its last checkpoint at step 4: the resumed run makes steps 5 and 6
    again, and log.jsonl holds them once (the records after the checkpoint are cut off)."""
    cfg = tiny(corpus, tmp_path, ckpt_every=4, eval_every=3)
    calls, real = [], train.evaluate

    def killed_at_step_6(*args):  # evaluations at steps 0, 3, then 6: the process dies there
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(*args)
    monkeypatch.setattr(train, "evaluate", killed_at_step_6)
    with pytest.raises(RuntimeError):
        train.train(cfg)
    assert torch.load(tmp_path / "full" / "ckpt.pt", weights_only=False)["step"] == 4
    assert [r["step"] for r in log(tmp_path, "full") if "loss" in r] == [2, 4, 6]
    monkeypatch.setattr(train, "evaluate", real)
    train.train(replace(cfg, resume=True))
    records = log(tmp_path, "full")
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in records if "val_loss" in r] == [0, 3, 6, 9, 12]


def test_a_search_killed_after_its_draw_finishes_the_draw_on_resume(corpus, tmp_path, monkeypatch):
    """Killed between the draw's checkpoint and summary.json: --resume writes the ticket, the model
    and the summary of that step, and trains no further."""
    cfg = tiny(corpus, tmp_path, phase="search", draw_step=4, max_steps=8)

    def killed(ticket, path):
        raise RuntimeError("killed")
    with monkeypatch.context() as m:
        m.setattr(Ticket, "save", killed)
        with pytest.raises(RuntimeError):
            train.train(cfg)
    ckpt = tmp_path / "search" / "ckpt.pt"
    assert torch.load(ckpt, weights_only=False)["step"] == 4 and not (tmp_path / "search" / "summary.json").exists()
    summary = train.train(replace(cfg, resume=True))
    assert (summary["steps"], summary["drawn_at"], summary["rule"]) == (4, 4, "fixed-step")
    assert torch.load(ckpt, weights_only=False)["step"] == 4 and Ticket.load(
        str(tmp_path / "search" / "ticket.json")).step == 4
    assert max(r["step"] for r in log(tmp_path, "search")) == 4


@pytest.mark.parametrize("phase, precision, coef_optimizer", [("full", "fp32", "adamw"), ("search", "fp32", "adamw"),
                                                             ("full", "bf16", "adamw"), ("search", "fp32", "sgd")])


def test_resume_continues_exactly(corpus, tmp_path, phase, precision, coef_optimizer):
    """k steps, stop, --resume to N == N steps straight: weights, optimizer, schedule, dropout
    RNG, data position and (search) the coefficients, their SGD momenta (--coef-optimizer sgd)
    and the early-bird queue; in bf16 too."""
    kw = dict(phase=phase, eb_epsilon=0.0, grad_accum=2, precision=precision,  # epsilon 0: the search runs on
              coef_optimizer=coef_optimizer)
    straight = train.train(tiny(corpus, tmp_path / "a", **kw))
    assert train.train(tiny(corpus, tmp_path / "b", **kw), stop_after=6) is None
    resumed = train.train(tiny(corpus, tmp_path / "b", resume=True, **kw))
    a = torch.load(tmp_path / "a" / phase / "ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / phase / "ckpt.pt", weights_only=False)
    assert a["step"] == b["step"] == 12 and a["loader"] == b["loader"]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert straight["val_loss"] == resumed["val_loss"]
    train_logs = [[r for r in log(tmp_path / d, phase) if "loss" in r] for d in ("a", "b")]
    assert [r["loss"] for r in train_logs[0]] == [r["loss"] for r in train_logs[1]]
    if phase == "search":
        assert len(a["early_bird"]["history"]) == 6 and a["early_bird"]["history"] == b["early_bird"]["history"]
        assert json.load(open(tmp_path / "a/search/ticket.json")) == json.load(open(tmp_path / "b/search/ticket.json"))
    if coef_optimizer == "sgd":
        momenta = [[s["momentum_buffer"] for s in ckpt["coef_sgd"]["state"].values()] for ckpt in (a, b)]
        assert len(momenta[0]) == 2 * 2 and all(torch.equal(x, y) for x, y in zip(*momenta))


def test_resume_in_another_precision_is_refused(corpus, tmp_path):
    """A run trained in fp32 is not continued in bf16 (nor the other way): one line, nothing changed."""
    assert train.train(tiny(corpus, tmp_path, precision="fp32"), stop_after=4) is None
    before = files_under(tmp_path / "full")
    message = error_of(tiny(corpus, tmp_path, precision="bf16", resume=True))
    assert "ran with --precision fp32, this command gives --precision bf16" in message
    assert files_under(tmp_path / "full") == before
    # a checkpoint written before --precision: taken as fp32, and --precision auto choosing bf16 is refused
    state = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=False)
    del state["config"]["precision"]
    torch.save(state, tmp_path / "old.pt")
    os.replace(tmp_path / "old.pt", tmp_path / "full" / "ckpt.pt")
    before = files_under(tmp_path / "full")
    bf16 = lambda config, batch, seq: {"fp32": 10.0, "bf16": 4.0, "bf16 plain": 5.0}  # a probe that finds bf16 faster
    with pytest.MonkeyPatch.context() as m:
        m.setattr(runtime, "probe_bf16", bf16)
        message = error_of(tiny(corpus, tmp_path, resume=True))
    assert "trained in fp32, but this run would compute in bf16; resume with --precision fp32" in message
    assert files_under(tmp_path / "full") == before
    assert train.train(tiny(corpus, tmp_path, resume=True))["steps"] == 12  # auto: fp32 here (conftest's probe)
