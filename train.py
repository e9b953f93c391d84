"""Pre-train BERT, plainly or the EarlyBERT way (Chen et al., ACL 2021, sec. 3).

    python train.py --phase full        # baseline: plain masked-LM pre-training
    python train.py --phase search      # EarlyBERT stages 1-2 (sec. 3.1-3.2): slimming coefficients
                                        #   + L1; the early-bird rule decides when to draw the ticket
    python train.py --phase efficient   # EarlyBERT stage 3 (sec. 3.3): rebuild the smaller BERT, train it

With no other arguments each phase runs on a built-in English corpus (the documentation
text that ships with Python, torch and numpy) on a laptop CPU. Several GPUs:
    torchrun --nproc_per_node=8 train.py --phase search --data corpus/ ...

One config (`Config`), overridden from the command line (`--max-steps 500`); one plain loop
in `run()`. Each phase writes OUT_DIR/PHASE/: `log.jsonl`, `ckpt.pt` (for `--resume`), `model/`,
`summary.json`, `train_config.json`; the search adds `ticket.json`, `mask_distances.json`, `start/`.
A fresh run never replaces another's results (`--resume` continues it, `--force` replaces it).

Every flag is either part of the recipe (what is computed) or of the presentation (where and how
often things are written or shown: experiment.PRESENTATION). The efficient phase takes the
search's recipe and `--resume` the checkpoint's; a flag given with another value is refused.
"""
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from types import SimpleNamespace

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import data
import prune
from checkpoint import load_pretrained, resume, save_pretrained, save_training_state, write_json
from experiment import (check_run_dir, command, efficient_model, finished, prepare_data, report, resumed_settings,
                        run_name, search_settings, stopped, train_on, typed)
from model import BertConfig, BertMLM, count_parameters, set_attention
from runtime import (ABOVE_0, AT_LEAST_1, FRACTION, NOT_NEGATIVE, any_rank, broadcast, check_limits, choose_precision,
                     configure_optimizers, deferred_interrupt, evaluate, ffn_multiple_for, finish_distributed,
                     lr_lambda, parse_config, pick_device, run_lock, setup_distributed, sum_ranks, to_device)
from slim import Search
from ticket import EarlyBird, Ticket, full_ticket


@dataclass
class Config:
    phase: str = "search"  # full: plain pre-training | search: EarlyBERT stages 1-2 | efficient: stage 3
    out_dir: str = "out"  # each phase writes OUT_DIR/PHASE/; the prepared corpus goes to OUT_DIR/data/
    data: str = ""  # text files (comma-separated) or folders of .txt files; "" = the built-in corpus
    vocab: str = ""  # a vocab.txt; "" = --init-from's, else the search's (efficient; full beside it), else trained
    vocab_size: int = 8192  # when a vocabulary is trained
    init_from: str = ""  # a checkpoint folder to start from; "" = random init with the sizes below
    layers: int = 4  # encoder layers
    hidden: int = 256  # hidden size
    heads: int = 8  # attention heads per layer
    ffn: int = 1024  # FFN intermediate size
    dropout: float = 0.0  # hidden and attention dropout (none: a short pre-training does not overfit)
    max_len: int = 64  # tokens per sequence (64: twice the steps of 128 in the same time)
    mask_prob: float = 0.4  # fraction of tokens masked and predicted in training (BERT's: 0.15); held-out: 0.15
    batch_size: int = 32  # sequences per process per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    max_steps: int = 2400  # optimizer steps; the learning rate decays to 0 here (2-core AMD EPYC: fp32 22 min, bf16 4.5)
    max_minutes: float = 0.0  # > 0: also stop after this much training time (checked at log steps)
    lr: float = 7e-4  # peak learning rate (AdamW); 1e-3 and more stall post-LN BERT on the unigram plateau
    warmup: float = 0.04  # linear warm-up, as a fraction of max_steps (~100 steps; 18 were unstable)
    weight_decay: float = 0.01  # on matrices and embeddings only
    clip: float = 1.0  # gradient-norm clipping
    seed: int = 0  # model init, masking and data order
    device: str = "auto"  # auto: CUDA when present | cpu | cuda
    compile: bool = False  # torch.compile the model (helps on GPUs; slower on CPUs)
    precision: str = "auto"  # auto: bf16 autocast on GPUs, and on CPUs where a probe finds it clearly faster | fp32 | bf16
    log_every: int = 10  # steps between log.jsonl records
    eval_every: int = 200  # steps between held-out evaluations
    eval_batches: int = 50  # held-out batches per evaluation (fixed samples and masking)
    ckpt_every: int = 200  # steps between checkpoints
    resume: bool = False  # continue the run in OUT_DIR/PHASE exactly from its ckpt.pt
    force: bool = False  # replace an earlier run's results in OUT_DIR/PHASE
    # EarlyBERT search (sec. 3.1-3.2): L1 on the coefficients, pruning ratios, the early-bird rule
    lambda_head: float = 1e-4  # L1 weight on the head coefficients
    lambda_ffn: float = 1e-4  # L1 weight on the FFN coefficients
    coef_optimizer: str = "adamw"  # adamw: the coefficients train with the weights (official code) | sgd: network slimming's SGD
    coef_lr: float = 0.1  # --coef-optimizer sgd: its peak learning rate (network slimming's 0.1), on the weights' schedule
    head_ratio: float = 1 / 3  # fraction of heads pruned, in every layer
    ffn_ratio: float = 0.4  # fraction of FFN neurons pruned, one threshold over all layers
    ffn_multiple: int = 0  # round each layer's kept FFN neurons up to a multiple; 0: 64 on a GPU, 8 on the CPU
    ticket_every: int = 20  # record a mask every N steps (the first after N steps of training)
    eb_k: int = 5  # the early-bird rule compares the newest mask with the k-1 before it
    eb_epsilon: float = 0.1  # ... and fires when every mask distance is below epsilon
    draw_step: int = 0  # > 0: draw at this fixed step, as the official code does, instead of the rule
    # EarlyBERT efficient training (sec. 3.3)
    search_dir: str = ""  # the search's output; "" = OUT_DIR/search
    init: str = "continue"  # continue: from the draw step on to max_steps | rewind: from the search's start
    ticket: str = "earlybird"  # earlybird: the drawn ticket | random: as many units, chosen at random | random-per-layer: random units, the drawn ticket's per-layer sizes


