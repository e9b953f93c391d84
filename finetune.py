"""Fine-tune BERT on GLUE or SQuAD v1.1, plainly or the EarlyBERT way (Chen et al., ACL 2021).

    python finetune.py --task sst-2 --data glue/SST-2 --model bert-base-cased/ [--earlybert]
    python finetune.py --task squad --data squad/ --model bert-base-uncased/ --batch-size 12 --lr 3e-5

The tasks' data, windows and metrics are in tasks.py; this file is the loop and the stages.
Plain: AdamW, linear warm-up over 10% of the steps then linear decay, dev scores every epoch.
--earlybert runs the paper's three stages on the task (sec. 3; ../shared/SPEC.md):
  1. search: slimming coefficients + L1 (--search-lr); every --ticket-every steps the masks
     they give go to the early-bird rule; stop when it fires or at --search-fraction epochs;
  2. draw the ticket: heads pruned layer-wise, FFN neurons globally, by |coefficient|;
  3. efficient training: the pre-trained checkpoint loaded again with a fresh task head (the
     official code restarts from the search's checkpoint-0), rebuilt smaller, trained without
     L1 for --epochs. `--earlybert --ticket random` is the control: random units, no search.
Writes OUT_DIR/TASK-{full,earlybert,random}/: model/, results.json (metrics, history, seconds
per stage, the ticket), ticket.json, predictions.json (SQuAD's as evaluate-v1.1.py reads them).
"""
import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import slim
import ticket as tickets
from data import checkpoint_tokenizer
from model import BertClassifier, BertQA, count_parameters, load_pretrained, save_pretrained
from tasks import (GLUE, TASKS, GlueTask, glue_features, glue_scores, read_glue, read_squad, squad_answers,
                   squad_features, squad_scores, text_task)
from train import lr_lambda, make_optimizer, pick_device, setup_distributed, to_device


@dataclass
class Config:
    task: str = "sst-2"  # cola, sst-2, mrpc, qqp, sts-b, mnli, qnli, rte, wnli or squad
    data: str = ""  # the task's folder: GLUE's train.tsv + dev.tsv, or train-v1.1.json + dev-v1.1.json
    model: str = ""  # a checkpoint folder (config.json, vocab.txt, weights): model.py loads it
    out_dir: str = "out/finetune"
    epochs: int = 3
    lr: float = 2e-5
    batch_size: int = 32  # per process
    max_len: int = 0  # tokens per sequence; 0: 128 for GLUE, 384 for SQuAD
    doc_stride: int = 128  # SQuAD: tokens between the starts of a long context's windows
    max_steps: int = 0  # > 0: at most this many steps per training stage (quick looks, tests)
    warmup: float = 0.1  # fraction of the steps
    weight_decay: float = 0.01
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda
    # EarlyBERT (../shared/SPEC.md; the official fine-tuning defaults)
    earlybert: bool = False
    ticket: str = "earlybird"  # earlybird: searched | random: the control
    search_lr: float = 2e-5
    l1: float = 1e-4  # lambda of the L1 penalty, heads and FFN neurons alike
    head_ratio: float = 1 / 3  # pruned per layer
    ffn_ratio: float = 0.4  # pruned over all layers
    ticket_every: int = 10  # steps between the masks the early-bird rule compares
    search_fraction: float = 0.2  # the longest search, in epochs


