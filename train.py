"""Pre-train BERT, plainly or the EarlyBERT way (Chen et al., ACL 2021, section 3).

    python train.py --phase full        # baseline: plain masked-LM pre-training
    python train.py --phase search      # EarlyBERT stages 1-2: slimming coefficients + L1,
                                        #   the early-bird rule decides when to draw the ticket
    python train.py --phase efficient   # EarlyBERT stage 3: rebuild the smaller BERT, train it

With no other arguments each phase runs on a built-in English corpus (CPython's own
documentation text) in a minute or two on a laptop CPU. Several GPUs:
    torchrun --nproc_per_node=8 train.py --phase search --data corpus/ ...

One config (`Config`), overridden from the command line (`--max-steps 500`); one plain
loop in `train()`. Each phase writes into OUT_DIR/PHASE/: `log.jsonl` (every logged step),
`ckpt.pt` (everything `--resume` needs), `model/` (a checkpoint folder that model.py and
finetune.py load) and `summary.json`; the search adds `ticket.json` and `start/`.
"""
import argparse
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import data
import slim
import ticket as tickets
from model import BertConfig, BertMLM, count_parameters, load_pretrained, save_pretrained


@dataclass
class Config:
    phase: str = "search"  # full | search | efficient
    out_dir: str = "out"
    data: str = ""  # text files (comma-separated) or a folder of .txt files; "" = built-in corpus
    vocab: str = ""  # a vocab.txt; "" = the --init-from checkpoint's, else one trained on the data
    vocab_size: int = 8192  # when training a vocab
    init_from: str = ""  # a checkpoint folder to start from; "" = random init with the sizes below
    layers: int = 4
    hidden: int = 256
    heads: int = 8
    ffn: int = 1024
    dropout: float = 0.1
    max_len: int = 128
    batch_size: int = 32  # sequences per process per micro-step
    grad_accum: int = 1
    max_steps: int = 300
    max_minutes: float = 0.0  # > 0: also stop after this much training time (checked every log_every steps)
    lr: float = 1e-3
    warmup: float = 0.06  # fraction of max_steps
    weight_decay: float = 0.01
    clip: float = 1.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 20
    ckpt_every: int = 100
    resume: bool = False
    # EarlyBERT search (../shared/SPEC.md): L1 on the coefficients, pruning ratios, early-bird rule
    lambda_head: float = 1e-4
    lambda_ffn: float = 1e-4
    head_ratio: float = 1 / 3
    ffn_ratio: float = 0.4
    ticket_every: int = 10  # record a mask every N steps (the first after N steps of training)
    eb_k: int = 5
    eb_epsilon: float = 0.1
    draw_step: int = 0  # > 0: draw at this fixed step, as the official code does, instead of the rule
    # EarlyBERT efficient training
    search_dir: str = ""  # "" = OUT_DIR/search
    init: str = "continue"  # continue: from the draw step, on to max_steps | rewind: from the search's start
    ticket: str = "earlybird"  # earlybird: the drawn ticket | random: same ratios, random units


