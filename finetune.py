"""Fine-tune BERT on GLUE or SQuAD v1.1, plainly or the EarlyBERT way (Chen et al., ACL 2021).

    python finetune.py --task sst-2 --data glue/SST-2 --model bert-base-cased/ [--earlybert [--ticket random]]
    python finetune.py --task squad --data squad/ --model bert-base-uncased/ --batch-size 12 --lr 3e-5
    python finetune.py --compare out/finetune/sst-2-*     # finished runs side by side, a markdown table

The tasks' data, windows, batches and metrics are in tasks.py; this file is the loop and the stages.
Plain fine-tuning: AdamW, linear warm-up over --warmup of the steps, then linear decay to 0.
--earlybert runs the paper's three stages on the task:
  1. searching (sec. 3.1): a slimming coefficient on every head and FFN neuron, trained with
     the weights under an L1 penalty (--l1) at --search-lr;
  2. drawing the ticket (sec. 3.2): the early-bird rule on the masks, every --ticket-every steps, or the
     longest search (--search-fraction of an epoch); heads pruned layer-wise, FFN neurons globally;
  3. efficient training (sec. 3.3): the pre-trained checkpoint again, fresh task head (as the official
     code's checkpoint-0), rebuilt smaller, trained without L1 for --epochs at --lr.
--ticket random is the control: as many units pruned, chosen at random, no search.
Writes OUT_DIR/TASK-{full,earlybert,random}/: model/, results.json (dev scores, steps, seconds,
FLOPs per example, the ticket), predictions.json; EarlyBERT and the random ticket add ticket.json,
EarlyBERT also mask_distances.json.
"""
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import prune
from checkpoint import load_pretrained, read_json, save_pretrained, write_json
from data import checkpoint_tokenizer
from model import count_parameters, flops_per_sequence, set_attention
from runtime import (ABOVE_0, AT_LEAST_1, FRACTION, NOT_NEGATIVE, broadcast, check_limits, choose_precision,
                     configure_optimizers, ffn_multiple_for, finish_distributed, lr_lambda, parse_config, pick_device,
                     run_lock, setup_distributed, to_device)
from slim import Search
from tasks import Task, batches, collate, load_task, task_name
from ticket import EarlyBird, full_ticket, random_ticket

# The official search is a fine-tuning run of its own, 3 epochs long, cut at the draw step.
SEARCH_EPOCHS = 3
FIRST_STEPS = 5  # results.json "time": the first steps at the model's shapes, timed apart


@dataclass
class Config:
    task: str = "sst-2"  # cola, sst-2, mrpc, qqp, sts-b, mnli, qnli, rte, wnli, text (sentence<TAB>label) or squad
    data: str = ""  # the task's folder: GLUE's train.tsv + dev.tsv, or SQuAD's train-v1.1.json + dev-v1.1.json
    model: str = ""  # a checkpoint folder (config.json, vocab.txt, weights): a downloaded BERT or train.py's model/
    out_dir: str = "out/finetune"  # results go to OUT_DIR/TASK-{full,earlybert,random}/
    force: bool = False  # overwrite the results of an earlier run of the same task and variant
    epochs: int = 3  # training epochs (of the smaller model, with --earlybert)
    lr: float = 2e-5  # peak learning rate; 2e-5 is BERT-base's, smaller models often want 5e-5 to 1e-4
    batch_size: int = 32  # examples per process per step
    max_len: int = 0  # tokens per sequence; 0: 128 for GLUE, 384 for SQuAD
    doc_stride: int = 128  # SQuAD: tokens between the starts of a long context's windows
    max_steps: int = 0  # > 0: at most this many steps per stage (quick looks, tests)
    warmup: float = 0.1  # linear warm-up of training, as a fraction of its steps (the search has none)
    weight_decay: float = 0.01  # AdamW's, on matrices only
    seed: int = 42  # shuffling, fresh task heads, random tickets
    device: str = "auto"  # auto: a GPU when there is one
    precision: str = "auto"  # auto: bf16 autocast on GPUs, and on CPUs where a probe finds it clearly faster | fp32 | bf16
    # EarlyBERT (sec. 3); the defaults are the official fine-tuning scripts'
    earlybert: bool = False  # search, draw the ticket, train the smaller model
    ticket: str = "earlybird"  # earlybird: searched | random: the control, same sizes, units at random
    search_lr: float = 2e-5  # the search's learning rate: no warm-up, linear decay over 3 epochs, cut at the draw
    l1: float = 1e-4  # lambda of the L1 penalty on the slimming coefficients, heads and FFN neurons alike
    head_ratio: float = 1 / 3  # fraction of heads pruned in every layer
    ffn_ratio: float = 0.4  # fraction of FFN neurons pruned over all layers
    ffn_multiple: int = 0  # round each layer's kept FFN neurons up to a multiple; 0: 64 on a GPU, 8 on the CPU
    search_fraction: float = 0.2  # the longest search, in epochs (the official code's fixed draw step)
    ticket_every: int = 0  # steps between the masks the early-bird rule compares; 0: the longest search / (2 k)
    eb_k: int = 5  # the early-bird rule compares the newest mask with the k - 1 before it
    eb_epsilon: float = 0.1  # and fires when every distance is below epsilon (0: never, draw at the longest search)