def parse_args(argv=None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    choices = {"ticket": ("earlybird", "random"), "device": ("auto", "cpu", "cuda")}
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            p.add_argument(flag, type=type(f.default), default=f.default, choices=choices.get(f.name))
    cfg = Config(**vars(p.parse_args(argv)))
    if cfg.ticket == "random" and not cfg.earlybert:
        p.error("--ticket random is the control of --earlybert: give both")
    return cfg


# ----------------------------------------------------------------------------- the task

@dataclass
class Task:
    name: str
    model_class: type  # BertClassifier or BertQA
    overrides: dict  # config fields for load_pretrained (num_labels)
    train: list[dict]  # features: model inputs and targets
    evaluate: Callable  # (model, cfg, rt) -> (metrics, predictions)


def load_task(cfg: Config, tokenizer) -> Task:
    """The task's training features and dev evaluation (tasks.py reads and scores them);
    bad input raises a one-line ValueError."""
    names = {t.replace("-", ""): t for t in TASKS}
    name = names.get(cfg.task.lower().replace("-", ""))
    if name is None:
        raise ValueError(f"unknown task {cfg.task!r}; the tasks are {', '.join(TASKS)}")
    if not os.path.isdir(cfg.data):
        raise ValueError(f"{cfg.data or '--data'}: no such folder; give the task's data folder with --data")
    if name == "squad":
        max_len = cfg.max_len or 384
        if max_len < 8 or cfg.doc_stride < 1:
            raise ValueError(f"--max-len {max_len} --doc-stride {cfg.doc_stride}: SQuAD windows need a length "
                             "of at least 8 and a stride of at least 1")
        paths = [os.path.join(cfg.data, f) for f in ("train-v1.1.json", "dev-v1.1.json")]
        train_examples, dev_examples = (read_squad(p) for p in paths)  # both read first: errors come early
        train, _ = squad_features(train_examples, tokenizer, max_len, cfg.doc_stride, paths[0])
        dev, windows = squad_features([{**e, "answers": []} for e in dev_examples], tokenizer, max_len, cfg.doc_stride)
        return Task(name, BertQA, {}, train,
                    lambda model, cfg, rt: squad_evaluate(model, dev_examples, dev, windows, cfg, rt))
    task = text_task(os.path.join(cfg.data, "train.tsv")) if name == "text" else GLUE[name]
    max_len = cfg.max_len or 128
    splits = {os.path.splitext(f)[0]: read_glue(os.path.join(cfg.data, f), task) for f in ("train.tsv",) + task.dev}
    train = glue_features(tokenizer, *splits.pop("train"), max_len)
    dev = {split: (glue_features(tokenizer, texts, labels, max_len), labels)
           for split, (texts, labels) in splits.items()}
    return Task(name, BertClassifier, {"num_labels": len(task.labels or [0])}, train,
                lambda model, cfg, rt: glue_evaluate(model, task, dev, cfg, rt))


def glue_evaluate(model, task: GlueTask, dev: dict, cfg, rt):
    metrics, predictions = {}, {}
    for split, (features, gold) in dev.items():
        logits = np.stack([o[0] for o in predict(model, features, cfg, rt, split)])  # (N, num_labels)
        metrics[split], predictions[split] = glue_scores(task, logits, gold)
    return metrics, predictions


def squad_evaluate(model, examples, features, windows, cfg, rt):
    """Best span over all windows of each question, then the official EM and F1."""
    predictions = squad_answers(examples, windows, predict(model, features, cfg, rt, "dev"))
    return {"dev-v1.1": squad_scores(predictions, examples)}, predictions


# ----------------------------------------------------------------------------- the loop

def collate(features: list[dict], targets: bool = True) -> dict:
    """Pad to the batch's longest sequence; attention_mask is None when nothing is padded."""
    lengths = torch.tensor([len(f["input_ids"]) for f in features])
    batch = {}
    for key in ("input_ids", "token_type_ids"):
        x = np.zeros((len(features), int(lengths.max())), np.int64)
        for row, f in zip(x, features):
            row[:len(f[key])] = f[key]
        batch[key] = torch.from_numpy(x)
    mask = torch.arange(batch["input_ids"].shape[1])[None, :] < lengths[:, None]  # (B, T)
    batch["attention_mask"] = None if mask.all() else mask
    for key in (features[0].keys() - {"input_ids", "token_type_ids"} if targets else ()):
        batch[key] = torch.tensor([f[key] for f in features])  # labels: int64, or float32 scores
    return batch


def batches(features: list[dict], batch_size: int, seed: int, rank: int = 0, world: int = 1):
    """One epoch of shuffled batches; each process takes its share, all the same number."""
    order = np.random.default_rng(seed).permutation(len(features))
    order = order[:len(order) // world * world][rank::world]
    for i in range(0, len(order), batch_size):
        yield collate([features[j] for j in order[i:i + batch_size]])


@torch.no_grad()
def predict(model, features, cfg, rt, desc: str) -> list[tuple]:
    """The model's outputs for each feature, in order: (logits,) or (start, end), float32 numpy."""
    model.eval()
    outputs, size = [], 2 * cfg.batch_size
    for i in tqdm(range(0, len(features), size), desc=desc, leave=False, disable=rt.rank != 0, dynamic_ncols=True):
        batch = to_device(collate(features[i:i + size], targets=False), rt.device)
        with rt.autocast:
            logits, _ = model(**batch)
        logits = logits if isinstance(logits, tuple) else (logits,)
        outputs += zip(*(x.float().cpu().numpy() for x in logits))
    model.train()
    return outputs


def fit(model, task: Task, cfg: Config, rt, lr: float, total_steps: int, stop_at: int,
        early_bird=None, desc: str = "train") -> dict:
    """The one training loop, for plain fine-tuning, the search and efficient training: AdamW
    (train.make_optimizer, with BERT's betas 0.9 and 0.999), linear warm-up and decay over
    total_steps, gradients clipped at 1.0 (BERT's), stopping after stop_at steps; dev
    evaluation after every epoch and at the end.

    With an early_bird the loop is EarlyBERT's search: the loss gets the L1 penalty on the
    slimming coefficients, every cfg.ticket_every steps the masks they give go to the
    early-bird rule, training stops when it fires, and there is no dev evaluation.
    """
    model.to(rt.device).train()
    net = DistributedDataParallel(model) if rt.world > 1 else model
    optimizer = make_optimizer(model, replace(cfg, lr=lr), rt.device, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(replace(cfg, max_steps=total_steps)))
    scaler = torch.amp.GradScaler("cuda", enabled=rt.dtype == torch.float16)
    run = {"steps": 0, "seconds": 0.0, "fired": False, "history": [], "metrics": None, "predictions": None}
    bar = tqdm(total=stop_at, desc=desc, disable=rt.rank != 0, dynamic_ncols=True)
    epoch, t0 = 0, time.time()
    while run["steps"] < stop_at and not run["fired"]:
        losses = []
        for batch in batches(task.train, cfg.batch_size, cfg.seed + epoch, rt.rank, rt.world):
            with rt.autocast:
                _, loss = net(**to_device(batch, rt.device))
            losses.append(loss.detach())  # no .item() per step: it would make the host wait for the GPU
            if early_bird:  # network slimming's L1, on the coefficients only
                loss = loss + slim.l1_penalty(model, cfg.l1, cfg.l1)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            run["steps"] += 1
            bar.update(1)
            if run["steps"] % 10 == 0:
                bar.set_postfix(loss=f"{losses[-1].item():.3f}")
            if early_bird and run["steps"] % cfg.ticket_every == 0:
                masks = tickets.current_masks(*slim.coefficients(model), cfg.head_ratio, cfg.ffn_ratio)
                run["fired"] = early_bird.update(*masks, run["steps"])
            if run["steps"] >= stop_at or run["fired"]:
                break
        epoch += 1
        run["seconds"] += time.time() - t0
        record = {"epoch": epoch, "step": run["steps"], "loss": torch.stack(losses).mean().item()}
        if not early_bird:
            run["metrics"], run["predictions"] = task.evaluate(model, cfg, rt)
            record["metrics"] = run["metrics"]
        run["history"].append(record)
        if rt.rank == 0:
            bar.write(f"{desc} epoch {epoch}: {json.dumps(record)}")
        t0 = time.time()  # evaluation is not training time
    bar.close()
    return run


# ----------------------------------------------------------------------------- EarlyBERT

def search(model, task: Task, cfg: Config, rt, total_steps: int, epoch_steps: int):
    """EarlyBERT's stages 1 and 2 on the task: train with slimming coefficients and L1 until
    the early-bird rule fires or --search-fraction of an epoch has passed, then draw the ticket.
    The search follows the learning-rate schedule of a whole run (it is a fine-tuning run cut
    short, as in the official code), so it is not stopped by a decay to zero.

    Departs from the official code, which draws at the fixed fraction (`slimming_coef_step`);
    here that fraction is the longest the search may run."""
    slim.add_coefficients(model)  # before fit() makes the optimizer, so they train
    early_bird = tickets.EarlyBird()
    limit = min(total_steps, max(1, round(cfg.search_fraction * epoch_steps)))
    run = fit(model, task, cfg, rt, cfg.search_lr, total_steps, limit, early_bird, desc="search")
    return tickets.draw_ticket(*slim.coefficients(model), cfg.head_ratio, cfg.ffn_ratio,
                               kind="earlybird" if run["fired"] else "fixed-step", step=run["steps"],
                               history=early_bird.history)  # the mask distances, for the Early-Bird figure


def finetune(cfg: Config) -> dict:
    rank, world, local_rank = setup_distributed()
    device, autocast, dtype = pick_device(cfg, local_rank)
    rt = SimpleNamespace(device=device, autocast=autocast, dtype=dtype, rank=rank, world=world)
    if not os.path.isdir(cfg.model):
        raise ValueError(f"{cfg.model or '--model'}: no such checkpoint folder; give one with --model")
    tokenizer, vocab, lowercase = checkpoint_tokenizer(cfg.model, pairs=True)  # [CLS] A [SEP] B [SEP]
    task = load_task(cfg, tokenizer)
    kind = ("random" if cfg.ticket == "random" else "earlybert") if cfg.earlybert else "full"
    run_dir = os.path.join(cfg.out_dir, f"{task.name}-{kind}")
    epoch_steps = math.ceil(len(task.train) // world / cfg.batch_size)  # per process
    total = cfg.epochs * epoch_steps
    if total == 0:
        raise ValueError(f"{cfg.data}: too few training examples for one batch of {cfg.batch_size}")
    total = min(total, cfg.max_steps) if cfg.max_steps > 0 else total

    def pretrained(verbose=True):  # the checkpoint; a task head it lacks (or of other shape) starts afresh
        torch.manual_seed(cfg.seed)
        return load_pretrained(task.model_class, cfg.model, verbose=verbose, **task.overrides)

    model = pretrained()
    results = {"task": task.name, "mode": kind, "parameters": count_parameters(model), "search_seconds": 0.0}
    ticket = None
    if cfg.earlybert:
        t0 = time.time()
        if cfg.ticket == "random":  # the control: no search, the same numbers pruned at random
            c = model.config
            ticket = tickets.random_ticket([c.heads(l) for l in range(c.num_hidden_layers)],
                                           [c.ffn(l) for l in range(c.num_hidden_layers)],
                                           cfg.head_ratio, cfg.ffn_ratio, cfg.seed)
        else:
            ticket = search(model, task, cfg, rt, total, epoch_steps)
            model = pretrained(verbose=False)  # rewind to the pre-trained weights
        model = tickets.rebuild(model, ticket)  # physically smaller; the coefficients are all 1
        results["search_seconds"] = time.time() - t0
        results["ticket"] = {"kind": ticket.kind, "drawn_at_step": ticket.step,
                             "kept_heads": sum(map(len, ticket.heads)), "total_heads": sum(ticket.full_heads),
                             "kept_ffn": sum(map(len, ticket.ffn)), "total_ffn": sum(ticket.full_ffn),
                             "parameters": count_parameters(model)}
    torch.manual_seed(cfg.seed)
    run = fit(model, task, cfg, rt, cfg.lr, total, total)
    results.update(metrics=run["metrics"], train_seconds=run["seconds"], steps=run["steps"],
                   total_seconds=results["search_seconds"] + run["seconds"], history=run["history"],
                   config=asdict(cfg))
    if rank == 0:
        save_pretrained(model, os.path.join(run_dir, "model"), vocab, lowercase=lowercase)
        if ticket:
            ticket.save(os.path.join(run_dir, "ticket.json"))
        for name, obj in (("predictions.json", run["predictions"]), ("results.json", results)):
            with open(os.path.join(run_dir, name), "w") as f:
                json.dump(obj, f, indent=2)
        print(report(results, run_dir), file=sys.stderr)
    if world > 1:
        torch.distributed.destroy_process_group()
    return results


def report(r: dict, run_dir: str) -> str:
    lines = [f"{r['task']} ({r['mode']}) dev: {json.dumps(r['metrics'])} -> {run_dir}",
             f"training: {r['steps']} steps, {r['train_seconds']:.1f} s; total {r['total_seconds']:.1f} s"]
    if "ticket" in r:
        t = r["ticket"]
        lines.insert(1, f"search: {r['search_seconds']:.1f} s; ticket ({t['kind']}, step {t['drawn_at_step']}) "
                        f"keeps {t['kept_heads']}/{t['total_heads']} heads, {t['kept_ffn']}/{t['total_ffn']} FFN "
                        f"neurons, {t['parameters'] / 1e6:.1f}M of {r['parameters'] / 1e6:.1f}M parameters")
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        finetune(parse_args())
    except ValueError as e:  # bad input: one clear line, no traceback
        sys.exit(f"error: {e}")
