"""Training speed: MLM steps/s, tokens/s and MFU, and what each speed choice is worth.

    python bench.py                                         # CPU: a small BERT, fp32 and bf16 in turn
    python bench.py --size base --batch 128 --seq 128 512 --compile   # GPU: BERT-base, bf16
    python bench.py --loader                                # also time the data loader

For every sequence length it times full training steps (forward, backward, AdamW) of:
- ours (sparse MLM head): the vocabulary decoder, and the last layer but for its keys and
  values, run only at the ~15% predicted positions (--mask-prob);
- reference (decoder over every position): the same model with logits at all T positions,
  as the original BERT code and transformers' BertForMaskedLM compute them;
- efficient (pruned): the shapes of a default EarlyBERT ticket (1/3 of the heads, 40% of
  the FFN neurons), against the full model in time and in FLOPs.
On a CPU each variant runs in fp32 and in bf16 autocast (--precision auto; fp32 or bf16
times one), and an n x n matmul in each precision is the peak its achieved FLOP/s are
measured against; on a GPU, in the precision train.py uses there. The variants take turns,
one step each, round after round, and each one's median step counts: a CPU's speed drifts
within minutes, and the ratios should not.
Inputs are random tokens without padding, so these figures measure compute alone;
`--loader` times the data pipeline (data.py) against them.
"""
import argparse
import os
import platform
import re
import statistics
import sys
import time

import torch
from tqdm import tqdm

import corpus
import data
from model import BertConfig, BertMLM, flops_per_sequence, set_attention
from runtime import BF16_MIN_SPEEDUP, Precision, choose_precision, configure_optimizers, ffn_multiple_for, pick_device
from ticket import full_ticket, random_ticket

SIZES = {"small": dict(layers=4, hidden=256, heads=4, ffn=1024),  # runs on a laptop CPU
         "base": dict(layers=12, hidden=768, heads=12, ffn=3072)}  # BERT-base, for a GPU
WARMUP_STEPS = 3  # the first steps allocate memory, pick kernels and (with --compile) compile
MATMUL_N = 2048  # the square matmul whose FLOP/s stand for a CPU's peak
LOADER_BATCHES = 200  # the loader is fast: time many more batches than training steps

# Dense (no 2:4 sparsity) bf16 tensor-core peak FLOP/s from the vendors' data sheets; fp16
# on the V100, which has no bf16. Matched as whole words in torch.cuda.get_device_name(),
# in this order (an "H100 PCIe" is not an SXM "H100"). Another GPU gets no MFU.
PEAK_FLOPS = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
              ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10", 125e12),
              ("RTX 4090", 165e12), ("V100", 125e12)]


def peak_flops(gpu_name: str) -> float | None:
    return next((peak for key, peak in PEAK_FLOPS if re.search(rf"\b{key}\b", gpu_name)), None)