CHOICES = {"phase": ("full", "search", "efficient"), "init": ("continue", "rewind"),
           "ticket": ("earlybird", "random", "random-per-layer"), "device": ("auto", "cpu", "cuda"),
           "precision": ("auto", "fp32", "bf16"), "coef_optimizer": ("adamw", "sgd")}
# summary.json's "time" besides the steps: the corpus, the model (efficient: reloading the search, rebuilding), the
# probe, the first FIRST_STEPS steps of a process (within the steps: new shapes), the search's masks and draw, ...
CLOCK, FIRST_STEPS = ("data", "model", "probe", "first_steps", "masks_and_draw", "evaluation", "checkpoints"), 5

# The values that cannot work, refused before anything else is looked at (check_config).
LIMITS = {**{name: AT_LEAST_1 for name in ("layers", "hidden", "heads", "ffn", "batch_size", "grad_accum", "max_steps",
                                           "log_every", "eval_every", "eval_batches", "ckpt_every", "ticket_every")},
          **{name: ABOVE_0 for name in ("lr", "clip", "coef_lr")},
          **{name: FRACTION for name in ("dropout", "warmup", "head_ratio", "ffn_ratio")},
          **{name: NOT_NEGATIVE for name in ("weight_decay", "max_minutes", "seed", "lambda_head", "lambda_ffn",
                                             "ffn_multiple", "eb_epsilon", "draw_step")},
          "max_len": (lambda v: v >= 3, "a sequence holds [CLS], [SEP] and a token at least: give 3 or more"),
          "vocab_size": (lambda v: v > len(data.SPECIALS), f"must be more than the {len(data.SPECIALS)} special tokens"),
          "mask_prob": (lambda v: 0 < v < 1, "give the fraction of tokens to mask, in (0, 1)"),
          "eb_k": (lambda v: v >= 2, "the early-bird rule compares the newest mask with the k - 1 before it: give "
                                     "at least 2")}


def parse_args(argv=None) -> Config:
    cfg = parse_config(Config, argv, CHOICES, description=__doc__.split("\n\n")[0])
    check_config(cfg)
    return cfg