def parse_args(argv=None) -> Config:
    return parse_config(Config, argv, {"ticket": ("earlybird", "random"), "device": ("auto", "cpu", "cuda"),
                                         "precision": ("auto", "fp32", "bf16")},
                        description=__doc__)


# the values that cannot work, refused before anything else (check_config)
LIMITS = {"epochs": AT_LEAST_1, "batch_size": AT_LEAST_1, "doc_stride": AT_LEAST_1, "lr": ABOVE_0, "search_lr": ABOVE_0,
          "search_fraction": ABOVE_0, "warmup": FRACTION, "head_ratio": FRACTION, "ffn_ratio": FRACTION,
          **{name: NOT_NEGATIVE for name in ("max_len", "max_steps", "weight_decay", "seed", "l1", "ffn_multiple",
                                             "eb_epsilon")},
          "ticket_every": (lambda v: v >= 0, "the spacing of the masks must be 0 (automatic) or more steps"),
          "eb_k": (lambda v: v >= 2, "the early-bird rule compares the newest mask with the k - 1 before it: "
                                     "give at least 2")}


def check_config(cfg: Config):
    """Settings that cannot work, as one line before any work is done."""
    if cfg.ticket == "random" and not cfg.earlybert:
        raise ValueError("--ticket random is the control of --earlybert: give both")
    check_limits(cfg, LIMITS)


# ----------------------------------------------------------------------------- the loop

@torch.no_grad()
def predict(model, features, cfg, process, desc: str) -> list[tuple]:
    """The model's outputs for each feature, in order: (logits,) or (start, end), float32 numpy."""
    model.eval()
    outputs, size = [], 2 * cfg.batch_size
    for i in tqdm(range(0, len(features), size), desc=desc, leave=False, disable=process.rank != 0, dynamic_ncols=True):
        batch = to_device(collate(features[i:i + size], targets=False), process.device)
        with process.autocast:
            logits, _ = model(**batch)
        logits = logits if isinstance(logits, tuple) else (logits,)
        outputs += zip(*(x.float().cpu().numpy() for x in logits))
    model.train()
    return outputs


def evaluate(model, task: Task, cfg: Config, process) -> tuple[dict, dict]:
    """Dev scores: the model's outputs on each dev split, scored as the task's paper scores them (tasks.py)."""
    return task.score({split: predict(model, features, cfg, process, split) for split, features in task.dev.items()})