def random_batch(config: BertConfig, batch_size: int, seq_len: int, sparse: bool, mask_prob: float = 0.15) -> dict:
    """Random tokens, no padding. sparse: mlm_positions (B, P) + mlm_labels (B, P);
    otherwise mlm_labels (B, T) with -100 everywhere but the same P positions."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, config.vocab_size, (batch_size, seq_len), generator=g)  # (B, T), no special ids
    P = data.n_predictions(seq_len, mask_prob)
    positions = 1 + torch.rand(batch_size, seq_len - 2, generator=g).argsort(1)[:, :P].sort(1).values  # (B, P)
    labels = torch.randint(5, config.vocab_size, (batch_size, P), generator=g)
    if sparse:
        return {"input_ids": ids, "mlm_positions": positions, "mlm_labels": labels}
    return {"input_ids": ids, "mlm_labels": torch.full_like(ids, -100).scatter_(1, positions, labels)}


def training_step(model, batch: dict, device, precision: Precision, compile: bool = False):
    """One training step as train.py takes it, as a function: forward under autocast, backward,
    fused AdamW, zero_grad(set_to_none). Nothing in it waits for the GPU (no .item())."""
    dtype = precision.dtype
    set_attention(model, precision.plain_attention).to(device).train()
    optimizer = configure_optimizers(model, 1e-4, 0.01, device_type=device.type)
    # fp16 needs loss scaling; with a fused optimizer the scaler checks for inf on the GPU, without a sync.
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    run = model
    if compile:
        torch.compiler.reset()  # compile each variant afresh, with static shapes, as its own run would
        run = torch.compile(model)
    autocast = precision.autocast(device)
    batch = {k: v.to(device) for k, v in batch.items()}

    def step():
        with autocast:
            _, loss = run(**batch)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    return step


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_in_turn(steps: dict, rounds: int, device) -> dict:
    """The median seconds of one call of each function in `steps`, timed in turn, round after
    round. A CPU's speed drifts by tens of percent within minutes: timing one variant after
    the other would put that drift into their ratios, taking turns puts it into all alike."""
    times = {name: [] for name in steps}
    for _ in tqdm(range(rounds), desc="timing in turn", leave=False):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def loader(files: list[str], cache: str, batch_size: int, seq_len: int, vocab: str = "",
           pin_memory: bool = False) -> data.MLMBatches:
    """data.MLMBatches (reading, cutting, masking) on `files`, prepared into `cache` once."""
    data_dir, meta = data.prepare_corpus(files, cache, vocab)
    tokenizer = data.load_tokenizer(meta["vocab_path"], meta["lowercase"])
    special = {t: tokenizer.token_to_id(t) for t in data.SPECIALS}
    return data.MLMBatches(data_dir, "train", batch_size, seq_len, tokenizer.get_vocab_size(), special,
                           pin_memory=pin_memory)


def loader_batches_per_s(files: list[str], cache: str, batch_size: int, seq_len: int, steps: int,
                         pin_memory: bool, vocab: str = "") -> float:
    """Batches/s of the data loader on `files`."""
    batches = loader(files, cache, batch_size, seq_len, vocab, pin_memory)
    next(batches)  # the first batch shuffles the epoch
    start = time.perf_counter()
    for _ in tqdm(range(steps), desc="loader", leave=False):
        next(batches)
    return steps / (time.perf_counter() - start)


def _prepare_and_read(files: list[str], cache: str, vocab: str, batches: int) -> float:
    """In a fresh process: prepare `files` and read `batches` batches; returns the peak RSS and the
    anonymous (not file-backed) RSS at the end, in MiB. VmHWM, as ru_maxrss would carry the
    parent's peak over the exec; memory-mapped token pages that were read count in RSS but not in
    the anonymous part, and the OS drops them when it needs the room."""
    reading = loader(files, cache, 32, 128, vocab)
    for _ in range(batches):
        next(reading)
    with open("/proc/self/status") as f:
        status = {line.split(":")[0]: line.split()[1] for line in f if line.startswith(("VmHWM", "RssAnon"))}
    return int(status["VmHWM"]) / 1024, int(status["RssAnon"]) / 1024  # kB


def loader_peak_memory(cache: str, scales=(1, 4)) -> dict:
    """Peak memory of preparing and reading a corpus 1x and 16x the built-in one: the same peak
    means nothing grows with the corpus (streamed preparation, memory-mapped tokens)."""
    import concurrent.futures
    import multiprocessing
    files = corpus.builtin_corpus(cache)
    vocab = data.prepare_corpus(files, cache)[1]["vocab_path"]
    text = open(files[0], encoding="utf-8").read()
    peaks, anon = {}, {}
    for k in scales:
        folder = os.path.join(cache, f"scale{k}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "corpus.txt"), "w", encoding="utf-8") as f:
            for _ in range(k):
                f.write(text + "\n\n")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            peaks[k], anon[k] = pool.submit(_prepare_and_read, [os.path.join(folder, "corpus.txt")], folder, vocab,
                                   LOADER_BATCHES).result()
    return {"corpus_mb": {k: k * len(text.encode()) / 1e6 for k in scales}, "peak_rss_mib": peaks,
            "anon_rss_mib": anon}


def square_matmul(device, dtype, n: int = MATMUL_N):
    """One n x n matmul, as a function: timed beside the model, its FLOP/s (2 n^3 per call)
    are the most this machine's matmuls do, for CPUs (whose peak no table gives) the
    yardstick of the model's achieved FLOP/s."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return lambda: a @ b


