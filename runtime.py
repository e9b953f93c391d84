"""What a run needs around its training loop, shared by train.py and finetune.py: the
command line built from a config dataclass, the device and its precision, the processes
of a distributed run, Ctrl-C at a step's end, a lock on the output folder, and the optimizer,
learning-rate schedule and held-out evaluation both loops use.

    cfg = parse_config(Config)                       # every field is a --flag
    rank, world, local_rank = setup_distributed(cfg.device)  # torchrun sets the environment
    device = pick_device(cfg.device, local_rank)
    precision = choose_precision(cfg.precision, device, model.config, cfg.batch_size, cfg.max_len)
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
import time
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import MISSING, dataclass, fields

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
    its type and default from the field; returns an instance of `cls` whose attribute `typed` names
    the fields given on the command line (a flag typed at its default value is typed too)."""
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
        text += f" [default: {default:.4g}]" if isinstance(default, float) else f" [default: {default}]"
        if isinstance(default, bool):  # no default: a flag left out is missing from the parsed namespace
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        else:
            p.add_argument(flag, type=type(default), default=argparse.SUPPRESS, choices=choices.get(f.name),
                           help=text, metavar=f.name.upper() if f.name not in choices else None)
    given = vars(p.parse_args(argv))
    cfg = cls(**given)
    cfg.typed = frozenset(given)
    return cfg


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


def pick_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """CUDA when asked or (auto) present, else the CPU."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not use_cuda:
        keep_freed_memory()
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda: this torch sees no CUDA GPU")
    torch.cuda.set_device(local_rank)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return torch.device("cuda", local_rank)


# ----------------------------------------------------------------------------- precision

BF16_MIN_SPEEDUP = 1.2  # --precision auto takes bf16 on a CPU only when the probe finds it this much faster
PROBE_SECONDS = 0.5  # the probe's timing rounds stop after this long (at least the warm-up round runs)


@dataclass
class Precision:
    """What a run computes in: fp32, or autocast to bf16 / fp16 (fp16 needs a GradScaler).
    Weights, AdamW's state, the loss and the slimming coefficients stay fp32 either way:
    autocast only runs the matmuls (and what follows them) in the lower precision."""
    dtype: torch.dtype
    plain_attention: bool = False  # model.set_attention's choice
    speedup: float | None = None  # on a CPU: an fp32 step's time over a bf16 one's, as probed

    @property
    def name(self) -> str:
        return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self, device: torch.device):
        return nullcontext() if self.dtype == torch.float32 else torch.autocast(device.type, dtype=self.dtype)

    def describe(self, asked: str) -> str:
        line = f"precision {self.name}" + (" autocast" if self.dtype != torch.float32 else "")
        if self.speedup is not None:
            line += (f" ({asked}: bf16 ran one layer's training step {self.speedup:.2f}x as fast as fp32 at this "
                     f"run's shapes{'; attention written out' if self.plain_attention else ''})")
        return line


def probe_bf16(config, batch_size: int, seq_len: int) -> dict:
    """Milliseconds of a training step (forward and backward) of one encoder layer of `config`
    at (batch, seq_len), in fp32 and in bf16 autocast with SDPA and with attention written out.
    Takes turns, round after round, and keeps each one's fastest: the first round warms up,
    and later rounds run while the whole has taken under PROBE_SECONDS. A CPU without bf16
    instructions emulates them, many times slower: then its first bf16 step says enough, and the
    written-out form, which changes the attention only, is not timed (inf): at the laptop recipe's
    shapes under emulated AVX2, a bf16 step took 1 s against fp32's 0.09 s, and a whole round 2.2 s."""
    from model import Layer, set_attention
    layer = Layer(config, 0).train()
    x = torch.randn(min(batch_size, 16), seq_len, config.hidden_size)  # (B, T, hidden); 16 keep it quick

    def step(dtype, plain):
        set_attention(layer, plain)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            y = layer(x, None)
        y.float().square().mean().backward()
    variants = {"fp32": (torch.float32, False), "bf16": (torch.bfloat16, False), "bf16 plain": (torch.bfloat16, True)}
    times = {name: [] for name in variants}
    start = time.perf_counter()
    for _ in range(4):
        for name, args in variants.items():
            t = time.perf_counter()
            step(*args)
            times[name].append(time.perf_counter() - t)
            if name == "bf16" and times[name][0] > max(PROBE_SECONDS, 4 * times["fp32"][0]):
                times["bf16 plain"] = [float("inf")]
                return {name: 1e3 * t[0] for name, t in times.items()}
        if time.perf_counter() - start > PROBE_SECONDS:
            break
    return {name: 1e3 * min(t[1:] or t) for name, t in times.items()}


