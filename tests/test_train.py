"""Tests for train.py: the loop learns, resumes exactly, DDP matches one process, the
EarlyBERT phases chain (search -> efficient), and bad input gives one clear line.
Tiny model (2 layers, hidden 32) on a slice of the built-in corpus with a 1000-token vocab."""
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import data
import slim
import ticket as tickets
import train
from checkpoint import load_pretrained, save_pretrained
from model import BertConfig, BertMLM, lr_lambda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def corpus(small_corpus, fixed_vocab):
    """A generated 150 KB corpus and the fixed 1500-token test vocabulary (conftest.py)."""
    return small_corpus, fixed_vocab


def tiny(corpus, out_dir, **kw) -> train.Config:
    text, vocab = corpus
    settings = dict(out_dir=str(out_dir), data=text, vocab=vocab, layers=2, hidden=32, heads=4, ffn=64,
                    max_len=32, batch_size=8, max_steps=12, lr=3e-3, warmup=0.1, log_every=2, eval_every=1000,
                    eval_batches=4, ckpt_every=1000, ticket_every=2, device="cpu", phase="full")
    settings.update(kw)
    return train.Config(**settings)


def weights(folder: str) -> dict:
    return load_pretrained(BertMLM, folder, verbose=False).state_dict()


def log(out_dir, name) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(out_dir, name, "log.jsonl"))]


def test_a_short_run_lowers_held_out_loss_clearly(corpus, tmp_path):
    summary = train.train(tiny(corpus, tmp_path, max_steps=200, eval_every=100))
    evals = [r for r in log(tmp_path, "full") if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 100, 200]
    assert evals[0]["val_loss"] > 6.5  # ln(1000) = 6.9 for an untrained model
    assert summary["val_loss"] < evals[0]["val_loss"] - 0.8  # past the uniform guess, to about unigram level
    assert evals[1]["val_loss"] < evals[0]["val_loss"] and summary["steps"] == 200
    assert os.path.exists(tmp_path / "full" / "model" / "config.json")


def test_max_minutes_stops_at_the_first_log_step_past_the_budget(corpus, tmp_path):
    summary = train.train(tiny(corpus, tmp_path, max_minutes=1e-6, log_every=3))  # 60 microseconds
    assert summary["steps"] == 3
    assert torch.load(tmp_path / "full" / "ckpt.pt", weights_only=False)["step"] == 3  # resumable from there


@pytest.mark.parametrize("phase", ["full", "search"])
def test_resume_continues_exactly(corpus, tmp_path, phase):
    """k steps, stop, --resume to N == N steps straight: weights, optimizer, schedule, dropout
    RNG, data position and (search) the coefficients and the early-bird queue."""
    kw = dict(phase=phase, eb_epsilon=0.0, grad_accum=2)  # epsilon 0: the rule never fires, the search runs on
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


def test_ddp_two_processes_match_one_process(corpus, tmp_path):
    """torchrun with 2 CPU processes (gloo), batch 4 each == one process with batch 8."""
    kw = dict(phase="search", dropout=0.0, max_steps=6, eb_epsilon=0.0)
    one = train.train(tiny(corpus, tmp_path / "one", **kw))
    cfg = tiny(corpus, tmp_path / "two", batch_size=4, eval_batches=8, **kw)  # the same 32 held-out sequences
    args = [f"--{k.replace('_', '-')}={v}" for k, v in vars(cfg).items() if not isinstance(v, bool)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          os.path.join(ROOT, "train.py"), *args], capture_output=True, text=True, env=env, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    a = torch.load(tmp_path / "one/search/ckpt.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "two/search/ckpt.pt", weights_only=False)["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=1e-4, msg=name)
    two = json.load(open(tmp_path / "two/search/summary.json"))
    assert abs(one["val_loss"] - two["val_loss"]) < 1e-4


