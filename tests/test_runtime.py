"""runtime.py: the command line built from a config dataclass, the device and its
precision, single-process distributed defaults, the lock on an output folder, and the
optimizer and learning-rate schedule (`-k optimizer`, `-k lr_schedule`)."""
import ctypes
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
from contextlib import nullcontext
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

from helpers import ROOT
from model import BertConfig, BertMLM
from runtime import (AT_LEAST_1, FRACTION, NOT_NEGATIVE, broadcast, check_limits, choose_precision, configure_optimizers,
                     deferred_interrupt, ffn_multiple_for, finish_distributed, keep_freed_memory, lr_lambda,
                     parse_config, pick_device, run_lock, setup_distributed, to_device)
from runtime import probe_bf16 as real_probe_bf16  # conftest answers runtime.probe_bf16 for every test


@dataclass
class Demo:
    steps: int = 10  # optimizer steps to run
    lr: float = 3e-4  # peak learning rate
    ratio: float = 1 / 3  # a fraction written as a fraction
    phase: str = "search"  # which stage of EarlyBERT
    compile: bool = False  # torch.compile the model
    resume: bool = True  # go on from ckpt.pt
    out_dir: str = "out"


CHOICES = {"phase": ("full", "search", "efficient")}


def parse(argv):
    return parse_config(Demo, argv, CHOICES, description="Demo: a tiny command line.")


def exits(argv, capsys) -> tuple[int, str, str]:
    """Run the parser on argv, which must exit; returns (code, stdout, stderr) with
    whitespace collapsed, so the terminal's width does not matter."""
    with pytest.raises(SystemExit) as e:
        parse(argv)
    out, err = capsys.readouterr()
    return e.value.code, " ".join(out.split()), " ".join(err.split())


# ----------------------------------------------------------------------------- parse_config

def test_parse_config_defaults_and_types():
    assert parse([]) == Demo()
    cfg = parse(["--steps", "5", "--lr", "1e-2", "--phase", "full", "--out-dir", "runs/a"])
    assert cfg == Demo(steps=5, lr=0.01, phase="full", out_dir="runs/a")
    assert isinstance(cfg.steps, int) and isinstance(cfg.lr, float)


def test_parse_config_help_shows_comments_defaults_and_choices(capsys):
    code, out, _ = exits(["--help"], capsys)
    assert code == 0
    assert "Demo: a tiny command line." in out
    assert "--steps STEPS optimizer steps to run [default: 10]" in out
    assert "--lr LR peak learning rate [default: 0.0003]" in out
    assert "which stage of EarlyBERT (one of: full, search, efficient) [default: search]" in out
    assert "--phase {full,search,efficient}" in out
    assert "--out-dir OUT_DIR [default: out]" in out  # no comment: the default alone
    assert "--ratio RATIO a fraction written as a fraction [default: 0.3333]" in out  # not 0.3333333333333333


def test_check_limits_names_the_first_flag_that_cannot_work():
    limits = {"steps": AT_LEAST_1, "lr": NOT_NEGATIVE, "ratio": FRACTION}
    check_limits(Demo(), limits)
    check_limits(Demo(lr=float("nan")), limits)  # NaN is not below 0 (a test makes a NaN loss with it)
    for bad, message in ((Demo(steps=0), "--steps 0: must be at least 1"), (Demo(lr=-1.0), "--lr -1.0: must be 0 or more"),
                         (Demo(ratio=1.0), "--ratio 1.0: must be a fraction in [0, 1)")):
        with pytest.raises(ValueError) as e:
            check_limits(bad, limits)
        assert str(e.value) == message


def test_ctrl_c_is_deferred_to_the_end_of_the_step():
    """The first Ctrl-C only marks the flag the loop reads; a second interrupts at once; afterwards
    Ctrl-C is Python's KeyboardInterrupt again."""
    with deferred_interrupt() as pressed:
        assert not pressed
        signal.raise_signal(signal.SIGINT)
        assert pressed
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_parse_config_bools_are_flag_pairs(capsys):
    assert parse(["--compile", "--no-resume"]) == Demo(compile=True, resume=False)
    assert parse(["--no-compile", "--resume"]) == Demo()
    code, out, _ = exits(["--help"], capsys)
    assert "--compile, --no-compile torch.compile the model [default: False]" in out
    assert "--resume, --no-resume go on from ckpt.pt [default: True]" in out