def check_config(cfg: Config):
    """The settings that cannot work, as one line before anything else is looked at or written."""
    check_limits(cfg, LIMITS)
    if cfg.hidden % cfg.heads:
        raise ValueError(f"--hidden {cfg.hidden} --heads {cfg.heads}: the hidden size must divide into the heads")
    if cfg.draw_step > cfg.max_steps:
        raise ValueError(f"--draw-step {cfg.draw_step}: beyond --max-steps {cfg.max_steps}; give a step the search "
                         f"reaches, or 0 for the early-bird rule")


# ----------------------------------------------------------------------------- set-up

def build_model(cfg: Config, vocab_path: str, n_vocab: int):
    """The model each phase trains. Returns (model, ticket or None, the search's state at the draw or None)."""
    if cfg.phase == "efficient":
        return efficient_model(cfg)
    if cfg.init_from:
        model = load_pretrained(BertMLM, cfg.init_from)
    else:
        # The vocabulary padded to a multiple of 64 keeps the decoder on fast GPU tiles (cramming); the extra ids are unused.
        model = BertMLM(BertConfig(
            vocab_size=64 * math.ceil(n_vocab / 64), hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads, intermediate_size=cfg.ffn, max_position_embeddings=max(512, cfg.max_len),
            hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout))
    if model.config.vocab_size < n_vocab:
        raise ValueError(f"{vocab_path}: {n_vocab} tokens, but the model's vocab_size is {model.config.vocab_size}")
    return model, None, None


# ----------------------------------------------------------------------------- the loop

def check_finite(loss: float, step: int):
    if not math.isfinite(loss):
        raise ValueError(f"training loss is {loss} at step {step}: the run diverged; nothing was saved "
                         f"after the last checkpoint (lower --lr or raise --warmup)")


def optimizer_step(model, micro_batches, optimizer, scheduler, scaler, search, cfg: Config, world: int, device,
                   autocast, loss_sum: torch.Tensor) -> int:
    """One optimizer step over the micro-batches; adds their summed MLM loss to loss_sum (on the device:
    no waiting for the GPU) and returns how many masked tokens it is over."""
    # The loss is the mean over every masked token of the optimizer step, on all ranks:
    # weight each micro-batch by its share of them (DDP then averages the gradients over ranks).
    counts = [int((b["mlm_labels"] != -100).sum()) for b in micro_batches]  # on the CPU: no device sync
    total = sum_ranks(float(sum(counts)), world, device)
    for micro, (batch, count) in enumerate(zip(micro_batches, counts)):
        with nullcontext() if world == 1 or micro == len(micro_batches) - 1 else model.no_sync():
            with autocast:
                _, loss = model(**to_device(batch, device))
            loss_sum += loss.detach() * count
            loss = loss * (count * world / total)
            if search:  # the L1 of network slimming (sec. 3.1), once per optimizer step
                loss = loss + search.penalty() / len(micro_batches)
            scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    if search:
        search.unscale(scaler)
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
    scaler.step(optimizer)
    if search:  # --coef-optimizer sgd: the coefficients' own update, on the weights' schedule
        search.step(scaler, scheduler.get_last_lr()[0] / cfg.lr)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return sum(counts)


def stop_now(cfg: Config, step: int, elapsed: float, pressed: list, world: int, device) -> tuple[bool, bool]:
    """(out of --max-minutes, Ctrl-C pressed). With several processes every rank stops at the same
    step: they agree at log steps (a collective)."""
    out_of_time = cfg.max_minutes > 0 and step % cfg.log_every == 0 and elapsed > 60 * cfg.max_minutes
    if world == 1:
        return out_of_time, bool(pressed)
    return tuple(step % cfg.log_every == 0 and any_rank(flag, world, device) for flag in (out_of_time, bool(pressed)))