# Where a CPU training step's time goes, by torch profiler op name (self time).
OP_GROUPS = [("matmuls", ("mm", "addmm", "bmm", "baddbmm", "linear", "matmul")),
             ("optimizer (AdamW)", ("_fused_adamw", "_foreach", "lerp", "addcdiv", "addcmul", "sqrt")),
             ("softmax and attention", ("softmax", "_softmax", "_scaled_dot_product", "isneginf", "where", "all",
                                        "masked_fill")),
             ("cross-entropy over the vocabulary", ("_log_softmax", "nll_loss", "logsumexp", "amax", "exp_", "sub",
                                                    "scatter_add")),
             ("dropout", ("bernoulli", "native_dropout", "dropout")),
             ("LayerNorm", ("layer_norm",)), ("GELU", ("gelu",)),
             ("embedding and its gradient", ("embedding", "index", "scatter", "gather")),
             ("copies, sums, elementwise", ("copy_", "sum", "mul", "add", "div", "fill_", "zero_", "clone", "cat"))]


def profile_step(model, batch: dict, device, precision: Precision) -> dict:
    """Seconds of a few training steps by OP_GROUPS, from torch's profiler (CPU self time)."""
    from torch.profiler import ProfilerActivity, profile
    step = training_step(model, batch, device, precision)
    for _ in range(WARMUP_STEPS):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    groups = {name: 0.0 for name, _ in OP_GROUPS} | {"other": 0.0}
    for e in prof.key_averages():
        op = e.key.removeprefix("aten::")
        name = next((g for g, ops in OP_GROUPS if any(op == o or op.startswith(o) for o in ops)), "other")
        groups[name] += e.self_cpu_time_total / 1e6 / 3
    return groups