@pytest.mark.parametrize("argv, complaint", [
    (["--phase", "nope"], "argument --phase: invalid choice: 'nope'"),
    (["--steps", "many"], "argument --steps: invalid int value: 'many'"),
    (["--compile", "yes"], "unrecognized arguments: yes"),
    (["--stepz", "3"], "unrecognized arguments: --stepz 3"),
])
def test_parse_config_bad_value_is_an_argparse_error(capsys, argv, complaint):
    code, _, err = exits(argv, capsys)
    assert code == 2 and complaint in err and "Traceback" not in err


# ----------------------------------------------------------------------------- run_lock

def hold_lock(folder, conn):
    """In a child process: take the lock, say so, and hold it until told to let go."""
    with run_lock(folder):
        conn.send("locked")
        conn.recv()


def start_holder(folder):
    """A second process holding run_lock(folder). Forked, so it starts at once (no new
    interpreter, no torch import). Returns (process, pipe)."""
    ctx = multiprocessing.get_context("fork")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=hold_lock, args=(folder, theirs))
    proc.start()
    theirs.close()  # so that recv() below fails instead of hanging if the child dies first
    assert ours.poll(60) and ours.recv() == "locked"
    return proc, ours


def refused(folder) -> str:
    with pytest.raises(ValueError) as e:
        with run_lock(folder):
            pass
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{folder}: ")
    return msg


fork_only = pytest.mark.skipif(not hasattr(os, "fork") or os.name == "nt", reason="flock and fork are POSIX")


@fork_only
def test_run_lock_refuses_a_second_holder_until_it_ends(tmp_path):
    folder = str(tmp_path / "run")
    proc, pipe = start_holder(folder)
    try:
        assert f"pid {proc.pid}" in refused(folder)
        pipe.send("let go")
        proc.join()
        assert proc.exitcode == 0
        with run_lock(folder):
            assert open(os.path.join(folder, ".lock")).read() == str(os.getpid())
    finally:
        proc.kill()


@fork_only
def test_run_lock_of_a_killed_holder_does_not_block(tmp_path):
    folder = str(tmp_path / "run")
    proc, _ = start_holder(folder)
    refused(folder)
    proc.kill()  # a crash: the holder never leaves its `with` block
    proc.join()
    with run_lock(folder):
        refused(folder)  # held again, now by this process


@fork_only
def test_run_lock_is_released_when_the_run_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with run_lock(tmp_path):
            raise RuntimeError("the run crashed")
    with run_lock(tmp_path):
        pass



@fork_only
def test_a_run_that_writes_nothing_leaves_no_folder_behind(tmp_path):
    with pytest.raises(ValueError):
        with run_lock(str(tmp_path / "bad")):
            raise ValueError("nope.txt: no such file or folder")  # bad input, found under the lock
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError):
        with run_lock(str(tmp_path / "new" / "out" / "full")):  # --out-dir new/out, made for the run
            raise ValueError("nope.txt: no such file or folder")
    assert os.listdir(tmp_path) == []  # its parents too
    with run_lock(str(tmp_path / "ran")):
        (tmp_path / "ran" / "log.jsonl").write_text("{}\n")
    assert (tmp_path / "ran" / "log.jsonl").exists()
    (tmp_path / "mine").mkdir()  # a folder that was there before the run is left as it was
    with run_lock(str(tmp_path / "mine")):
        pass
    assert (tmp_path / "mine").is_dir()

# ----------------------------------------------------------------------------- device and processes

def test_pick_device_cpu():
    assert pick_device("cpu") == torch.device("cpu")


CPU = torch.device("cpu")
SHAPES = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)


def probed(fp32, bf16, plain):
    return lambda config, batch, seq: {"fp32": fp32, "bf16": bf16, "bf16 plain": plain}