@pytest.fixture(scope="module")
def searched(corpus, tmp_path_factory):
    """A search in which the early-bird rule fires (a loose epsilon for a tiny model)."""
    out = tmp_path_factory.mktemp("earlybert")
    summary = train.train(tiny(corpus, out, phase="search", max_steps=200, eb_k=3, eb_epsilon=0.3, lr=1e-2,
                               lambda_head=1e-2, lambda_ffn=1e-2, dropout=0.0))  # no dropout: see the compile test
    return out, summary


def test_search_draws_a_ticket_when_the_early_bird_rule_fires(searched):
    out, summary = searched
    assert summary["rule"] == "earlybird" and summary["drawn_at"] == summary["steps"] < 200
    ticket = tickets.Ticket.load(str(out / "search" / "ticket.json"))
    assert ticket.kind == "earlybird" and ticket.step == summary["steps"]
    assert [len(h) for h in ticket.heads] == [3, 3]  # 4 heads per layer, a third pruned layer-wise
    assert sum(map(len, ticket.ffn)) == round(0.6 * 128)  # 40% of the neurons pruned globally
    last = ticket.history[-1]
    assert last["head_distance"] < 0.3 and last["ffn_distance"] < 0.3
    matrix = json.load(open(out / "search" / "mask_distances.json"))
    assert len(matrix["steps"]) == summary["steps"] // 2 and matrix["head_distance"][0][0] == 0.0
    # the start weights (for --init rewind) are the untrained model
    assert os.path.exists(out / "search" / "start" / "config.json")


@pytest.mark.parametrize("init,kind", [("rewind", "earlybird"), ("continue", "earlybird"), ("continue", "random")])
def test_efficient_phase_trains_the_rebuilt_ticket(corpus, searched, init, kind):
    out, _ = searched
    drawn = json.load(open(out / "search" / "summary.json"))["drawn_at"]
    max_steps = drawn + 4 if init == "continue" else 4
    cfg = tiny(corpus, out, phase="efficient", init=init, ticket=kind, max_steps=max_steps)
    ticket = tickets.Ticket.load(str(out / "search" / "ticket.json"))
    if kind == "random":
        ticket = tickets.random_ticket(ticket.full_heads, ticket.full_ffn, ticket.head_ratio, ticket.ffn_ratio, 0)
    # what the phase starts from: the ticket rebuilt from the search's start (rewind) or its last weights
    model, used, start = train.efficient_model(cfg)
    assert (start is None) == (init == "rewind")
    if init == "rewind":
        source = load_pretrained(BertMLM, str(out / "search" / "start"), verbose=False)
    else:
        source = slim.add_coefficients(BertMLM(load_pretrained(BertMLM, str(out / "search" / "start"),
                                                               verbose=False).config))
        source.load_state_dict(torch.load(out / "search" / "ckpt.pt", weights_only=False)["model"])
    expected = tickets.rebuild(source, ticket).state_dict()
    assert used.heads == ticket.heads and used.ffn == ticket.ffn
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name

    summary = train.train(cfg)
    name = train.run_name(cfg)
    assert name == {("rewind", "earlybird"): "efficient-rewind", ("continue", "earlybird"): "efficient",
                    ("continue", "random"): "efficient-random"}[init, kind]
    trained = load_pretrained(BertMLM, str(out / name / "model"), verbose=False)
    assert trained.config.heads_per_layer == [len(h) for h in ticket.heads]
    assert trained.config.ffn_per_layer == [len(f) for f in ticket.ffn]
    assert summary["steps"] == max_steps and summary["first_step"] == max_steps - 4
    if init == "continue":  # on from the draw: the search's schedule and its next batches
        search_ckpt = torch.load(out / "search" / "ckpt.pt", weights_only=False)
        ckpt = torch.load(out / name / "ckpt.pt", weights_only=False)
        assert ckpt["loader"]["index"] == search_ckpt["loader"]["index"] + 4
        logged = [(r["step"], r["lr"]) for r in log(out, name) if "lr" in r]
        assert logged and all(lr == pytest.approx(3e-3 * lr_lambda(max(1, int(cfg.warmup * cfg.max_steps)), cfg.max_steps)(s)) for s, lr in logged)
    assert summary["parameters"] < json.load(open(out / "search" / "summary.json"))["parameters"]