def fit(model, task: Task, cfg: Config, process, lr: float, warmup_steps: int, total_steps: int, stop_at: int,
        search: Search | None = None, desc: str = "train") -> dict:
    """The one training loop, for plain fine-tuning, the search and efficient training: AdamW with
    BERT's betas (0.9, 0.999), linear warm-up over warmup_steps then linear decay to 0 at total_steps,
    gradients clipped at 1.0 (BERT's), stopping after stop_at steps; dev scores after every epoch.

    With a `search` (slim.Search) the loop is EarlyBERT's (sec. 3.1-3.2): the loss gets the L1
    penalty on the slimming coefficients, the early-bird rule sees their masks, and training stops
    when it fires or at stop_at, where the ticket is drawn as the official code draws it
    (run["ticket"]); there is no dev evaluation."""
    set_attention(model, process.precision.plain_attention).to(process.device).train()
    net = DistributedDataParallel(model) if process.world > 1 else model
    optimizer = configure_optimizers(model, lr, cfg.weight_decay, (0.9, 0.999), process.device.type)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup_steps, total_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=process.dtype == torch.float16)
    run = {"steps": 0, "seconds": 0.0, "ticket": None, "history": [], "metrics": None, "predictions": None,
           "clock": {"first_steps": 0.0, "masks_and_draw": 0.0, "evaluation": 0.0}}  # within seconds, but evaluation
    bar = tqdm(total=stop_at, desc=desc, disable=process.rank != 0, dynamic_ncols=True)
    epoch, t0 = 0, time.time()
    while run["steps"] < stop_at and not run["ticket"]:
        losses = []
        for batch in batches(task.train, cfg.batch_size, cfg.seed + epoch, process.rank, process.world):
            with process.autocast:
                _, loss = net(**to_device(batch, process.device))
            losses.append(loss.detach())  # no .item() per step: it would make the host wait for the GPU
            if search:  # network slimming's L1, on the coefficients only
                loss = loss + search.penalty()
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            last_lr = optimizer.param_groups[0]["lr"]  # the rate this step used
            scheduler.step()
            run["steps"] += 1
            bar.update(1)
            step = run["steps"]
            if step % 10 == 0:
                bar.set_postfix(loss=f"{losses[-1].item():.3f}")
            if step == FIRST_STEPS:  # the first steps at the model's shapes (warm-up), within the seconds
                run["clock"]["first_steps"] = time.time() - t0
            if search:  # the masks for the early-bird rule; the ticket once it is time (sec. 3.2)
                t = time.time()
                run["ticket"] = search.after_step(step, last=step == stop_at)
                run["clock"]["masks_and_draw"] += time.time() - t
            if step >= stop_at or run["ticket"]:
                break
        if epoch == 0:  # where the loss started, for the underfitting hint
            run["start_loss"] = torch.stack(losses[:10]).mean().item()
        epoch += 1
        run["seconds"] += time.time() - t0
        record = {"epoch": epoch, "step": run["steps"], "loss": torch.stack(losses).mean().item(), "lr": last_lr}
        if not search:
            t = time.time()
            run["metrics"], run["predictions"] = evaluate(model, task, cfg, process)
            run["clock"]["evaluation"] += time.time() - t
            record["metrics"] = run["metrics"]
        run["history"].append(record)
        if process.rank == 0:
            bar.write(f"{desc} epoch {epoch}: {json.dumps(record)}")
        t0 = time.time()  # evaluation is not training time
    bar.close()
    return run


# ----------------------------------------------------------------------------- EarlyBERT