def test_auto_takes_bf16_on_a_cpu_only_where_the_probe_finds_it_clearly_faster():
    amx = choose_precision("auto", CPU, SHAPES, 8, 16, probe=probed(10.0, 9.0, 5.0))
    assert amx.dtype == torch.bfloat16 and amx.plain_attention and amx.speedup == 2.0
    assert isinstance(amx.autocast(CPU), torch.autocast)
    sdpa = choose_precision("auto", CPU, SHAPES, 8, 16, probe=probed(10.0, 4.0, 5.0))
    assert sdpa.dtype == torch.bfloat16 and not sdpa.plain_attention and sdpa.speedup == 2.5
    little = choose_precision("auto", CPU, SHAPES, 8, 16, probe=probed(10.0, 9.5, 9.0))  # 1.11x: not clearly faster
    assert little.dtype == torch.float32 and not little.plain_attention and isinstance(little.autocast(CPU), nullcontext)
    emulated = choose_precision("auto", CPU, SHAPES, 8, 16, probe=probed(10.0, 80.0, 70.0))  # no bf16 instructions
    assert emulated.dtype == torch.float32 and emulated.speedup == 10 / 70
    assert "fp32" in emulated.describe("auto") and "0.14x" in emulated.describe("auto")
    asked = choose_precision("bf16", CPU, SHAPES, 8, 16, probe=probed(10.0, 80.0, 70.0))  # asked for: given
    assert asked.dtype == torch.bfloat16 and asked.plain_attention

    def never(*args):
        raise AssertionError("fp32 needs no probe")
    assert choose_precision("fp32", CPU, SHAPES, 8, 16, probe=never).dtype == torch.float32


def test_the_probe_times_one_layer_in_fp32_and_in_both_bf16_attentions():
    ms = real_probe_bf16(SHAPES, 4, 16)
    assert set(ms) == {"fp32", "bf16", "bf16 plain"} and all(t > 0 for t in ms.values())