def parse_args(argv=None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool or isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            p.add_argument(flag, type=type(f.default), default=f.default)
    cfg = Config(**vars(p.parse_args(argv)))
    choices = {"phase": ("full", "search", "efficient"), "init": ("rewind", "continue"),
               "ticket": ("earlybird", "random"), "device": ("auto", "cpu", "cuda")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            p.error(f"--{name} must be one of {', '.join(allowed)}")
    return cfg


# ----------------------------------------------------------------------------- set-up

def setup_distributed():
    """torchrun sets RANK/WORLD_SIZE; nccl on GPUs, gloo on the CPU."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


def pick_device(cfg: Config, local_rank: int):
    """Returns the device, the autocast context and the dtype it computes in.
    bf16 where the GPU supports it, fp16 (+ GradScaler) on older GPUs, fp32 on the CPU,
    where bf16 matmuls are much slower than fp32."""
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu"), nullcontext(), torch.float32
    torch.cuda.set_device(local_rank)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.device("cuda", local_rank), torch.autocast("cuda", dtype=dtype), dtype


def data_files(cfg: Config, cache: str) -> list[str]:
    if not cfg.data:
        return data.builtin_corpus(cache)
    paths = []
    for item in cfg.data.split(","):
        if os.path.isdir(item):
            paths += sorted(os.path.join(item, f) for f in os.listdir(item) if f.endswith(".txt"))
            if not paths:
                raise ValueError(f"{item}: folder has no .txt files")
        else:
            paths.append(item)
    return paths


def search_dir(cfg: Config) -> str:
    return cfg.search_dir or os.path.join(cfg.out_dir, "search")


def check_search_output(cfg: Config):
    """--phase efficient needs what the search wrote; say so before any work is done."""
    for need in ("ticket.json", "start", "ckpt.pt"):
        path = os.path.join(search_dir(cfg), need)
        if not os.path.exists(path):
            raise ValueError(f"{path}: missing; run `python train.py --phase search` first "
                             f"(or point --search-dir at its output)")


def prepare_data(cfg: Config, rank: int, world: int):
    """Tokenize the corpus once into OUT_DIR/data (rank 0; the others wait and reuse it).
    The vocab: --vocab, else the starting checkpoint's, else one trained on the corpus."""
    cache = os.path.join(cfg.out_dir, "data")
    source = cfg.init_from or (os.path.join(search_dir(cfg), "start") if cfg.phase == "efficient" else "")
    vocab, lowercase = cfg.vocab, True
    if not vocab and source:
        _, vocab, lowercase = data.checkpoint_tokenizer(source)
    if rank == 0:
        files = data_files(cfg, cache)
        if not vocab:
            vocab = data.train_tokenizer(files, os.path.join(cache, "vocab"), cfg.vocab_size)
        meta = data.prepare(files, data.load_tokenizer(vocab, lowercase), cache)
        meta.update(vocab_path=vocab, lowercase=lowercase)
    if world > 1:
        box = [meta if rank == 0 else None]
        dist.broadcast_object_list(box)
        meta = box[0]
    return cache, meta


def run_name(cfg: Config) -> str:
    """OUT_DIR/NAME of a run: the phase, and for efficient training which ticket and init,
    so the control runs sit beside the EarlyBERT one instead of overwriting it."""
    if cfg.phase != "efficient":
        return cfg.phase
    return "efficient" + ("-random" if cfg.ticket == "random" else "") + ("-rewind" if cfg.init == "rewind" else "")


def build_model(cfg: Config, vocab_path: str, n_vocab: int):
    """The model each phase trains. Returns (model, ticket or None, where to start or None)."""
    if cfg.phase == "efficient":
        return efficient_model(cfg)
    if cfg.init_from:
        model = load_pretrained(BertMLM, cfg.init_from)
    else:
        # A vocabulary padded to a multiple of 64 keeps the decoder's matmul on fast
        # GPU tiles (cramming); the extra ids are never seen in the data.
        model = BertMLM(BertConfig(
            vocab_size=64 * math.ceil(n_vocab / 64), hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads, intermediate_size=cfg.ffn, max_position_embeddings=max(512, cfg.max_len),
            hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout))
    if model.config.vocab_size < n_vocab:
        raise ValueError(f"{vocab_path}: {n_vocab} tokens, but the model's vocab_size is {model.config.vocab_size}")
    return model, None, None


def efficient_model(cfg: Config):
    """EarlyBERT stage 3: the physically smaller BERT that the search's ticket describes.

    --init continue (our pre-training default): the weights at the draw step, and training
    goes on from that step (schedule and data position), so search + efficient together take
    --max-steps steps, as the full baseline does; only the steps after the draw are cheaper.
    --init rewind (the official fine-tuning code's choice): the weights the search started
    from, trained for --max-steps steps anew; in pre-training that throws the search away."""
    search = search_dir(cfg)
    ticket_path = os.path.join(search, "ticket.json")
    ticket = tickets.Ticket.load(ticket_path)
    if cfg.ticket == "random":  # the control: same ratios, units chosen at random
        ticket = tickets.random_ticket(ticket.full_heads, ticket.full_ffn, ticket.head_ratio, ticket.ffn_ratio, cfg.seed)
    if cfg.init == "rewind":  # the weights the search started from (the official code's choice)
        model = load_pretrained(BertMLM, os.path.join(search, "start"), verbose=False)
        start = None
    else:  # the weights at the draw step; their coefficients are folded in by the rebuild
        state = load_checkpoint(os.path.join(search, "ckpt.pt"))
        model = BertMLM(BertConfig.from_dict(state["model_config"]))
        slim.add_coefficients(model)
        model.load_state_dict(state["model"])
        start = {"step": state["step"], "loader": state["loader"]}
        if start["step"] >= cfg.max_steps:
            raise ValueError(f"{ticket_path}: drawn at step {start['step']}, but --max-steps is {cfg.max_steps}: "
                             f"nothing left to train with --init continue; raise --max-steps")
    tickets.check_ticket_fits(ticket, model.config, ticket_path)
    return tickets.rebuild(model, ticket), ticket, start


def make_optimizer(model, cfg: Config, device, betas=(0.9, 0.98)):
    """AdamW; no weight decay on biases, LayerNorms and slimming coefficients (all 1-D).
    beta2 0.98 for pre-training (RoBERTa, cramming); fine-tuning passes BERT's 0.999."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=1e-6, fused=device.type == "cuda")


def lr_lambda(cfg: Config, start: int = 0):
    """Linear warm-up over the first `warmup` of max_steps, then linear decay to 0 at max_steps.
    `start`: the step the scheduler's count 0 stands for (efficient training that continues a search)."""
    warm = max(1, int(cfg.warmup * cfg.max_steps))
    return lambda s: min((s + start + 1) / warm, max(0.0, (cfg.max_steps - s - start) / max(1, cfg.max_steps - warm)))


def load_checkpoint(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"{path}: cannot read the checkpoint, it is truncated or corrupt "
                         f"({str(e).splitlines()[0]})") from None


def save_checkpoint(state: dict, path: str):
    torch.save(state, path + ".tmp")  # a crash mid-write leaves the previous checkpoint intact
    os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------- the loop

@torch.no_grad()
def evaluate(model, batches, device, autocast):
    """Held-out MLM loss and accuracy over fixed batches (the same masking every time)."""
    model.eval()
    total, correct, count = 0.0, 0, 0
    for batch in batches:
        batch = to_device(batch, device)
        with autocast:
            logits, loss = model(**batch)
        labels = batch["mlm_labels"]
        n = int((labels != -100).sum())
        total += loss.item() * n
        correct += int(((logits.argmax(-1) == labels) & (labels != -100)).sum())
        count += n
    model.train()
    return total / max(count, 1), correct / max(count, 1)


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if v is not None else None) for k, v in batch.items()}