def machine(device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{name}, peak {peak_flops(name) / 1e12:.0f} TFLOP/s" if peak_flops(name) else name
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def warm_step(model, batch: dict, args, device, precision: Precision):
    """A variant's training step, warmed up (WARMUP_STEPS), and on CUDA the memory it added
    (weights, optimizer state, activations) in GiB."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    torch.manual_seed(0)
    step = training_step(model, batch, device, precision, args.compile)
    for _ in range(WARMUP_STEPS):
        step()
    synchronize(device)
    return step, (torch.cuda.max_memory_allocated(device) - base) / 2**30 if device.type == "cuda" else None


def report(name: str, s: float, T: int, flops: int, memory_gib, args, device, matmul_peak: float = 0.0) -> dict:
    """One variant's line: step time, steps/s, tokens/s; on a CPU its GFLOP/s against the
    matmul peak timed beside it; on CUDA the memory it adds and, for a GPU in PEAK_FLOPS,
    MFU (the FLOPs this variant does, so all T positions for the reference, over the peak)."""
    r = {"variant": name, "seq": T, "ms_per_step": 1e3 * s, "steps_per_s": 1 / s,
         "tokens_per_s": args.batch * T / s, "flops": flops, "gflops": flops * args.batch / s / 1e9}
    line = f"  {name:<46} {1e3 * s:9.1f} ms/step {1 / s:8.2f} steps/s {args.batch * T / s:11,.0f} tokens/s"
    if device.type == "cpu":
        r["of_matmul_peak"] = r["gflops"] * 1e9 / matmul_peak
        line += f" {r['gflops']:7.1f} GFLOP/s = {100 * r['of_matmul_peak']:3.0f}% of matmul peak"
    if memory_gib is not None:
        r["memory_gib"] = memory_gib
        line += f" {memory_gib:6.1f} GiB peak"
        peak = peak_flops(torch.cuda.get_device_name(device))
        if peak:
            r["mfu"] = flops * args.batch / s / peak
            line += f"  MFU {100 * r['mfu']:4.1f}%"
    print(line)
    return r


def bench_length(T: int, config: BertConfig, args, device, precisions: list[Precision]) -> list[dict]:
    """All variants at one sequence length, in every precision, timed in turn, with the ratios the README quotes."""
    P = data.n_predictions(T, args.mask_prob)
    # a default EarlyBERT ticket's shapes: a random one prunes by draw_ticket's rules (FFN widths differ by layer)
    full = full_ticket(config)
    multiple = ffn_multiple_for(device, args.ffn_multiple)
    small = config.pruned(random_ticket(full.full_heads, full.full_ffn, ffn_multiple=multiple))
    print(f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, {config.num_attention_heads} heads, "
          f"FFN {config.intermediate_size}, vocab {config.vocab_size} | batch {args.batch} x seq {T}, "
          f"{P} predicted positions per sequence | {args.steps} steps of each, in turn")
    def batch(c, sparse):
        return random_batch(c, args.batch, T, sparse, args.mask_prob)
    shapes = {  # name: (config, sparse batch, FLOPs per sequence)
        "ours (sparse MLM head)": (config, True, flops_per_sequence(config, T, P)),
        "reference (decoder over every position)": (config, False, flops_per_sequence(config, T, T)),
        "efficient (pruned)": (small, True, flops_per_sequence(small, T, P))}
    variants = {(name, p.name): (shape, p) for p in precisions for name, shape in shapes.items()}
    steps, memory = {}, {}
    for key, ((c, sparse, _), p) in variants.items():
        steps[key], memory[key] = warm_step(BertMLM(c), batch(c, sparse), args, device, p)
    peaks = {}
    if device.type == "cpu":
        for p in precisions:
            steps[("matmul", p.name)] = square_matmul(device, p.dtype)
    seconds = seconds_in_turn(steps, args.steps, device)
    results = []
    for p in precisions:
        if device.type == "cpu":
            peaks[p.name] = 2 * MATMUL_N ** 3 / seconds[("matmul", p.name)]
            print(f"  {p.name}: matmul peak {peaks[p.name] / 1e9:.0f} GFLOP/s ({MATMUL_N} x {MATMUL_N}, timed in turn "
                  f"with the steps){'; attention written out' if p.plain_attention else ''}")
        ours, ref, eff = (report(f"{name}, {p.name}", seconds[(name, p.name)], T, flops, memory[(name, p.name)], args,
                                 device, peaks.get(p.name, 0.0)) for name, (_, _, flops) in shapes.items())
        for r, name in zip((ours, ref, eff), shapes):
            r.update(variant=name, precision=p.name)
        print(f"  {p.name}: ours / reference: time {ours['ms_per_step'] / ref['ms_per_step']:.2f}, "
              f"FLOPs {ours['flops'] / ref['flops']:.2f}; efficient / ours: time "
              f"{eff['ms_per_step'] / ours['ms_per_step']:.2f}, FLOPs {eff['flops'] / ours['flops']:.2f}")
        results += [ours, ref, eff]
    print(f"  heads kept {sum(small.heads_per_layer)}/{config.num_attention_heads * config.num_hidden_layers}, "
          f"FFN widths {small.ffn_per_layer} of {config.intermediate_size}")
    first = precisions[0].name
    for p in precisions[1:]:
        ratio = lambda name: seconds[(name, p.name)] / seconds[(name, first)]
        matmul = f"; matmul {ratio('matmul'):.2f}" if device.type == "cpu" else ""
        print(f"  {p.name} / {first} step time: "
              + ", ".join(f"{name.split(' (')[0]} {ratio(name):.2f}" for name in shapes) + matmul)
    del steps, variants  # free the models before profiling
    if args.profile:
        for p in precisions:
            groups = profile_step(BertMLM(config), batch(config, True), device, p)
            total = sum(groups.values())
            print(f"  where a step of ours goes in {p.name} (profiler self time): " + ", ".join(
                f"{name} {100 * t / total:.0f}%" for name, t in sorted(groups.items(), key=lambda kv: -kv[1]) if t > 0))
            results.append({"variant": "profile", "seq": T, "precision": p.name, "seconds": groups})

    if args.loader:
        cache = os.path.join("out", "data")  # train.py's default data cache: tokenized once, shared
        per_s = loader_batches_per_s(corpus.builtin_corpus(cache), cache, args.batch, T, LOADER_BATCHES,
                                     pin_memory=device.type == "cuda")
        print(f"  loader: {per_s:.1f} batches/s = {per_s / results[0]['steps_per_s']:.1f}x the training steps/s "
              f"of ours (aim: >= 10x, so the loader never stalls a step)")
        results.append({"variant": "loader", "seq": T, "batches_per_s": per_s})
        memory = loader_peak_memory(cache)
        print("  loader peak memory (prepare + 200 batches, fresh process): " + ", ".join(
            f"{memory['corpus_mb'][k]:.0f} MB corpus -> {memory['peak_rss_mib'][k]:.0f} MiB "
            f"({memory['anon_rss_mib'][k]:.0f} MiB not file-backed)" for k in memory["corpus_mb"]))
        results.append({"variant": "loader memory", **memory})
    return results


def precisions(asked: str, device, config: BertConfig, batch: int, T: int) -> list[Precision]:
    """What to time: on a CPU with --precision auto, fp32 and bf16 (and what train.py's auto
    would choose there, from its probe); else the one precision asked, as train.py resolves it."""
    if asked == "auto" and device.type == "cpu":
        bf16 = choose_precision("bf16", device, config, batch, T)
        auto = "bf16" if bf16.speedup >= BF16_MIN_SPEEDUP else "fp32"
        print(f"  --precision auto in train.py would compute in {auto} here: its probe ran a layer's bf16 step "
              f"{bf16.speedup:.2f}x as fast as fp32's")
        return [Precision(torch.float32), bf16]
    return [choose_precision(asked, device, config, batch, T)]


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=SIZES, default="small", help="model preset: small (CPU) or base (GPU)")
    for field in SIZES["small"]:  # --layers --hidden --heads --ffn override the preset
        p.add_argument(f"--{field}", type=int)
    p.add_argument("--vocab", type=int, default=30522, help="BERT's; train.py pads its own to a multiple of 64")
    p.add_argument("--seq", type=int, nargs="+", action="extend", help="one or more lengths (default 128)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--mask-prob", type=float, default=0.15,
                   help="sets the predicted positions per sequence: BERT's 0.15; train.py's recipe 0.4")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="hidden and attention dropout: train.py pre-trains without (BERT fine-tunes with 0.1)")
    p.add_argument("--steps", type=int, default=10,
                   help="timed steps of each variant, taken in turn (the median counts)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: fp32 and bf16 in turn on a CPU, the GPU's autocast precision on a GPU")
    p.add_argument("--loader", action="store_true", help="also time data.MLMBatches against the training step")
    p.add_argument("--profile", action="store_true", help="where a step of ours spends its time (torch profiler)")
    p.add_argument("--ffn-multiple", type=int, default=0,
                   help="round the pruned model's FFN widths to a multiple: 0 as train.py (64 on a GPU, 8 on the CPU)")
    args = p.parse_args(argv)
    if not 0 < args.mask_prob < 1:
        sys.exit(f"error: --mask-prob {args.mask_prob}: give the fraction of tokens to mask, in (0, 1)")
    for name, value, least in (("--batch", args.batch, 1), ("--steps", args.steps, 1),
                               *(("--seq", T, 3) for T in args.seq or [])):  # a sequence holds [CLS] and [SEP]
        if value < least:
            sys.exit(f"error: {name} {value}: must be at least {least}")
    shape = {k: getattr(args, k) or v for k, v in SIZES[args.size].items()}

    device = pick_device(args.device)
    print(f"torch {torch.__version__} | {device.type}: {machine(device)} | {torch.get_num_threads()} threads"
          f"{' | compiled' if args.compile else ''}")
    results = []
    for T in args.seq or [128]:
        config = BertConfig(vocab_size=args.vocab, hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                            num_attention_heads=shape["heads"], intermediate_size=shape["ffn"],
                            max_position_embeddings=max(512, T), hidden_dropout_prob=args.dropout,
                            attention_probs_dropout_prob=args.dropout)
        results += bench_length(T, config, args, device, precisions(args.precision, device, config, args.batch, T))
    return results


if __name__ == "__main__":
    main()