PROBE_UNDER_AVX2 = """
import sys, time, torch
from model import BertConfig
from runtime import choose_precision
for hidden, batch, seq in ((128, 4, 32), (256, 32, 64)):  # tiny; the laptop recipe's (train.py's defaults)
    config = BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=4 * hidden)
    start = time.perf_counter()
    precision = choose_precision("auto", torch.device("cpu"), config, batch, seq)
    print(torch.backends.cpu.get_cpu_capability(), precision.name, time.perf_counter() - start)
"""


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="emulates a CPU with AVX2 and no AVX-512: needs an x86 CPU with AVX2")
def test_auto_takes_fp32_within_about_a_second_on_a_cpu_without_avx512():
    """The real probe (in a child process: conftest's stand-in does not reach it) under the kernels of
    a laptop without AVX-512 (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2), where bf16 is
    emulated many times slower than fp32: auto takes fp32, and the probe stays about a second."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", PROBE_UNDER_AVX2], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    for line in run.stdout.splitlines():
        capability, precision, seconds = line.split()
        assert capability == "AVX2" and precision == "fp32" and float(seconds) < 3, line


class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2, every field a size_t
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloc_info() -> MallInfo2:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc's malloc (Linux)")
def test_large_blocks_come_from_the_heap_and_stay_there_when_freed():
    MiB = 2**20
    assert keep_freed_memory()
    x = torch.ones(64 * MiB // 4)
    # glibc's default would map a 64 MiB block on its own (hblkhd) and unmap it when freed
    assert malloc_info().hblkhd < 64 * MiB
    del x
    assert malloc_info().fordblks >= 64 * MiB  # free in the heap, for the next step's tensors


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_pick_device_without_gpu():
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        pick_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pick_device_gpu_autocasts_matmuls():
    device = pick_device("auto")
    precision = choose_precision("auto", device, SHAPES, 8, 16)
    autocast, dtype = precision.autocast(device), precision.dtype
    assert device == torch.device("cuda", 0) and dtype in (torch.bfloat16, torch.float16)
    assert not precision.plain_attention and precision.speedup is None  # no probe on a GPU
    assert choose_precision("fp32", device, SHAPES, 8, 16).dtype == torch.float32
    assert dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    a = torch.randn(8, 8, device=device)
    with autocast:
        assert (a @ a).dtype == dtype
    assert (a @ a).dtype == torch.float32


def test_to_device_moves_tensors_and_keeps_none():
    batch = {"input_ids": torch.arange(6).view(2, 3), "labels": None}
    moved = to_device(batch, torch.device("cpu"))
    assert moved.keys() == batch.keys() and moved["labels"] is None
    assert torch.equal(moved["input_ids"], batch["input_ids"])


def test_single_process_without_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert setup_distributed() == (0, 1, 0)
    obj = {"ticket": [1, 2]}
    assert broadcast(obj, rank=0, world=1) is obj
    finish_distributed(1)  # nothing to tear down


@pytest.mark.parametrize("device, has_gpu, backend", [("cpu", True, "gloo"), ("auto", True, "nccl"),
                                                      ("cuda", True, "nccl"), ("auto", False, "gloo")])
def test_distributed_backend_follows_the_device(monkeypatch, device, has_gpu, backend):
    # --device cpu under torchrun on a GPU machine: nccl would refuse the CPU tensors
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_gpu)
    chosen = []
    monkeypatch.setattr(torch.distributed, "init_process_group", chosen.append)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    assert setup_distributed(device) == (1, 2, 1) and chosen == [backend]


def test_ffn_multiple_rounds_for_gpus_unless_asked():
    assert ffn_multiple_for(torch.device("cuda", 0)) == 64 and ffn_multiple_for(torch.device("cpu")) == 8
    assert ffn_multiple_for(torch.device("cuda", 0), 8) == 8 and ffn_multiple_for(torch.device("cpu"), 8) == 8


def tiny_config():
    return BertConfig(vocab_size=101, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
                      max_position_embeddings=64)


# ----------------------------------------------------------------------------- optimizer and schedule

def test_optimizer_decays_matrices_only():
    model = BertMLM(tiny_config())
    model.bert.layers[0].attn.head_coef = nn.Parameter(torch.ones(4))  # as slim.add_coefficients does
    model.bert.layers[0].ffn.ffn_coef = nn.Parameter(torch.ones(48))
    model.bert.embeddings.position.weight.requires_grad_(False)  # frozen: left out
    opt = configure_optimizers(model, lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    named = dict(model.named_parameters())
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    assert ids(decay) == {id(p) for n, p in named.items() if p.dim() == 2 and n != "bert.embeddings.position.weight"}
    assert ids(no_decay) == {id(p) for p in named.values() if p.dim() == 1}
    assert {id(named[n]) for n in ("bert.layers.0.attn.head_coef", "bert.layers.0.ffn.ffn_coef",
                                   "mlm.bias", "bert.layers.1.ffn_norm.weight")} <= ids(no_decay)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["fused"]  # fused on the CPU too


def test_optimizer_step_with_zero_gradient_only_shrinks_matrices():
    """AdamW's decoupled weight decay: with zero gradients a step multiplies each decayed
    weight by (1 - lr * weight_decay) and leaves the no-decay group exactly as it was."""
    model = BertMLM(tiny_config())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # biases and LayerNorms too, so that decaying one of them would show
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = configure_optimizers(model, lr=0.01, weight_decay=0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        factor = 1 - 0.01 * 0.5 if p.dim() == 2 else 1.0
        # one product (and the factor's own rounding, however AdamW forms it): a few roundings, entrywise
        assert torch.allclose(p, before[n] * factor, rtol=4 * torch.finfo(torch.float32).eps, atol=0), n


@pytest.mark.parametrize("warmup, total, start, expected", [
    (2, 6, 0, [0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]),  # up over 2 steps, then down to 0 at step 6
    (2, 6, 3, [0.75, 0.5, 0.25, 0.0]),  # going on from step 3 of the same schedule
    (0, 4, 0, [1.0, 0.75, 0.5, 0.25, 0.0]),  # no warm-up
    (4, 8, 0, [0.25, 0.5, 0.75, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]),
])
def test_lr_schedule_by_hand(warmup, total, start, expected):
    factor = lr_lambda(warmup, total, start)
    assert [factor(s) for s in range(len(expected))] == pytest.approx(expected)


def test_lr_schedule_drives_adamw():
    param = nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([param], lr=0.4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(2, 6))
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert seen == pytest.approx([0.2, 0.4, 0.4, 0.3, 0.2, 0.1])