def choose_precision(precision: str, device: torch.device, config, batch_size: int, seq_len: int,
                     probe=None) -> Precision:
    """--precision auto | fp32 | bf16 for a model of `config` trained at (batch, seq_len).
    On a GPU, auto is bf16 where it has it, else fp16 (with a GradScaler). On a CPU, auto is
    bf16 only where a probe (probe_bf16, well under a second) finds a bf16 step at least
    BF16_MIN_SPEEDUP times faster than an fp32 one: CPUs with AMX or AVX512-BF16 multiply bf16
    several times faster than fp32, those without emulate it many times slower, and some report
    the instructions yet gain little, so the flags alone cannot say. `probe` stands in for
    probe_bf16 (tests give its answer)."""
    if device.type == "cuda":
        if precision in ("fp32", "fp16"):  # fp16: a run recorded on an older GPU, resumed
            return Precision(torch.float32 if precision == "fp32" else torch.float16)
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise ValueError("--precision bf16: this GPU has no bf16; use --precision auto (fp16) or fp32")
        return Precision(torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    if precision == "fp32":
        return Precision(torch.float32)
    ms = (probe or probe_bf16)(config, batch_size, seq_len)
    plain = ms["bf16 plain"] < ms["bf16"]
    speedup = ms["fp32"] / min(ms["bf16"], ms["bf16 plain"])
    use_bf16 = precision == "bf16" or speedup >= BF16_MIN_SPEEDUP
    return Precision(torch.bfloat16 if use_bf16 else torch.float32, plain and use_bf16, speedup)


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


# ----------------------------------------------------------------------------- optimizer, schedule, evaluation

def configure_optimizers(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.98),
                         device_type: str = "cpu", exclude=()) -> torch.optim.AdamW:
    """AdamW with two parameter groups: weight decay on matrices and embeddings, none on
    biases, LayerNorms and slimming coefficients (every 1-D parameter). beta2 0.98 for
    pre-training (RoBERTa, cramming); fine-tuning passes BERT's 0.999. The fused kernel (one
    pass over each parameter instead of a dozen) on CUDA and on the CPU, where it runs the
    update about 3x faster than the default multi-tensor one. `exclude`: parameters another
    optimizer trains (slimming coefficients under network slimming's SGD)."""
    params = [p for p in model.parameters() if p.requires_grad and not any(p is q for q in exclude)]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-6, fused=device_type in ("cuda", "cpu"))


def lr_lambda(warmup_steps: int, total_steps: int, start: int = 0):
    """BERT's schedule as a LambdaLR factor: linear warm-up over `warmup_steps` (0: none),
    then linear decay to 0 at `total_steps`. `start` is the step the scheduler's count 0
    stands for (efficient training that goes on from a search's draw step)."""
    def factor(s: int) -> float:
        s += start
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        return max(0.0, (total_steps - s) / max(1, total_steps - warmup_steps))
    return factor


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches, device, autocast) -> tuple[float, float]:
    """Held-out MLM loss and accuracy over fixed batches (data.MLMBatches.eval_batches: the same
    masking every time), averaged over the predicted tokens."""
    model.eval()
    total, correct, count = 0.0, 0, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items() if v is not None}
        with autocast:
            logits, loss = model(**batch)
        labels = batch["mlm_labels"]
        n = int((labels != -100).sum())
        total += loss.item() * n
        correct += int(((logits.argmax(-1) == labels) & (labels != -100)).sum())
        count += n
    model.train()
    return total / max(count, 1), correct / max(count, 1)