def train(cfg: Config, stop_after: int | None = None):
    """Runs one phase. `stop_after` stops early as an interruption would (tests use it)."""
    check_config(cfg)
    given, flags = cfg, typed(cfg)  # the user's own flags: for the commands a run prints, and which were typed
    run_dir = os.path.join(cfg.out_dir, run_name(cfg))
    check_run_dir(cfg, run_dir)
    state = None
    if cfg.resume:
        cfg, state = resumed_settings(cfg, run_dir, flags)
    if cfg.phase == "efficient":
        cfg = search_settings(cfg, flags)
    rank, world, local_rank = setup_distributed(cfg.device)
    device = pick_device(cfg.device, local_rank)
    # the ticket's rounding as resolved on this device is the recipe, recorded: a search resumed elsewhere keeps it
    cfg = replace(cfg, ffn_multiple=ffn_multiple_for(device, cfg.ffn_multiple))
    torch.manual_seed(cfg.seed + rank)
    done = finished(cfg, run_dir) if state else None
    if done:
        if rank == 0:
            more = f" (a finished run is not extended; {train_on(given, run_dir)})" if cfg.phase != "search" else ""
            print(f"{run_dir}: finished already at step {done['steps']}; nothing to do{more}", file=sys.stderr)
        finish_distributed(world)
        return done
    with run_lock(run_dir) if rank == 0 else nullcontext():
        summary = run(cfg, run_dir, rank, world, local_rank, device, stop_after, state, given)
    finish_distributed(world)  # every rank waits for rank 0's last files
    return summary