def train(cfg: Config, stop_after: int | None = None):
    """Runs one phase. `stop_after` stops early as an interruption would (tests use it)."""
    rank, world, local_rank = setup_distributed()
    device, autocast, dtype = pick_device(cfg, local_rank)
    torch.manual_seed(cfg.seed + rank)
    if cfg.phase == "efficient":
        check_search_output(cfg)
    run_dir = os.path.join(cfg.out_dir, run_name(cfg))
    ckpt_path = os.path.join(run_dir, "ckpt.pt")
    if cfg.resume and not os.path.exists(ckpt_path):  # say so before the data is prepared
        raise ValueError(f"{ckpt_path}: no checkpoint to resume from (drop --resume to start afresh)")
    os.makedirs(run_dir, exist_ok=True)
    data_dir, meta = prepare_data(cfg, rank, world)
    tokenizer = data.load_tokenizer(meta["vocab_path"], meta["lowercase"])
    n_vocab = tokenizer.get_vocab_size()
    special = {t: tokenizer.token_to_id(t) for t in data.SPECIALS}

    model, ticket, start = build_model(cfg, meta["vocab_path"], n_vocab)
    searching = cfg.phase == "search"
    if searching and rank == 0:
        save_pretrained(model, os.path.join(run_dir, "start"), meta["vocab_path"], meta["lowercase"])  # for --init rewind
    if searching:
        slim.add_coefficients(model)  # before the optimizer, so they train with the weights
    model.to(device)
    optimizer = make_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, start["step"] if start else 0))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    early_bird = tickets.EarlyBird(cfg.eb_k, cfg.eb_epsilon) if searching else None
    train_batches = data.MLMBatches(data_dir, "train", cfg.batch_size, cfg.max_len, n_vocab, special,
                                    seed=cfg.seed, rank=rank, world_size=world, pin_memory=device.type == "cuda")
    val_batches = data.MLMBatches(data_dir, "val", cfg.batch_size, cfg.max_len, n_vocab, special,
                                  seed=cfg.seed).eval_batches(cfg.eval_batches)

    step, elapsed, first_step = 0, 0.0, start["step"] if start else 0
    if start:  # go on where the search drew the ticket: same schedule, next batches
        step = start["step"]
        train_batches.load_state_dict(start["loader"])
    if cfg.resume:
        step, elapsed = resume(ckpt_path, cfg, world, model, optimizer, scheduler, scaler, train_batches,
                               early_bird, rank)
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)

    log = open(os.path.join(run_dir, "log.jsonl"), "a") if rank == 0 else None
    if rank == 0:
        json.dump(asdict(cfg), open(os.path.join(run_dir, "train_config.json"), "w"), indent=2)
        n_params = count_parameters(raw_model)
        print(f"{cfg.phase}: {n_params / 1e6:.2f}M parameters on {device} ({dtype}), {world} process(es), "
              f"{meta['train_tokens'] / 1e6:.1f}M training tokens", file=sys.stderr)

    def write(record):
        if log:
            log.write(json.dumps(record) + "\n")
            log.flush()

    def checkpoint():
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
               "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None}
        rngs = [None] * world
        if world > 1:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if rank == 0:
            save_checkpoint({"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                             "step": step, "elapsed": elapsed, "rng": rngs, "loader": train_batches.state_dict(),
                             "early_bird": early_bird.state_dict() if early_bird else None,
                             "model_config": raw_model.config.to_dict(), "config": asdict(cfg),
                             "ticket": asdict(ticket) if ticket else None}, ckpt_path)

    if not cfg.resume and rank == 0:
        val_loss, val_acc = evaluate(raw_model, val_batches, device, autocast)
        write({"step": 0, "val_loss": val_loss, "val_acc": val_acc})
    bar = tqdm(total=cfg.max_steps, initial=step, desc=cfg.phase, disable=rank != 0, dynamic_ncols=True)
    tokens_per_step = cfg.batch_size * cfg.grad_accum * world * cfg.max_len
    drawn, loss_sum, count_sum, t_log, steps_since_log = None, torch.zeros((), device=device), 0, time.time(), 0
    while step < cfg.max_steps:
        t0 = time.time()
        # The loss is the mean over every masked token of the optimizer step, on all ranks:
        # weight each micro-batch by its share of them (DDP then averages the gradients over ranks).
        micro_batches = [next(train_batches) for _ in range(cfg.grad_accum)]
        counts = [int((b["mlm_labels"] != -100).sum()) for b in micro_batches]  # on the CPU: no device sync
        total = float(sum(counts))
        if world > 1:  # summed over the ranks; a pinned, non-blocking copy keeps the host from waiting
            total = torch.tensor(total).pin_memory() if device.type == "cuda" else torch.tensor(total)
            total = total.to(device, non_blocking=True)
            dist.all_reduce(total)
        for micro, (batch, count) in enumerate(zip(micro_batches, counts)):
            batch = to_device(batch, device)
            sync = nullcontext() if world == 1 or micro == cfg.grad_accum - 1 else model.no_sync()
            with sync:
                with autocast:
                    _, loss = model(**batch)
                loss_sum += loss.detach() * count
                loss = loss * (count * world / total)
                if searching:  # the L1 of network slimming, once per optimizer step
                    loss = loss + slim.l1_penalty(raw_model, cfg.lambda_head, cfg.lambda_ffn) / cfg.grad_accum
                scaler.scale(loss).backward()
        count_sum += sum(counts)
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1
        steps_since_log += 1
        elapsed += time.time() - t0

        if step % cfg.log_every == 0 or step == cfg.max_steps:
            now = time.time()  # .item() only here: it waits for the GPU
            record = {"step": step, "loss": loss_sum.item() / count_sum, "lr": scheduler.get_last_lr()[0],
                      "step_ms": 1000 * (now - t_log) / steps_since_log,
                      "tokens_per_s": tokens_per_step * steps_since_log / (now - t_log), "elapsed_s": elapsed}
            write(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            loss_sum.zero_()
            t_log, steps_since_log, count_sum = now, 0, 0
        if searching and (step % cfg.ticket_every == 0 or step == cfg.draw_step):
            drawn = search_step(cfg, raw_model, early_bird, step, write)
        if step % cfg.eval_every == 0 and step < cfg.max_steps and rank == 0:
            val_loss, val_acc = evaluate(raw_model, val_batches, device, autocast)
            write({"step": step, "val_loss": val_loss, "val_acc": val_acc})
        # checked at log steps only: with several ranks it is a collective and a host sync
        out_of_time = cfg.max_minutes > 0 and step % cfg.log_every == 0 and elapsed > 60 * cfg.max_minutes
        if world > 1 and cfg.max_minutes > 0 and step % cfg.log_every == 0:  # every rank stops at the same step
            flag = torch.tensor(float(out_of_time), device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        if step % cfg.ckpt_every == 0 or drawn or out_of_time or step == cfg.max_steps or step == stop_after:
            checkpoint()
        bar.update(1)
        if drawn or out_of_time or step == stop_after:
            break
    bar.close()
    if stop_after is not None and step == stop_after and not drawn:
        return None

    if searching and not drawn:  # the rule never fired: draw from the last coefficients
        drawn = draw(cfg, raw_model, early_bird, step, "fixed-step")
    if rank == 0:
        val_loss, val_acc = evaluate(raw_model, val_batches, device, autocast)
        write({"step": step, "val_loss": val_loss, "val_acc": val_acc})
        summary = {"phase": cfg.phase, "steps": step, "train_seconds": elapsed, "val_loss": val_loss,
                   "val_acc": val_acc, "parameters": count_parameters(raw_model), "first_step": first_step,
                   "tokens": (step - first_step) * tokens_per_step,
                   "mean_step_ms": 1000 * elapsed / max(step - first_step, 1)}
        if drawn:
            summary_search(cfg, raw_model, drawn, early_bird, run_dir, meta, summary)
        else:
            save_pretrained(raw_model, os.path.join(run_dir, "model"), meta["vocab_path"], meta["lowercase"])
            if ticket:
                summary.update(ticket=cfg.ticket, init=cfg.init, kept_heads=sum(map(len, ticket.heads)),
                               kept_ffn=sum(map(len, ticket.ffn)))
        json.dump(summary, open(os.path.join(run_dir, "summary.json"), "w"), indent=2)
        print(report(cfg, summary, run_dir), file=sys.stderr)
    if world > 1:
        dist.destroy_process_group()
    return summary if rank == 0 else None


# Settings that a resumed run must share with the checkpoint to continue exactly (max_steps may grow).
RESUME_KEYS = ("phase", "data", "vocab", "init_from", "batch_size", "grad_accum", "max_len", "seed", "ticket", "init")


def resume(path, cfg, world, model, optimizer, scheduler, scaler, loader, early_bird, rank):
    """Continue exactly: weights, optimizer, schedule, scaler, RNG states, data position."""
    state = load_checkpoint(path)
    if state.get("model_config") != model.config.to_dict():
        raise ValueError(f"{path}: checkpoint of another model configuration; resume with the settings it was "
                         f"trained with (see train_config.json beside it)")
    changed = [k for k in RESUME_KEYS if state["config"].get(k) != getattr(cfg, k)]
    if changed or len(state["rng"]) != world:
        what = ", ".join(f"--{k.replace('_', '-')} {state['config'].get(k)!r}" for k in changed) or \
            f"{len(state['rng'])} process(es)"
        raise ValueError(f"{path}: checkpoint written with {what}; resume with the same settings")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    loader.load_state_dict(state["loader"])
    if early_bird:
        early_bird.load_state_dict(state["early_bird"])
    rng = state["rng"][rank]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state["step"], state["elapsed"]


# ----------------------------------------------------------------------------- EarlyBERT search

def search_step(cfg: Config, model, early_bird, step: int, write):
    """Record the mask the coefficients give now; draw the ticket when the early-bird rule
    fires (or at the fixed --draw-step). Returns the ticket when drawn, else None."""
    heads, ffn = slim.coefficients(model)
    head_mask, ffn_mask = tickets.current_masks(heads, ffn, cfg.head_ratio, cfg.ffn_ratio)
    fired = early_bird.update(head_mask, ffn_mask, step)
    write({"step": step, **{k: v for k, v in early_bird.history[-1].items() if k != "step"}})
    if cfg.draw_step > 0:
        return draw(cfg, model, early_bird, step, "fixed-step") if step == cfg.draw_step else None
    return draw(cfg, model, early_bird, step, "earlybird") if fired else None


def draw(cfg: Config, model, early_bird, step: int, kind: str):
    """The ticket from the coefficients now, with the mask distances that led to it."""
    return tickets.draw_ticket(*slim.coefficients(model), cfg.head_ratio, cfg.ffn_ratio, kind=kind, step=step,
                               history=early_bird.history)


def summary_search(cfg, model, ticket, early_bird, run_dir, meta, summary):
    ticket.save(os.path.join(run_dir, "ticket.json"))
    matrix = tickets.distance_matrix(early_bird.masks)
    json.dump({"steps": [m[0] for m in early_bird.masks], "head_distance": matrix[0].tolist(),
               "ffn_distance": matrix[1].tolist()}, open(os.path.join(run_dir, "mask_distances.json"), "w"))
    plot = tickets.plot_distances(early_bird, os.path.join(run_dir, "mask_distances.png"))
    summary.update(drawn_at=ticket.step, rule=ticket.kind, plot=plot,
                   kept_heads=sum(map(len, ticket.heads)), total_heads=sum(ticket.full_heads),
                   kept_ffn=sum(map(len, ticket.ffn)), total_ffn=sum(ticket.full_ffn))


def report(cfg: Config, s: dict, run_dir: str) -> str:
    lines = [f"{cfg.phase}: steps {s['first_step']}-{s['steps']} in {s['train_seconds']:.0f} s ({s['mean_step_ms']:.0f} ms/step), "
             f"held-out MLM loss {s['val_loss']:.3f}, accuracy {s['val_acc']:.3f}"]
    flags = f" --out-dir {cfg.out_dir}" if cfg.out_dir != "out" else ""
    steps = f" --max-steps {cfg.max_steps}" if cfg.max_steps != Config.max_steps else ""
    if cfg.phase == "search":
        how = "the early-bird rule fired" if s["rule"] == "earlybird" else "at a fixed step (the rule did not fire)"
        lines += [f"ticket drawn at step {s['drawn_at']} ({how}): keeps {s['kept_heads']}/{s['total_heads']} heads "
                  f"and {s['kept_ffn']}/{s['total_ffn']} FFN neurons -> {run_dir}/ticket.json",
                  f"mask distances -> {run_dir}/mask_distances.json"
                  + (f" and {s['plot']}" if s["plot"] else " (pip install matplotlib for a plot)"),
                  f"next: python train.py --phase efficient{flags}{steps}   (the controls: --ticket random; "
                  f"the baseline: --phase full{flags}{steps})"]
    else:
        lines.append(f"model -> {run_dir}/model (load with model.load_pretrained or finetune.py --model)")
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        train(parse_args())
    except ValueError as e:  # bad input: one clear line, no traceback
        sys.exit(f"error: {e}")
