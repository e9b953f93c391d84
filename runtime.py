"""What a run needs around its training loop, shared by train.py and finetune.py: the
command line built from a config dataclass, the device and its precision, the processes
of a distributed run, Ctrl-C at a step's end, and a lock on the output folder.

    cfg = parse_config(Config)                       # every field is a --flag
    rank, world, local_rank = setup_distributed(cfg.device)  # torchrun sets the environment
    device, autocast, dtype = pick_device(cfg.device, local_rank)
    with run_lock(run_dir):                          # one process per output folder
        ...
    finish_distributed(world)
"""
import argparse
import ctypes
import inspect
import os
import re
import signal
import threading
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import MISSING, fields

import torch
import torch.distributed as dist


def field_help(cls) -> dict:
    """Each field's trailing `# comment` in the dataclass's source: the --help text."""
    helps = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+)\s*:[^=]*=.*?#\s*(.*)$", line)
        if m:
            helps[m.group(1)] = m.group(2).strip()
    return helps


def parse_config(cls, argv=None, choices: dict | None = None, description: str = ""):
    """An argparse command line with one flag per field of `cls` (`max_steps` -> `--max-steps`),
    its type and default from the field; returns an instance of `cls`."""
    choices = choices or {}
    helps = field_help(cls)
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else f.default_factory()
        text = helps.get(f.name, "")
        if f.name in choices:
            text = f"{text} (one of: {', '.join(map(str, choices[f.name]))})".strip()
        # a float default as written in the source (1 / 3 shows as 0.3333, not 0.3333333333333333)
        text += f" [default: {default:.4g}]" if isinstance(default, float) else " [default: %(default)s]"
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            p.add_argument(flag, type=type(default), default=default, choices=choices.get(f.name), help=text,
                           metavar=f.name.upper() if f.name not in choices else None)
    return cls(**vars(p.parse_args(argv)))


def check_limits(cfg, limits: dict):
    """One line for the first setting that cannot work, before anything else is done.
    `limits`: field -> (test of its value, what the value must be)."""
    for name, (ok, must) in limits.items():
        value = getattr(cfg, name)
        if not ok(value):
            raise ValueError(f"--{name.replace('_', '-')} {value}: {must}")


# the usual limits for check_limits; NaN passes "not below 0" (a test makes a NaN loss with it)
AT_LEAST_1 = (lambda v: v >= 1, "must be at least 1")
ABOVE_0 = (lambda v: v > 0, "must be above 0")
NOT_NEGATIVE = (lambda v: not v < 0, "must be 0 or more")
FRACTION = (lambda v: 0 <= v < 1, "must be a fraction in [0, 1)")


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse instead of returning it to the OS.
    By default a block over 32 MiB (the MLM logits and their gradients, the embedding's
    gradient) is unmapped when freed, and the next step's block of that size is faulted in
    again page by page, zero-filled by the kernel: hundreds of MB a step, about a tenth of a
    CPU training step. A no-op (False) where the C library is not glibc (macOS, Windows, musl)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def pick_device(device: str = "auto", local_rank: int = 0):
    """Returns the device, the autocast context and the dtype it computes in.
    bf16 where the GPU supports it, fp16 (+ GradScaler) on older GPUs, fp32 on the CPU,
    where bf16 matmuls run several times slower than fp32."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not use_cuda:
        keep_freed_memory()
        return torch.device("cpu"), nullcontext(), torch.float32
    if not torch.cuda.is_available():
        raise ValueError("--device cuda: this torch sees no CUDA GPU")
    torch.cuda.set_device(local_rank)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.device("cuda", local_rank), torch.autocast("cuda", dtype=dtype), dtype


AUTO_FFN_MULTIPLE = {"cuda": 64, "cpu": 8}  # what --ffn-multiple 0 rounds to, by device type


def ffn_multiple_for(device: torch.device, multiple: int = 0) -> int:
    """The --ffn-multiple a run draws its ticket with (ticket.draw_ticket rounds each layer's
    kept FFN neurons up to a multiple of it): as asked, or (0) 64 on a GPU, 8 on the CPU. A bf16
    matmul whose inner width is not a multiple of 8 misses the tensor cores' fast path: with
    the odd widths of an unrounded ticket, BERT-base's pruned step took 1.35x the full one's
    time on an H200. On a 2-core CPU, widths in multiples of 8 (an AVX2 register's floats) made
    the laptop recipe's pruned step about 7% faster than odd ones (bench.py)."""
    return multiple or AUTO_FFN_MULTIPLE.get(device.type, AUTO_FFN_MULTIPLE["cpu"])


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if v is not None else None) for k, v in batch.items()}


def setup_distributed(device: str = "auto"):
    """torchrun sets RANK/WORLD_SIZE; nccl on GPUs, gloo on the CPU, also where a GPU is
    present but `device` is "cpu" (nccl has no CPU tensors). Returns (rank, world, local_rank)."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    backend = "gloo" if device == "cpu" or not torch.cuda.is_available() else "nccl"
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


def finish_distributed(world: int):
    """An orderly end: every rank waits here until rank 0 has written its last files, then
    the process group is destroyed while every rank is still alive. Without the barrier a
    rank that finishes first exits while gloo's threads still talk to the others, and may
    abort (SIGABRT), which makes torchrun kill rank 0 before it writes the model.
    The caller drops its DDP wrapper first: nothing of the group may outlive it."""
    if world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast(obj, rank: int, world: int):
    """Rank 0's `obj` on every rank (the others pass None)."""
    if world == 1:
        return obj
    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box)
    return box[0]


def sum_ranks(value: float, world: int, device):
    """`value` summed over the ranks, as a tensor on `device` (a pinned, non-blocking copy keeps
    the host from waiting for the GPU); with one process, `value` itself."""
    if world == 1:
        return value
    t = torch.tensor(value)
    t = t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)
    dist.all_reduce(t)
    return t


def any_rank(flag: bool, world: int, device) -> bool:
    """True on every rank when `flag` is true on any of them (an all-reduce: a collective and a host sync)."""
    if world == 1:
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


@contextmanager
def deferred_interrupt():
    """Ctrl-C (SIGINT) only marks the list this yields, which the loop reads at the end of a step,
    so a run stops at a step it can save whole; a second Ctrl-C interrupts at once. Outside the
    main thread, where Python runs no signal handler, it changes nothing."""
    pressed = []

    def handler(signum, frame):
        if pressed:
            raise KeyboardInterrupt
        pressed.append(True)
    if threading.current_thread() is not threading.main_thread():
        yield pressed
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def run_lock(folder: str):
    """Refuse a second process on the same output folder. An OS file lock (flock) is
    released by the kernel when its holder dies, so a crashed run never leaves it stuck.
    A folder made here that the run left empty (bad input, say) is removed again, with its new parents."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; runs are not guarded there
        yield
        return
    made, up = [], os.path.abspath(folder)  # the folders makedirs creates, the run's own first
    while not os.path.exists(up):
        made.append(up)
        up = os.path.dirname(up)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, ".lock")
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            pid = f.read().strip() or "?"
            raise ValueError(f"{folder}: another run (pid {pid}) is writing to this folder; "
                             f"wait for it or choose another --out-dir") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            if made and os.listdir(folder) == [".lock"]:  # removed while still held: no one else has it
                os.remove(path)
                for d in made:  # and the parents made for it, while they are empty
                    with suppress(OSError):
                        os.rmdir(d)
            fcntl.flock(f, fcntl.LOCK_UN)
