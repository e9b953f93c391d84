"""Tests for experiment.py: one rule for every flag of train.py (recipe or presentation), and an
experiment that never changes silently: the efficient phase takes the search's recipe, --resume
the checkpoint's, and a recipe flag given with another value is refused in one line naming both
values, before anything is written. The tiny runs come from helpers.py, the shared search from conftest.py."""
import json
import os
import shutil
from dataclasses import asdict, fields, replace
from types import SimpleNamespace

import pytest
import torch

import experiment
import train
from helpers import error_of, files_under, tiny


def test_every_flag_is_recipe_or_presentation():
    names = {f.name for f in fields(train.Config)}
    assert set(experiment.PRESENTATION) <= names
    assert set(experiment.recipe(train.Config())) == names - set(experiment.PRESENTATION)
    # what the numbers depend on is recipe; where and how often they are written or shown is not
    assert {"data", "vocab", "max_len", "mask_prob", "lr", "warmup", "batch_size", "grad_accum", "max_steps", "seed",
            "eb_k", "eb_epsilon", "draw_step", "ticket_every", "head_ratio", "ffn_multiple", "eval_batches"} <= set(
        experiment.recipe(train.Config()))
    assert {"out_dir", "log_every", "eval_every", "ckpt_every", "max_minutes", "resume", "force"} <= set(
        experiment.PRESENTATION)


def efficient(searched, **kw) -> train.Config:
    return train.Config(phase="efficient", out_dir=str(searched.out), device="cpu", **kw)


def test_the_efficient_phase_takes_every_recipe_flag_from_the_search(searched):
    """`python train.py --phase efficient` after `--phase search --max-steps 300 --lr ...`: the search's
    schedule, learning rate, batch, masking, ... (not its own defaults); its presentation stays its own."""
    cfg = experiment.search_settings(efficient(searched, ticket="random", log_every=5))
    assert searched.cfg.precision == "auto"  # recorded as what it chose: fp32 in the tests (conftest's probe)
    # conftest's probe answered even this session-scoped run (the real one would have timed a speed-up)
    assert json.load(open(searched.out / "search" / "train_config.json"))["bf16_speedup"] == 1.0
    assert experiment.recipe(cfg) == {**experiment.recipe(searched.cfg), "phase": "efficient", "ticket": "random",
                                      "precision": "fp32"}
    assert (cfg.max_steps, cfg.lr, cfg.log_every) == (searched.cfg.max_steps, searched.cfg.lr, 5)


@pytest.mark.parametrize("flag, value", [("lr", 3e-3), ("max_steps", 300), ("mask_prob", 0.15), ("batch_size", 4),
                                         ("warmup", 0.2), ("dropout", 0.1), ("seed", 1), ("eb_k", 4)])
def test_the_efficient_phase_refuses_another_recipe(searched, flag, value):
    before = files_under(searched.out)
    message = error_of(efficient(searched, force=True, **{flag: value}))  # --force: refused before anything is replaced
    dash, path = "--" + flag.replace("_", "-"), searched.out / "search" / "train_config.json"
    assert message.startswith(f"{path}: the search ran with {dash} {getattr(searched.cfg, flag)}, this command "
                              f"gives {dash} {value}; the efficient phase continues the search's recipe")
    assert files_under(searched.out) == before


@pytest.fixture(scope="module")
def stopped(corpus, tmp_path_factory):
    """A tiny full run stopped at step 6 of 12, as an interruption would, and the same run straight."""
    out = tmp_path_factory.mktemp("stopped")
    cfg = tiny(corpus, out, lr=2e-3, mask_prob=0.3, batch_size=6)  # not the defaults
    assert train.train(cfg, stop_after=6) is None
    straight = train.train(replace(cfg, out_dir=str(tmp_path_factory.mktemp("straight"))))
    return SimpleNamespace(out=out, cfg=cfg, straight=straight)


@pytest.mark.parametrize("change", [dict(mask_prob=0.15), dict(lr=1e-3), dict(eb_k=3), dict(eb_epsilon=0.2),
                                    dict(warmup=0.2), dict(head_ratio=0.5), dict(clip=0.5), dict(eval_batches=2),
                                    dict(max_steps=10)])
def test_resume_refuses_another_recipe(stopped, change):
    """--mask-prob, --lr, the early-bird and ticket settings, ...: a checkpoint continues only as it was."""
    before = files_under(stopped.out)
    (key, value), = change.items()
    dash = "--" + key.replace("_", "-")
    message = error_of(replace(stopped.cfg, resume=True, **change))
    assert message.startswith(f"{stopped.out / 'full' / 'ckpt.pt'}: the run ran with {dash} {getattr(stopped.cfg, key)}, "
                              f"this command gives {dash} {value}; --resume continues a run as it was")
    assert files_under(stopped.out) == before