def set_up(cfg: Config, run_dir: str, rank: int, world: int, local_rank: int, device, state: dict | None):
    """Everything the loop works with: the data, the model (with the search's coefficients), its
    precision, optimizer and schedule, and where it starts: step 0, the search's draw (--init
    continue) or the checkpoint (--resume), as one namespace. Writes train_config.json, starts log.jsonl."""
    # where this process's time goes, in seconds (summary.json "time"; kept over --resume in the checkpoint)
    clock = dict.fromkeys(CLOCK, 0.0) | ((state or {}).get("clock") or {})
    t0 = time.time()
    data_dir, meta = prepare_data(cfg, rank, world)
    tokenizer = data.load_tokenizer(meta["vocab_path"], meta["lowercase"])
    n_vocab, special = tokenizer.get_vocab_size(), {t: tokenizer.token_to_id(t) for t in data.SPECIALS}
    t1 = time.time()
    model, ticket, at_draw = build_model(cfg, meta["vocab_path"], n_vocab)  # efficient: reload and rebuild
    t2 = time.time()
    # bf16 or fp32: rank 0 decides (on a CPU by a probe at the model's shapes), every rank follows
    precision = broadcast(choose_precision(cfg.precision, device, model.config, cfg.batch_size, cfg.max_len)
                          if rank == 0 else None, rank, world)
    clock.update(data=clock["data"] + t1 - t0, model=clock["model"] + t2 - t1, probe=clock["probe"] + time.time() - t2)
    set_attention(model, precision.plain_attention)
    search = None
    if cfg.phase == "search":
        if rank == 0:  # the weights before the search, for --init rewind
            save_pretrained(model, os.path.join(run_dir, "start"), meta["vocab_path"], meta["lowercase"])
        search = Search(model, EarlyBird(cfg.eb_k, cfg.eb_epsilon), cfg.ticket_every, cfg.lambda_head, cfg.lambda_ffn,
                        cfg.head_ratio, cfg.ffn_ratio, cfg.draw_step, cfg.ffn_multiple,
                        cfg.coef_optimizer, cfg.coef_lr)
    model.to(device)  # with the coefficients, added before the optimizer so that they train
    optimizer = configure_optimizers(model, cfg.lr, cfg.weight_decay, device_type=device.type,
                                     exclude=search.sgd_parameters if search else ())
    first_step = at_draw["step"] if at_draw else 0  # the efficient phase goes on from the draw
    if at_draw:
        prune.load_adamw_state(model, optimizer, at_draw["moments"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(max(1, int(cfg.warmup * cfg.max_steps)),
                                                                      cfg.max_steps, first_step))
    scaler = torch.amp.GradScaler("cuda", enabled=precision.dtype == torch.float16)
    train_batches = data.MLMBatches(data_dir, "train", cfg.batch_size, cfg.max_len, n_vocab, special, seed=cfg.seed,
                                    rank=rank, world_size=world, mask_prob=cfg.mask_prob, pin_memory=device.type == "cuda")
    if at_draw:  # the search's next batches
        train_batches.load_state_dict(at_draw["loader"])
    step, elapsed, drawn = first_step, 0.0, None
    ckpt_path, log_path = os.path.join(run_dir, "ckpt.pt"), os.path.join(run_dir, "log.jsonl")
    if state:
        step, elapsed = resume(state, ckpt_path, precision.name, world, rank, model, optimizer, scheduler, scaler,
                               train_batches, search)
        # a search stopped between its draw's checkpoint and its summary finishes the draw, training no further;
        # one saved at its last step without a ticket (before the last-step draw moved into the loop) draws it now
        drawn = Ticket(**state["drawn"]) if state.get("drawn") else None
        drawn = drawn or (search.draw(step, "last-step") if search and step >= cfg.max_steps else None)
        if rank == 0:
            print(f"{run_dir}: resuming from step {step} ({ckpt_path})"
                  + ("; the ticket was drawn there: finishing the draw" if drawn else ""), file=sys.stderr)
    if rank == 0:
        with open(log_path, "a" if state else "w") as log:  # resumed: the records after the checkpoint are made
            if state and state.get("log_bytes") is not None and os.path.getsize(log_path) > state["log_bytes"]:
                log.truncate(state["log_bytes"])  # again, so cut them off: each step once
        recorded = dict(asdict(cfg), precision=precision.name)  # the recipe as run: what --precision auto chose
        write_json(dict(recorded, precision_asked=cfg.precision, bf16_speedup=precision.speedup),
                   os.path.join(run_dir, "train_config.json"))
        print(f"{cfg.phase}: {count_parameters(model) / 1e6:.2f}M parameters on {device}, {world} process(es), "
              f"{meta['train_tokens'] / 1e6:.1f}M training tokens; {precision.describe(cfg.precision)}", file=sys.stderr)
    wrapped = torch.compile(model) if cfg.compile else model
    if world > 1:
        wrapped = DistributedDataParallel(wrapped, device_ids=[local_rank] if device.type == "cuda" else None)
    val_batches = data.MLMBatches(data_dir, "val", cfg.batch_size, cfg.max_len, n_vocab, special,
                                  seed=cfg.seed).eval_batches(cfg.eval_batches)
    return SimpleNamespace(model=model, wrapped=wrapped, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                           search=search, ticket=ticket, train_batches=train_batches, val_batches=val_batches,
                           precision=precision, autocast=precision.autocast(device), data_dir=data_dir, meta=meta,
                           first_step=first_step, step=step, elapsed=elapsed, drawn=drawn, ckpt_path=ckpt_path,
                           log_path=log_path, clock=clock)


def run(cfg: Config, run_dir: str, rank: int, world: int, local_rank: int, device, stop_after,
        state: dict | None, given: Config):
    """One phase: set up, the loop (an optimizer step, then what is due at that step), the end."""
    training = set_up(cfg, run_dir, rank, world, local_rank, device, state)
    model, optimizer, scheduler, search = training.model, training.optimizer, training.scheduler, training.search
    step, elapsed, drawn, first_step = training.step, training.elapsed, training.drawn, training.first_step
    clock, started = training.clock, training.step  # the first steps at this process's shapes: warm-up

    def timed(key, f, *args):
        t = time.time()
        out = f(*args)
        clock[key] += time.time() - t
        return out

    def write(record):  # a line of log.jsonl
        if rank == 0:
            with open(training.log_path, "a") as log:
                log.write(json.dumps(record) + "\n")

    def held_out():
        val_loss, val_acc = timed("evaluation", evaluate, model, training.val_batches, device, training.autocast)
        write({"step": step, "val_loss": val_loss, "val_acc": val_acc})
        return val_loss, val_acc

    def checkpoint():
        save_training_state(training.ckpt_path, world, rank, device, step=step, elapsed=elapsed,
                            model=model.state_dict(), optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(), scaler=training.scaler.state_dict(),
                            loader=training.train_batches.state_dict(), model_config=model.config.to_dict(),
                            early_bird=search.early_bird.state_dict() if search else None,
                            coef_sgd=search.sgd.state_dict() if search and search.sgd else None,
                            config=dict(asdict(cfg), precision=training.precision.name),
                            ticket=asdict(training.ticket) if training.ticket else None,
                            drawn=asdict(drawn) if drawn else None, clock=clock,
                            log_bytes=os.path.getsize(training.log_path) if rank == 0 else None)

    if not state and rank == 0:
        held_out()
    bar = tqdm(total=cfg.max_steps, initial=step, desc=cfg.phase, disable=rank != 0, dynamic_ncols=True)
    tokens_per_step = cfg.batch_size * cfg.grad_accum * world * cfg.max_len
    out_of_time = interrupted = False
    loss_sum, count_sum, t_log, steps_since_log = torch.zeros((), device=device), 0, time.time(), 0
    with deferred_interrupt() as pressed:  # Ctrl-C: the step ends, a checkpoint is saved, then the run stops
        while step < cfg.max_steps and not drawn:
            t0 = time.time()
            micro_batches = [next(training.train_batches) for _ in range(cfg.grad_accum)]
            count_sum += optimizer_step(training.wrapped, micro_batches, optimizer, scheduler, training.scaler, search,
                                        cfg, world, device, training.autocast, loss_sum)
            took = time.time() - t0
            step, steps_since_log, elapsed = step + 1, steps_since_log + 1, elapsed + took
            if step - started <= FIRST_STEPS:
                clock["first_steps"] += took
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                now = time.time()  # .item() only here: it waits for the GPU
                record = {"step": step, "loss": loss_sum.item() / count_sum, "lr": scheduler.get_last_lr()[0],
                          "step_ms": 1000 * (now - t_log) / steps_since_log,
                          "tokens_per_s": tokens_per_step * steps_since_log / (now - t_log), "elapsed_s": elapsed}
                check_finite(record["loss"], step)
                write(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                loss_sum.zero_()
                t_log, steps_since_log, count_sum = now, 0, 0
            if search:  # the masks for the early-bird rule; the ticket once it is time (sec. 3.2)
                drawn = timed("masks_and_draw", search.after_step, step, step == cfg.max_steps)
                if search.recorded:
                    write(search.recorded)
            if step % cfg.eval_every == 0 and step < cfg.max_steps and rank == 0:
                held_out()
            out_of_time, interrupted = stop_now(cfg, step, elapsed, pressed, world, device)
            if step % cfg.ckpt_every == 0 or drawn or out_of_time or interrupted or step in (cfg.max_steps, stop_after):
                timed("checkpoints", checkpoint)
            bar.update(1)
            if out_of_time or interrupted or step == stop_after:
                break
    bar.close()
    del training.wrapped  # the DDP wrapper: nothing of the process group may outlive finish_distributed

    if interrupted or (search and out_of_time and not drawn):  # resumable; a time budget is no draw step
        message = stopped(cfg, given, run_dir, step, "Ctrl-C" if interrupted else f"--max-minutes {cfg.max_minutes:g}",
                          bool(search and not drawn))
        if interrupted:
            raise KeyboardInterrupt(message)
        if rank == 0:
            print(message, file=sys.stderr)
        return None
    if step == stop_after and not drawn or rank != 0:
        return None
    val_loss, val_acc = held_out()
    check_finite(val_loss, step)
    vocab, lowercase = training.meta["vocab_path"], training.meta["lowercase"]
    summary = {"phase": cfg.phase, "steps": step, "train_seconds": elapsed, "val_loss": val_loss,
               "val_acc": val_acc, "parameters": count_parameters(model), "first_step": first_step,
               "tokens": (step - first_step) * tokens_per_step, "mean_step_ms": 1000 * elapsed / max(step - first_step, 1),
               "data_dir": training.data_dir, "vocab": vocab, "precision": training.precision.name,
               "bf16_speedup": training.precision.speedup, "threads": torch.get_num_threads(),
               "time": dict(clock, steps=elapsed)}
    final = model
    if drawn:
        summary.update(drawn.summary(), plot=search.save(run_dir, drawn))
        final = prune.rebuild(model, full_ticket(model.config))  # coefficients folded in
    elif training.ticket:  # the ticket this run trained (a random control's own), for ticket.py show / compare
        training.ticket.save(os.path.join(run_dir, "ticket.json"))
        summary.update({k: v for k, v in training.ticket.summary().items() if k.startswith(("kept", "total"))},
                       ticket=cfg.ticket, init=cfg.init)
    save_pretrained(final, os.path.join(run_dir, "model"), vocab, lowercase)
    write_json(summary, os.path.join(run_dir, "summary.json"))
    print(report(cfg, given, summary, run_dir), file=sys.stderr)
    return summary


if __name__ == "__main__":
    cfg = None
    try:
        cfg = parse_args()
        train(cfg)
    except ValueError as e:  # bad input: one clear line, no traceback
        sys.exit(f"error: {e}")
    except KeyboardInterrupt as e:  # Ctrl-C: the loop saved a checkpoint and says how to go on; elsewhere, one line too
        print(str(e) or "stopped (Ctrl-C)" + (f"; the last checkpoint, if any, goes on with: {command(cfg, resume=True)}"
                                              if cfg else ""), file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
