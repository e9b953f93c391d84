"""Tests for train.py on bad input and on what a run must never lose: a fresh run into an
earlier run's folder, a second process, a NaN loss, bad data, vocabularies, checkpoints and
tickets each stop with one line that names the file, before anything is written. The tiny
model's runs come from helpers.py, the shared search from conftest.py."""
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import fields, replace

import pytest
import torch

import runtime
import train
from checkpoint import save_pretrained
from helpers import error_of, files_under, log, tiny
from model import BertConfig, BertMLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def finished(corpus, tmp_path_factory):
    """An out dir holding a finished 2-step full run (tests copy it before changing it)."""
    out = tmp_path_factory.mktemp("finished")
    train.train(tiny(corpus, out, max_steps=2))
    return out


def test_a_fresh_run_into_an_earlier_runs_folder_stops_and_writes_nothing(corpus, finished, tmp_path):
    out, run_dir = tmp_path / "out", tmp_path / "out" / "full"
    shutil.copytree(finished, out)
    for hide in (None, "summary.json", "ckpt.pt"):  # finished; interrupted (no summary); only its summary left
        if hide:
            os.rename(run_dir / hide, tmp_path / hide)
        before = files_under(run_dir)
        message = error_of(tiny(corpus, out, max_steps=3))
        assert str(run_dir) in message and "--resume" in message and "--force" in message
        assert files_under(run_dir) == before  # log.jsonl, ckpt.pt, summary.json: byte for byte
        if hide:
            os.rename(tmp_path / hide, run_dir / hide)
    summary = train.train(tiny(corpus, out, max_steps=3, force=True))
    assert summary["steps"] == 3 == json.load(open(run_dir / "summary.json"))["steps"]
    assert [r["step"] for r in log(out, "full") if "loss" in r] == [2, 3]  # a new log, not appended to the old


def test_resume_of_a_finished_run(corpus, searched, finished, tmp_path, capsys):
    """A finished search resumed is done already: its summary back, nothing touched. A finished
    full run is not extended: a larger --max-steps would stretch its schedule, whose learning rate
    decayed to 0; the one line says to start a new run from its model instead, and changes nothing."""
    before = files_under(searched.out / "search")
    assert {"ticket.json", "ckpt.pt", "summary.json", "log.jsonl"} <= set(before)
    summary = train.train(replace(searched.cfg, resume=True))
    assert summary == json.load(open(searched.out / "search" / "summary.json"))
    assert files_under(searched.out / "search") == before

    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = files_under(out)
    assert train.train(tiny(corpus, out, max_steps=2, resume=True))["steps"] == 2  # done: a no-op
    assert "finished already at step 2" in capsys.readouterr().err
    message = error_of(tiny(corpus, out, max_steps=4, resume=True))
    assert str(out / "full" / "ckpt.pt") in message and "--max-steps 4" in message and "schedule of 2 steps" in message
    assert f"--init-from {out / 'full' / 'model'}" in message and f"--out-dir {out}-more" in message
    assert files_under(out) == before


@pytest.mark.skipif(sys.platform == "win32", reason="runs are not locked on Windows (no flock)")
def test_a_second_process_on_the_same_folder_is_refused(corpus, tmp_path):
    fcntl = pytest.importorskip("fcntl")  # POSIX only
    run_dir = tmp_path / "full"
    cfg = tiny(corpus, tmp_path, max_steps=2)
    with runtime.run_lock(str(run_dir)):
        # flock belongs to an open file description: a second open() conflicts even in this process,
        # so the call below meets the lock as another process's run would
        with open(run_dir / ".lock") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        message = error_of(cfg)
        assert str(run_dir) in message and f"pid {os.getpid()}" in message
        assert os.listdir(run_dir) == [".lock"]  # nothing written
    assert train.train(cfg)["steps"] == 2  # released: the run goes through


def test_a_nan_loss_stops_the_run_and_saves_no_model(corpus, tmp_path):
    """lambda_head = NaN makes the L1 term, so the loss and every gradient, NaN: step 1 starts
    from finite weights and leaves them NaN, so the MLM loss logged at step 2 is NaN."""
    message = error_of(tiny(corpus, tmp_path, phase="search", lambda_head=float("nan"), log_every=1, max_steps=4))
    assert "nan" in message and re.search(r"\bstep 2\b", message)
    assert not os.path.exists(tmp_path / "search" / "model")
    assert not os.path.exists(tmp_path / "search" / "summary.json")


def test_bad_data_names_the_file_and_changes_nothing_of_an_earlier_run(corpus, searched, tmp_path):
    """One line naming the user's file, and, even with --force into a finished search's out dir,
    found before anything of it is replaced (its vocab, data cache, start weights, ticket, ...)."""
    files = {"empty.txt": b"", "one_line.txt": b"Too short.\n", "binary.txt": bytes(range(256)) * 8,
             "latin1.txt": "Caf\xe9 cr\xe8me br\xfbl\xe9e, na\xefve.\n".encode("latin-1") * 100}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    os.makedirs(tmp_path / "folder")  # holds no .txt file
    before = files_under(searched.out)
    assert {"search/start/model.safetensors", "search/ticket.json"} <= set(before)
    for name, why in {"empty.txt": "empty", "one_line.txt": "too little text", "binary.txt": "not text",
                      "latin1.txt": "not UTF-8", "missing.txt": "no such file", "folder": "no .txt files"}.items():
        message = error_of(replace(searched.cfg, data=str(tmp_path / name), force=True))
        assert message.startswith(f"{tmp_path / name}: ") and why in message, message
    assert files_under(searched.out) == before