def search(model, task: Task, cfg: Config, process, early_bird: EarlyBird, epoch_steps: int):
    """EarlyBERT's searching and ticket-drawing stages (sec. 3.1 and 3.2) on the task: train with
    slimming coefficients and L1 until the early-bird rule (You et al., ICLR 2020) fires or the
    longest search (--search-fraction of an epoch) has passed, then draw the ticket.
    Returns the Search (with the rule's record), the ticket and what the search did (results.json's "search").

    The schedule is the official scripts': the search is a fine-tuning run of its own, SEARCH_EPOCHS
    long, with no warm-up and linear decay, cut at the draw step, so its learning rate stays near
    --search-lr (0.97 of it on average over 0.2 epoch), not a fraction of a warm-up.

    The masks are recorded every --ticket-every steps; by default the longest search / (2 k), at
    least 1, so the rule, which needs k masks, can fire halfway through the longest search.
    Departs from the official code, which draws at the fixed fraction (`slimming_coef_step`):
    here that fraction is the longest the search may run, and --eb-epsilon 0 restores it."""
    longest = min(max(1, round(cfg.search_fraction * epoch_steps)), SEARCH_EPOCHS * epoch_steps)
    longest = min(longest, cfg.max_steps) if cfg.max_steps > 0 else longest
    every = cfg.ticket_every or max(1, longest // (2 * early_bird.k))
    searching = Search(model, early_bird, every, cfg.l1, cfg.l1, cfg.head_ratio, cfg.ffn_ratio,
                       ffn_multiple=process.ffn_multiple)  # adds the coefficients before fit makes the optimizer
    run = fit(model, task, cfg, process, cfg.search_lr, 0, SEARCH_EPOCHS * epoch_steps, longest, searching, "search")
    return searching, run["ticket"], {"steps": run["steps"], "seconds": run["seconds"], "clock": run["clock"],
                                      "longest": longest,
                                      "epoch_steps": epoch_steps, "every": every, "k": early_bird.k,
                                      "epsilon": early_bird.epsilon, "fired": run["ticket"].kind == "earlybird",
                                      "history": run["history"]}


def finetune(cfg: Config) -> dict:
    check_config(cfg)
    kind = ("random" if cfg.ticket == "random" else "earlybert") if cfg.earlybert else "full"
    run_dir = os.path.join(cfg.out_dir, f"{task_name(cfg.task)}-{kind}")
    results_path = os.path.join(run_dir, "results.json")
    if os.path.exists(results_path) and not cfg.force:
        raise ValueError(f"{results_path}: a finished run is there; pass --force to overwrite it, "
                         "or choose another --out-dir")
    early_bird = EarlyBird(cfg.eb_k, cfg.eb_epsilon) if kind == "earlybert" else None  # checks k early
    if not os.path.isdir(cfg.model):
        raise ValueError(f"{cfg.model or '--model'}: no such checkpoint folder; give one with --model")
    rank, world, local_rank = setup_distributed(cfg.device)
    device = pick_device(cfg.device, local_rank)
    # this process: its device, its rank of `world`, how tickets are rounded, and (run_stages) its precision
    process = SimpleNamespace(device=device, rank=rank, world=world, ffn_multiple=ffn_multiple_for(device, cfg.ffn_multiple))
    with run_lock(run_dir) if rank == 0 else nullcontext():
        results = run_stages(cfg, process, kind, run_dir, early_bird)
    finish_distributed(world)
    return results


def run_stages(cfg: Config, process, kind: str, run_dir: str, early_bird) -> dict:
    """Plain fine-tuning, or EarlyBERT's three stages, or the random-ticket control; then the files."""
    tokenizer, vocab, lowercase = checkpoint_tokenizer(cfg.model, pairs=True)  # [CLS] A [SEP] B [SEP]
    task = load_task(cfg.task, cfg.data, tokenizer, cfg.max_len, cfg.doc_stride)
    epoch_steps = math.ceil(len(task.train) // process.world / cfg.batch_size)  # per process
    total = cfg.epochs * epoch_steps
    if total == 0:
        raise ValueError(f"{cfg.data}: too few training examples for one batch of {cfg.batch_size}")
    total = min(total, cfg.max_steps) if cfg.max_steps > 0 else total

    def pretrained(verbose=True):  # the checkpoint; a task head it lacks (or of other shape) starts afresh
        torch.manual_seed(cfg.seed)
        return load_pretrained(task.model_class, cfg.model, verbose=verbose, **task.overrides)

    model = pretrained()
    full_parameters = count_parameters(model)
    # bf16 or fp32: rank 0 decides (on a CPU by a probe at the model's shapes and the longest example)
    longest = max(len(f["input_ids"]) for f in task.train)
    process.precision = broadcast(choose_precision(cfg.precision, process.device, model.config, cfg.batch_size, longest)
                             if process.rank == 0 else None, process.rank, process.world)
    process.autocast, process.dtype = process.precision.autocast(process.device), process.precision.dtype
    if process.rank == 0:
        print(f"{task.name}: {process.precision.describe(cfg.precision)}", file=sys.stderr)
    # search_seconds: the search's steps (with the draw) and the rebuild, not a process's one-time costs
    ticket, searching, searched, search_seconds, clock = None, None, None, 0.0, {"reload": 0.0, "rebuild": 0.0}
    if kind == "random":  # the control: no search, the same numbers pruned at random
        full = full_ticket(model.config)
        ticket = random_ticket(full.full_heads, full.full_ffn, cfg.head_ratio, cfg.ffn_ratio, cfg.seed,
                               process.ffn_multiple)
    elif kind == "earlybert":
        searching, ticket, searched = search(model, task, cfg, process, early_bird, epoch_steps)
        t0 = time.time()
        model = pretrained(verbose=False)  # rewind to the pre-trained weights
        clock["reload"] = time.time() - t0
        search_seconds = searched["seconds"] + clock["reload"]
    if ticket:
        t0 = time.time()
        model = prune.rebuild(model, ticket)  # physically smaller; the coefficients are all 1
        clock["rebuild"] = time.time() - t0
        search_seconds += clock["rebuild"]
    torch.manual_seed(cfg.seed)
    run = fit(model, task, cfg, process, cfg.lr, int(cfg.warmup * total), total, total)
    results = {"task": task.name, "mode": kind, "metrics": run["metrics"],
               "search_steps": searched["steps"] if searched else 0, "search_seconds": search_seconds,
               "steps": run["steps"], "train_seconds": run["seconds"], "total_seconds": search_seconds + run["seconds"],
               "parameters": count_parameters(model),
               # training FLOPs at each example's own length, averaged (the task head and padding not counted)
               "flops_per_example": float(np.mean([flops_per_sequence(model.config, len(f["input_ids"]), 0)
                                                   for f in task.train])),
               "ticket": {**ticket.summary(), "parameters_before": full_parameters} if ticket else None,
               "search": searched, "history": run["history"], "config": asdict(cfg),
               "precision": process.precision.name, "bf16_speedup": process.precision.speedup,
               # where the seconds went: the search's steps and its masks and draw, reloading the pre-trained
               # weights, the rebuild, then training (its first FIRST_STEPS steps apart); evaluation is not counted
               "time": {"search": searched["seconds"] if searched else 0.0, "search masks and draw": searched[
                   "clock"]["masks_and_draw"] if searched else 0.0, **clock, "training": run["seconds"],
                   "first steps": run["clock"]["first_steps"], "evaluation": run["clock"]["evaluation"]}}
    if process.rank == 0:
        save_pretrained(model, os.path.join(run_dir, "model"), vocab, lowercase=lowercase)
        plot = searching.save(run_dir, ticket) if searching else None  # ticket.json and the mask distances
        if ticket and not searching:
            ticket.save(os.path.join(run_dir, "ticket.json"))
        write_json(run["predictions"], os.path.join(run_dir, "predictions.json"))
        write_json(results, os.path.join(run_dir, "results.json"))  # last: a run with results.json is complete
        print(report(results, run_dir, plot), file=sys.stderr)
        hint = underfit_hint(run["start_loss"], run["history"][-1]["loss"], cfg.lr)
        if hint:
            print(hint, file=sys.stderr)
    return results


# ----------------------------------------------------------------------------- what a run says

def underfit_hint(start_loss: float, final_loss: float, lr: float) -> str | None:
    """One line when the last epoch's training loss is still above half the loss the model started
    at: the model may be underfitting, usually a learning rate too small for it."""
    if start_loss <= 0 or final_loss <= 0.5 * start_loss:
        return None
    return (f"hint: the training loss is still {final_loss:.3f}, {final_loss / start_loss:.0%} of the "
            f"{start_loss:.3f} it started at: the model may be underfitting. Try a larger --lr (this run: {lr:g}; "
            "2e-5 suits BERT-base, smaller models often need 5e-5 to 1e-4) or more --epochs")


def report(r: dict, run_dir: str, plot: str | None = None) -> str:
    lines = [f"{r['task']} ({r['mode']}) dev: {json.dumps(r['metrics'])} -> {run_dir}"]
    t, s = r["ticket"], r["search"]
    if s:
        when = (f"fired at step {s['steps']} of at most {s['longest']}" if s["fired"] else
                f"did not fire by step {s['steps']}, the longest search: ticket drawn there, as the official code does")
        lines.append(f"search: {s['steps']} steps, {r['search_seconds']:.1f} s; the early-bird rule {when} "
                     f"(--search-fraction {r['config']['search_fraction']:g} of {s['epoch_steps']} steps per epoch; "
                     f"a mask every {s['every']} step(s), k {s['k']}, epsilon {s['epsilon']:g})")
        if s["k"] * s["every"] > s["longest"]:
            lines.append(f"the search was too short for the rule: its {s['k']} masks take {s['k'] * s['every']} "
                         "steps; raise --search-fraction or lower --ticket-every")
    if t:
        lines.append(f"ticket ({t['rule']}) keeps {t['kept_heads']}/{t['total_heads']} heads, {t['kept_ffn']}/"
                     f"{t['total_ffn']} FFN neurons: {r['parameters'] / 1e6:.3g}M of "
                     f"{t['parameters_before'] / 1e6:.3g}M parameters")
    if s:
        lines.append(f"mask distances -> {run_dir}/mask_distances.json"
                     + (f" and {plot}" if plot else " (pip install matplotlib for a plot)"))
    lines.append(f"training: {r['steps']} steps, {r['train_seconds']:.1f} s; total {r['total_seconds']:.1f} s")
    return "\n".join(lines)


NUMBERS = ("search_seconds", "train_seconds", "total_seconds", "search_steps", "steps", "parameters",
           "flops_per_example")


def compare(paths: list[str]) -> str:
    """Finished runs side by side, a markdown table: their dev scores, seconds (search, training,
    total, and total against the plain run's), steps, parameters and training FLOPs per example.
    `paths`: run folders (OUT_DIR/TASK-VARIANT) or their results.json files."""
    if not paths:
        raise ValueError("--compare: give the run folders, e.g. --compare out/finetune/sst-2-*")
    runs = []
    for p in paths:
        if not os.path.exists(p):
            raise ValueError(f"{p}: no such run folder or results file")
        path = os.path.join(p, "results.json") if os.path.isdir(p) else p
        r = read_json(path, "finetune.py results file")
        bad = [k for k in NUMBERS if not isinstance(r.get(k), (int, float))]
        if bad or not isinstance(r.get("metrics"), dict) or not all(isinstance(m, dict) for m in r["metrics"].values()):
            raise ValueError(f"{path}: not a finetune.py results file (missing or bad: {', '.join(bad) or 'metrics'})")
        runs.append((os.path.basename(os.path.dirname(os.path.abspath(path))), r))
    plain = {r["task"]: r["total_seconds"] for _, r in runs if r.get("mode") == "full"}  # per task
    lines = ["| run | dev | search s | training s | total s | vs plain | steps (search + training) | parameters "
             "| GFLOPs/example |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in runs:
        dev = "; ".join(f"{split} " + ", ".join(f"{k} {v:.4g}" for k, v in m.items())
                        for split, m in r["metrics"].items())
        ratio = f"{r['total_seconds'] / plain[r['task']]:.2f}" if plain.get(r.get("task")) else "-"
        lines.append(f"| {name} | {dev} | {r['search_seconds']:.1f} | {r['train_seconds']:.1f} | "
                     f"{r['total_seconds']:.1f} | {ratio} | {r['search_steps']} + {r['steps']} | "
                     f"{r['parameters'] / 1e6:.3g}M | {r['flops_per_example'] / 1e9:.3g} |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--compare"]:
        print(compare(argv[1:]))
    else:
        finetune(parse_args(argv))


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:  # bad input: one clear line, no traceback
        sys.exit(f"error: {e}")