def test_resume_without_flags_goes_on_with_the_checkpoints_recipe(stopped, tmp_path, capsys):
    """`python train.py --phase full --out-dir OUT --resume`: the recipe the run started with, not the
    defaults (a default that changed since, as --mask-prob's did, would change the run mid-way)."""
    out = tmp_path / "out"
    shutil.copytree(stopped.out, out)
    cfg = train.Config(phase="full", out_dir=str(out), resume=True, device="cpu", log_every=2, eval_every=1000,
                       ckpt_every=1000)
    resumed = train.train(cfg)
    assert (resumed["steps"], resumed["val_loss"]) == (12, stopped.straight["val_loss"])
    # --precision auto went on as the precision it chose (fp32 here: the probe is not run again), and
    # --ffn-multiple 0 as what it resolved to on the CPU (8)
    assert json.load(open(out / "full" / "train_config.json")) == dict(asdict(replace(
        stopped.cfg, out_dir=str(out), resume=True, precision="fp32", ffn_multiple=8)), precision_asked="fp32",
        bf16_speedup=None)
    assert "full: resuming from step 6" in capsys.readouterr().err


def test_a_command_carries_the_users_out_dir_and_flags():
    cfg = train.Config(phase="search", out_dir="my runs", max_steps=300, compile=True)
    assert experiment.command(cfg, phase="efficient") == ("python train.py --phase efficient --out-dir 'my runs' "
                                                          "--max-steps 300 --compile")
    assert experiment.command(replace(cfg, force=True), resume=True).endswith("--compile --resume")


def test_the_parser_knows_which_flags_were_typed():
    """A flag typed at its default value is typed: keep_recipe compares it like any other value."""
    cfg = train.parse_args(["--phase", "full", "--lr", "0.0007", "--no-compile"])
    assert cfg.typed == {"phase", "lr", "compile"} and cfg.lr == train.Config.lr and not cfg.compile
    assert experiment.typed(train.Config(lr=1e-3)) == {"lr"}  # made in code: what differs from the defaults


def test_resume_refuses_a_flag_typed_at_its_default_value(stopped):
    """The run used --mask-prob 0.3; `--resume --mask-prob 0.4` types the default, and is refused all the same
    (left out, the flag takes the checkpoint's 0.3)."""
    before = files_under(stopped.out)
    cfg = train.parse_args(["--phase", "full", "--out-dir", str(stopped.out), "--resume", "--device", "cpu",
                            "--mask-prob", str(train.Config.mask_prob)])
    assert error_of(cfg).startswith(f"{stopped.out / 'full' / 'ckpt.pt'}: the run ran with --mask-prob 0.3, this "
                                    f"command gives --mask-prob {train.Config.mask_prob}; --resume continues")
    assert files_under(stopped.out) == before


def test_the_efficient_phase_refuses_a_flag_typed_at_its_default_value(searched):
    assert searched.cfg.lr != train.Config.lr
    cfg = train.parse_args(["--phase", "efficient", "--out-dir", str(searched.out), "--device", "cpu",
                            "--lr", str(train.Config.lr)])
    assert error_of(cfg).startswith(f"{searched.out / 'search' / 'train_config.json'}: the search ran with --lr "
                                    f"{searched.cfg.lr}, this command gives --lr {train.Config.lr}")


def test_an_old_search_checkpoint_at_its_last_step_without_a_ticket_draws_one(corpus, tmp_path):
    """Before the last-step draw moved into the loop, a search could save its last step's checkpoint
    with no ticket drawn; --resume draws the last-step ticket from it, training no further."""
    cfg = tiny(corpus, tmp_path, phase="search", max_steps=4, eb_epsilon=0.0)  # the rule never fires
    first = train.train(cfg)
    # --ffn-multiple 0 means "8 on the CPU, 64 on a GPU": recorded as resolved, so a search resumed on
    # another device rounds its ticket as it began
    recorded = json.load(open(tmp_path / "search" / "train_config.json"))["ffn_multiple"]
    assert cfg.ffn_multiple == 0 and recorded == 8
    assert json.load(open(tmp_path / "search" / "ticket.json"))["ffn_multiple"] == recorded
    ckpt = tmp_path / "search" / "ckpt.pt"
    state = torch.load(ckpt, weights_only=False)
    assert state["step"] == 4 and state["drawn"]
    torch.save(dict(state, drawn=None), ckpt)  # as the older code left it
    drawn = json.load(open(tmp_path / "search" / "ticket.json"))
    for name in ("ticket.json", "summary.json"):
        os.remove(tmp_path / "search" / name)
    resumed = train.train(replace(cfg, resume=True))
    assert (resumed["drawn_at"], resumed["rule"], resumed["steps"]) == (4, "last-step", first["steps"])
    again = json.load(open(tmp_path / "search" / "ticket.json"))
    assert (again["heads"], again["ffn"]) == (drawn["heads"], drawn["ffn"])  # the same coefficients, the same ticket