# ----------------------------------------------------------------------------- bad input

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
    assert ckpt in error_of(tiny(corpus, tmp_path, resume=True, hidden=64, max_steps=2))
    assert "--batch-size 8" in error_of(tiny(corpus, tmp_path, resume=True, batch_size=4, max_steps=2))
    with open(ckpt, "r+b") as f:
        f.truncate(1000)
    assert "corrupt" in error_of(tiny(corpus, tmp_path, resume=True))


def test_efficient_without_search_output_or_with_a_misfit_ticket(corpus, searched, tmp_path):
    assert str(tmp_path / "search" / "ticket.json") in error_of(tiny(corpus, tmp_path, phase="efficient"))
    out = searched.out
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
    message = error_of(train.Config(phase="efficient", out_dir=str(tmp_path), search_dir=str(bad), device="cpu"))
    assert str(bad / "ticket.json") in message


@pytest.mark.slow  # a fresh Python process importing torch
def test_the_command_line_prints_one_line_for_bad_input(tmp_path):
    run = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--phase", "efficient",
                          "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [f"error: {tmp_path}/search/ticket.json: missing; run `python train.py "
                                               f"--phase search --out-dir {tmp_path}` first (or point --search-dir at "
                                               f"its output)"]  # the user's --out-dir in the suggested command


@pytest.mark.slow  # a fresh Python process importing torch
def test_help_lists_every_flag_with_its_help_default_and_choices():
    """`python train.py --help`: one flag per Config field, with the field's # comment, its
    default (a float as written: 1 / 3 as 0.3333), and the allowed values where there is a choice."""
    env = {**os.environ, "COLUMNS": "10000"}  # one line per option: no wrapping to match across
    run = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--help"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    options, flag = {}, None  # --flag -> its help, continuation lines joined
    for line in run.stdout.splitlines():
        if m := re.match(r"  (--[\w-]+)", line):
            flag, options[flag] = m[1], line
        elif flag and line.startswith("   "):
            options[flag] += " " + line
        else:
            flag = None
    options = {k: " ".join(v.split()) for k, v in options.items()}
    comments = dict(re.findall(r"^    (\w+): [^=\n]+= [^#\n]+#\s*(.+)$", inspect.getsource(train.Config), re.M))
    assert set(comments) == {f.name for f in fields(train.Config)}  # every field has a help text
    assert set(options) == {"--" + f.name.replace("_", "-") for f in fields(train.Config)}
    for f in fields(train.Config):
        text = options["--" + f.name.replace("_", "-")]
        default = f"{f.default:.4g}" if isinstance(f.default, float) else f.default
        assert " ".join(comments[f.name].split()) in text and f"[default: {default}]" in text, text
        if f.name in train.CHOICES:
            assert "{" + ",".join(train.CHOICES[f.name]) + "}" in text, text
    assert set(train.CHOICES) == {"phase", "init", "ticket", "device", "precision", "coef_optimizer"}
    assert "[default: 0.3333]" in options["--head-ratio"]


# ----------------------------------------------------------------------------- settings that cannot work

@pytest.mark.parametrize("change, named", [
    (dict(max_steps=-5), "--max-steps -5: "), (dict(lr=0.0), "--lr 0.0: "), (dict(batch_size=0), "--batch-size 0: "),
    (dict(grad_accum=0), "--grad-accum 0: "), (dict(eval_batches=0), "--eval-batches 0: "),
    (dict(ticket_every=0), "--ticket-every 0: "), (dict(eb_k=1), "--eb-k 1: "),
    (dict(head_ratio=1.0), "--head-ratio 1.0: "), (dict(ffn_ratio=-0.1), "--ffn-ratio -0.1: "),
    (dict(warmup=1.5), "--warmup 1.5: "), (dict(log_every=0), "--log-every 0: "), (dict(coef_lr=0.0), "--coef-lr 0.0: "),
    (dict(draw_step=25), "--draw-step 25: beyond --max-steps 24"), (dict(hidden=30), "--hidden 30 --heads 4: ")])
def test_settings_that_cannot_work_are_refused_before_anything_else(searched, change, named):
    """One line naming the flag, before the out dir is looked at: into a finished search's folder,
    neither "holds an earlier run's results" nor a run, and nothing of it changes."""
    before = files_under(searched.out)
    assert error_of(replace(searched.cfg, **change)).startswith(named)
    assert files_under(searched.out) == before


def test_the_command_line_refuses_them_as_it_parses():
    for argv, named in ((["--max-steps", "-5"], "--max-steps -5: "), (["--eval-batches", "0"], "--eval-batches 0: "),
                        (["--draw-step", "300", "--max-steps", "200"], "--draw-step 300: beyond --max-steps 200")):
        with pytest.raises(ValueError, match="^" + re.escape(named)):
            train.parse_args(argv)


def test_a_run_refused_for_bad_data_leaves_nothing_behind(corpus, tmp_path):
    """Too little text to train a vocabulary, into a new out dir: no empty data/ (or out dir) is left."""
    (tmp_path / "short.txt").write_text("Too short.\n")
    message = error_of(tiny(corpus, tmp_path / "new" / "out", data=str(tmp_path / "short.txt"), vocab=""))
    assert "too little text" in message and os.listdir(tmp_path) == ["short.txt"]