# ----------------------------------------------------------------------------- bad input

def error_of(cfg) -> str:
    with pytest.raises(ValueError) as e:
        train.train(cfg)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_missing_or_empty_data_names_the_file(corpus, tmp_path):
    assert str(tmp_path / "nope.txt") in error_of(tiny(corpus, tmp_path / "o", data=str(tmp_path / "nope.txt")))
    (tmp_path / "empty.txt").write_text("")
    assert "empty" in error_of(tiny(corpus, tmp_path / "o", data=str(tmp_path / "empty.txt")))
    os.makedirs(tmp_path / "folder")
    assert "no .txt files" in error_of(tiny(corpus, tmp_path / "o", data=str(tmp_path / "folder")))


def test_a_vocab_bigger_than_the_model_names_the_vocab(corpus, tmp_path):
    small = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64)
    save_pretrained(BertMLM(small), str(tmp_path / "ckpt"))
    message = error_of(tiny(corpus, tmp_path / "o", init_from=str(tmp_path / "ckpt")))
    assert corpus[1] in message and "vocab_size is 64" in message


def test_resume_from_another_config_or_a_corrupt_checkpoint_names_the_checkpoint(corpus, tmp_path):
    ckpt = str(tmp_path / "full" / "ckpt.pt")
    assert "no checkpoint" in error_of(tiny(corpus, tmp_path, resume=True))
    train.train(tiny(corpus, tmp_path, max_steps=2))
    assert ckpt in error_of(tiny(corpus, tmp_path, resume=True, hidden=64))
    assert "--batch-size 8" in error_of(tiny(corpus, tmp_path, resume=True, batch_size=4))
    with open(ckpt, "r+b") as f:
        f.truncate(1000)
    assert "corrupt" in error_of(tiny(corpus, tmp_path, resume=True))


def test_efficient_without_search_output_or_with_a_misfit_ticket(corpus, searched, tmp_path):
    assert str(tmp_path / "search" / "ticket.json") in error_of(tiny(corpus, tmp_path, phase="efficient"))
    out, _ = searched
    bad = tmp_path / "bad_search"
    os.makedirs(bad)
    for f in ("start", "ckpt.pt", "train_config.json"):
        os.symlink(out / "search" / f, bad / f)
    ticket = json.load(open(out / "search" / "ticket.json"))
    ticket["heads"].append([0])  # a third layer the model does not have
    ticket["ffn"].append([0])
    ticket["full_heads"].append(4)
    ticket["full_ffn"].append(64)
    json.dump(ticket, open(bad / "ticket.json", "w"))
    message = error_of(tiny(corpus, tmp_path, phase="efficient", search_dir=str(bad)))
    assert str(bad / "ticket.json") in message


def test_the_command_line_prints_one_line_for_bad_input(tmp_path):
    run = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--phase", "efficient",
                          "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [f"error: {tmp_path}/search/ticket.json: missing; run `python train.py "
                                               f"--phase search` first (or point --search-dir at its output)"]


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")),
                    reason="torch.compile on the CPU (inductor) needs a C++ compiler")
def test_compile_trains_a_pruned_model_as_eager_does(corpus, searched, tmp_path):
    """--compile on a rebuilt model whose layers differ in heads and FFN width: same weights
    as eager after two steps (the searched model has no dropout, whose random numbers a
    compiled graph draws differently)."""
    out, summary = searched
    kw = dict(phase="efficient", search_dir=str(out / "search"), max_steps=summary["drawn_at"] + 2)
    train.train(tiny(corpus, tmp_path / "eager", **kw))
    train.train(tiny(corpus, tmp_path / "compiled", compile=True, **kw))
    a = torch.load(tmp_path / "eager/efficient/ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "compiled/efficient/ckpt.pt", weights_only=False)
    assert a["model_config"]["heads_per_layer"] is not None  # really a pruned model
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], atol=1e-5, rtol=1e-4, msg=name)
