"""What reproduce.py's finished runs say: their numbers, read from the runs' files, and the
tables of OUT/results.md (mean ± std over seeds, and the differences paired per seed).

    pretrain_results   (a) and (b): each seed's search, full, EarlyBERT and random-ticket runs, and the
                       full run read off at EarlyBERT's time (equal_time_point)
    finetune_numbers   a finetune.py run's dev accuracy, seconds and search
    markdown           the tables of (a), (b), (c) and the controls (controls_markdown)
"""
import json
import os
import sys

import numpy as np

import controls
import figures
from checkpoint import atomic, load_checkpoint, read_json, write_json
from data import n_predictions
from model import BertConfig, flops_per_sequence
from stats import each, mean_std, paired, pm, signed, verdict, washed_out


def beside(job: dict, name: str) -> str:
    """A file in a run's own folder, beside its result file (job: reproduce.py's {script, args, result})."""
    return os.path.join(os.path.dirname(job["result"]), name)


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


def run_summary(job: dict, search: dict) -> dict:
    """A run's summary.json, refused if its corpus was tokenized with another vocabulary than its seed's
    search: its held-out loss is over other tokens (a vocabulary trained again differs in a few)."""
    summary = read_json(job["result"])
    metas = [os.path.join(s["data_dir"], "meta.json") for s in (summary, search)]
    if all(map(os.path.exists, metas)) and len({read_json(m)["tokenizer_sha256"] for m in metas}) == 2:
        raise ValueError(f"{os.path.dirname(job['result'])}: trained on another vocabulary than its search "
                         f"({os.path.dirname(metas[0])}, not {os.path.dirname(metas[1])}): its losses do not "
                         "compare; move the run aside and run reproduce.py again, which gives it the search's")
    return summary


def read_log(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def draw_curves(jobs: dict, seeds: list[int], path: str):
    """figures.plot_curves of the pre-training runs: the full run, and EarlyBERT and the random
    ticket (the search's curve, then theirs, shifted by the search's seconds)."""
    curves = {}
    for seed in seeds:
        logs = {run: read_log(beside(jobs[seed, run], "log.jsonl"))
                for run in ("search", "earlybert", "random", "full")}
        search = timed_evaluations(logs["search"])
        drawn = search[-1]  # the efficient runs go on from the draw, after the search's seconds
        curves[seed] = {run: search + [{**e, "train_seconds": e["train_seconds"] + drawn["train_seconds"]}
                                       for e in timed_evaluations(logs[run], drawn["steps"])]
                        for run in ("earlybert", "random")}
        curves[seed]["full"] = timed_evaluations(logs["full"])
    if figures.plot_curves(curves, path) is None:
        print(f"no {path}: pip install matplotlib to draw the curves", file=sys.stderr)


ROWS = {"full": "full", "earlybert": "EarlyBERT (search + efficient)", "random": "random ticket (search + efficient)",
        "random-per-layer": "random ticket of the drawn per-layer sizes (search + efficient)",
        "full_equal_time": "full at EarlyBERT's time (read off its curve)"}


def pretrain_table(per_seed: dict) -> list[str]:
    """(b)'s markdown table from {seed: {run: {steps, train_seconds, val_loss, val_acc}}}."""
    seeds = list(per_seed)
    full_time = mean_std([per_seed[s]["full"]["train_seconds"] for s in seeds])[0]
    lines = [f"| run ({len(seeds)} seeds) | steps | training seconds | vs full | its bound: measured steps; FLOPs | "
             "held-out MLM loss | held-out MLM accuracy |", "|---|---:|---:|---:|---:|---:|---:|"]
    for run, name in ((k, v) for k, v in ROWS.items() if k in per_seed[seeds[0]]):
        col = lambda key: [per_seed[s][run][key] for s in seeds]
        bound = (f"{mean_std(col('bound_steps'))[0]:.2f}; {mean_std(col('bound_flops'))[0]:.2f}"
                 if "bound_steps" in per_seed[seeds[0]][run] else "-")
        lines.append(f"| {name} | {pm(col('steps'), 0)} | {pm(col('train_seconds'), 0)} | "
                     f"{mean_std(col('train_seconds'))[0] / full_time:.2f} | {bound} | {pm(col('val_loss'), 3)} | "
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
        for run in (r for r in ("earlybert", "random", "random-per-layer", "full") if (seed, r) in jobs):
            s = run_summary(jobs[seed, run], search)
            own = s["train_seconds"] + (search["train_seconds"] if run != "full" else 0)
            r[run] = {"steps": s["steps"], "train_seconds": own, "val_loss": s["val_loss"], "val_acc": s["val_acc"],
                      "parameters": s["parameters"],
                      **(bounds(jobs, seed, run, search["drawn_at"] / s["steps"]) if run != "full" else {})}
        records = read_log(beside(jobs[seed, "full"], "log.jsonl"))
        r["full_equal_time"] = equal_time_point(records, r["earlybert"]["train_seconds"])  # step 0: 0 s, always
        out[str(seed)] = r  # str: as JSON keeps it
    return out


def finetune_numbers(r: dict) -> dict:
    search = r.get("search") or {}  # an EarlyBERT run's: how long it searched, of the longest search
    return {"accuracy": r["metrics"]["dev"]["accuracy"], "seconds": r["total_seconds"],
            "search_seconds": r["search_seconds"], "parameters": r["parameters"],
            "search_steps": r.get("search_steps", 0), "longest_search": search.get("longest"),
            "drawn_by": (r.get("ticket") or {}).get("rule"), "time": r.get("time")}  # its parts, from today's code on


# ----------------------------------------------------------------------------- results.md

def markdown(results: dict) -> str:
    lines = []
    if "pretrain" in results:
        p, recipe = results["pretrain"], results["recipe"]
        lines += ["### (a) Early-bird tickets in pre-training", "",
                  "| seed | ticket drawn at step | drawn by | heads kept | FFN neurons kept | last mask distances "
                  "(heads, FFN) | coefficients' \\|c\\| then, 10%-90% (heads; FFN) |",
                  "|---:|---:|---|---:|---:|---:|---:|"]
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
        lines += ["", f"### {'(c)' if 'long' in results else '(b)'} Fine-tuned on which library a sentence is from "
                  f"({', '.join(d['classes'])}: "
                  f"{d['train']} training and {d['dev']} dev sentences each), each seed's models", "",
                  f"| pre-trained model | parameters | dev accuracy ({len(d['seeds'])} seeds) | per seed "
                  f"({', '.join(map(str, d['seeds']))}) | fine-tuning seconds |", "|---|---:|---:|---:|---:|"]
        names = {"none": "none (the untrained start)", "earlybert": "EarlyBERT", "random": "random ticket",
                 "random-per-layer": "random ticket of the drawn per-layer sizes"}
        for k, rs in d["runs"].items():
            accs = [r["accuracy"] for r in rs]
            lines.append(f"| {names.get(k, k)} | {rs[0]['parameters'] / 1e6:.2f}M | {pm(accs, 3)} | "
                         f"{each(accs)} | {pm([r['seconds'] for r in rs], 0)} |")
        if "long" in results:  # (c) downstream, paired per seed under the declared rule
            lines += ["", "| fine-tuned, paired per seed | dev accuracy | verdict |", "|---|---|---|"]
            for b in (k for k in ("random", "random-per-layer", "full") if k in d["runs"]):  # "full" not yet run
                diffs = [x["accuracy"] - y["accuracy"] for x, y in zip(d["runs"]["earlybert"], d["runs"][b])]
                lines.append(f"| EarlyBERT − {names.get(b, b)} | {signed(diffs)} | {verdict(diffs)} |")
    if "pretrain" in results and "downstream" in results:
        lines += ["", reading(results["pretrain"], results["downstream"]["runs"])]
    if "controls" in results:
        lines += ["", *controls_markdown(results["controls"])]
    if "long" in results:
        lines += ["", *long_markdown(results["long"], results["recipe"]["max_steps"])]
    if "at_draw" in results:  # comparison 1 at the long schedule's draw
        lines += ["", *controls_markdown({"at_draw": {"the rule": results["at_draw"]}}, only_at_draw=True)]
    for name, w in ((k, v) for k, v in results.items() if k == "wordnet" or k.startswith("wordnet-")):
        size = name.split("-")[1] if "-" in name else "150"
        lines += ["", f"### (c) Fine-tuning all-MiniLM-L6-v2 on WordNet noun classes (8 classes, {size} training "
                  "glosses each)", ""]
        if "skipped" in w:
            lines.append(f"Skipped: {w['skipped']}")
        else:
            lines += ["| variant | dev accuracy (mean ± std) | per seed | seconds (mean ± std) | search + reload + "
                      "rebuild + training (first 5 steps) s, mean | search steps (of the longest) and what drew the "
                      "ticket, per seed |", "|---|---:|---:|---:|---:|---|"]
            lines += [f"| {v} | {pm([r['accuracy'] for r in rs], 3)} | {each(r['accuracy'] for r in rs)} | "
                      f"{pm([r['seconds'] for r in rs], 0)} | {parts(rs)} | {searched(rs)} |" for v, rs in w.items()]
    return "\n".join(lines) + "\n"


def parts(runs: list[dict]) -> str:
    """Where a fine-tuning variant's seconds went, as means over seeds (runs from before the parts were recorded: -)."""
    if not all(r.get("time") for r in runs):
        return "-"
    t = lambda key: np.mean([r["time"][key] for r in runs])
    return (f"{t('search'):.1f} + {t('reload'):.1f} + {t('rebuild'):.1f} + {t('training'):.1f} "
            f"({t('first steps'):.1f})")


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
            f"{mlm('random')}. Fine-tuned on the library task, dev accuracy: untrained {acc('none')}, "
            f"full {acc('full')}, EarlyBERT {acc('earlybert')}, random ticket {acc('random')}. Paired per seed "
            f"({', '.join(per_seed)}; a seed sets the initialisation, data order, masking and held-out sample), "
            f"accuracy: EarlyBERT minus full {paired('earlybert', 'full')}, minus the full model at its time "
            f"{paired('earlybert', 'full_equal_time')}; random minus EarlyBERT {paired('random', 'earlybert')}; "
            f"fine-tuned, EarlyBERT minus full {paired('earlybert', 'full', tuned)}, random minus EarlyBERT "
            f"{paired('random', 'earlybert', tuned)}. A difference whose sign changes from seed to seed is not shown "
            "to be one.")


def ticket_score(scored: dict, name: str, metric: int) -> float:
    """A seed's held-out loss (metric 0) or accuracy (1) for a kind of ticket: "drawn", or the mean
    over the random draws of a kind ("random 0", "random 1", ... for "random")."""
    return float(np.mean([v[metric] for k, v in scored["scores"].items() if k == name or k.startswith(name + " ")]))


def controls_markdown(r: dict, only_at_draw: bool = False) -> list[str]:
    """controls.results()' tables: mean ± std over seeds, and the paired per-seed differences that matter."""
    lines = ["### Does the ticket matter? At the draw, no training after", "",
             "Held-out MLM loss and accuracy of the search's model rebuilt with each ticket (random: the mean of 5 "
             "tickets per seed), mean ± std over seeds.", "",
             "| drawn at | step | | searched, unpruned | drawn | random, drawn's per-layer sizes | random "
             "| anti-ticket | drawn − random per-layer, per seed |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for draw, per_seed in r["at_draw"].items():
        seeds = list(per_seed.values())
        for i, metric in enumerate(("loss", "accuracy")):
            score = lambda name: [ticket_score(s, name, i) for s in seeds]
            first = f"| {draw} | {pm([s['step'] for s in seeds], 0)} |" if i == 0 else "| | |"
            lines.append(f"{first} {metric} | " + " | ".join(pm(score(name), 3) for name in (
                "searched", "drawn", "random-per-layer", "random", "anti"))
                + f" | {paired(score('drawn'), score('random-per-layer'))} |")
    lines += ["", "The coefficients' spread at the draw (over the seeds' means): how far the L1 search has told the "
              "units apart.", "", "| drawn at | head \\|c\\| 10%-90% | FFN \\|c\\| 10%-90% | FFN \\|c\\| within 0.05 "
              "of the median | FFN (90% - 10%) / median |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {draw} | {spread_cells(list(per_seed.values()))} |" for draw, per_seed in r["at_draw"].items()]
    if only_at_draw:
        return lines
    lines += ["", "### The coefficients' optimizer", "",
              "Searches drawn by the rule (else at their last step), scored at the draw as above; \"adamw\" is the "
              "rule's search of the first table. Loss: held-out MLM loss, mean ± std over seeds.", "",
              "| coefficients | seeds | rule fired at | head \\|c\\| 10%-90% | FFN \\|c\\| 10%-90% | FFN within 0.05 "
              "of the median | FFN (90% - 10%) / median | drawn | random, drawn's per-layer sizes | anti-ticket | drawn − random per-layer, "
              "per seed |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for variant, per_seed in {"adamw": r["at_draw"].get("rule", {}), **r.get("coef_search", {})}.items():
        seeds = list(per_seed.values())
        loss = lambda name: [ticket_score(s, name, 0) for s in seeds]
        steps = " / ".join(f"{s['step']}" + ("" if s["kind"] == "earlybird" else f" ({s['kind']})") for s in seeds)
        lines += [f"| {variant} | {len(seeds)} | {steps} | {spread_cells(seeds)} | "
                  + " | ".join(pm(loss(name), 3) for name in ("drawn", "random-per-layer", "anti"))
                  + f" | {paired(loss('drawn'), loss('random-per-layer'))} |"] if seeds else []
    lines += ["", "### How alike are the tickets?", "",
              "| tickets | pairs | FFN mask distance | chance (random, same sizes) | head mask distance | chance |",
              "|---|---:|---:|---:|---:|---:|"]
    rows = [(f"the seeds' searches, drawn at {draw}", a) for draw, a in r["alike"].items()]
    rows += [(f"seed {s}: same initial weights, another data order (steps {' and '.join(map(str, a['steps']))})", a)
             for s, a in r["reordered"].items()]
    lines += [f"| {name} | {a['pairs']} | {a['distance']['ffn']:.3f} | {a['chance']['ffn']:.3f} | "
              f"{a['distance']['heads']:.3f} | {a['chance']['heads']:.3f} |" for name, a in rows]
    lines += ["", "### Trained on from the draw (efficient phase to the end of the schedule)", "",
              "| drawn at | seeds | | drawn | random, drawn's per-layer sizes | random | drawn − random per-layer, "
              "per seed | random per-layer − random, per seed |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for draw, per_seed in r["trained"].items():
        done = [s for s in per_seed.values() if len(s) == len(controls.TICKETS)]
        for i, (metric, key) in enumerate((("loss", "val_loss"), ("accuracy", "val_acc")) if done else ()):
            value = lambda t: [s[t][key] for s in done]
            first = f"| {draw} | {len(done)} |" if i == 0 else "| | |"
            means = " | ".join(pm(value(t), 3) for t in ("earlybird", "random-per-layer", "random"))
            lines.append(f"{first} {metric} | {means} | {paired(value('earlybird'), value('random-per-layer'))} | "
                         f"{paired(value('random-per-layer'), value('random'))} |")
    return lines


def spread_cells(seeds: list[dict]) -> str:
    """The coefficients' spread at a draw, averaged over seeds: head and FFN |c| 10%-90%, the share of FFN |c|
    within 0.05 of the median, and the FFN 10%-90% range relative to the median (the absolute width says
    little when the L1 pull has moved every coefficient far from 1)."""
    mean = lambda unit, key: np.mean([s[unit + "_spread"][key] for s in seeds])
    return (f"{mean('head', 'q10'):.3f}-{mean('head', 'q90'):.3f} | {mean('ffn', 'q10'):.3f}-{mean('ffn', 'q90'):.3f} "
            f"| {mean('ffn', 'near_median'):.2f} | {np.mean([relative(s['ffn_spread']) for s in seeds]):.4f}")


def relative(spread: dict) -> float:
    return (spread["q90"] - spread["q10"]) / spread["median"]


def write_results(results: dict, out: str) -> str:
    """OUT/results.json and OUT/results.md (its tables); returns the tables."""
    write_json(results, os.path.join(out, "results.json"))
    table = markdown(results)
    with atomic(os.path.join(out, "results.md")) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(table)
    return table


# ----------------------------------------------------------------------------- --part long

def accounted(search: dict, efficient: dict) -> dict:
    """EarlyBERT's training time: the search's steps, its masks and draw, the efficient phase's reloading and
    rebuilding, its steps (the corpus, probe, evaluations and checkpoints are left out, as of the full run's)."""
    s, e = search["time"], efficient["time"]
    parts = {"search steps": s["steps"], "masks and draw": s["masks_and_draw"], "reload and rebuild": e["model"],
             "efficient steps": e["steps"]}
    return {**parts, "total": sum(parts.values()), "first steps": e["first_steps"]}


def long_results(jobs: dict, seeds: list[int], max_steps: int) -> dict:
    """{seed: ...} for --part long from whatever has finished: the search; each run's numbers and
    held-out curve; and, once EarlyBERT and the full run are done, EarlyBERT's accounted time against
    its bounds (the measured step ratio, the FLOP ratio) and the full run read off at that time, where
    EarlyBERT's efficient run and the full run ran on as many threads (else their seconds do not compare)."""
    out = {}
    for seed in (s for s in seeds if os.path.exists(jobs[s, "search"]["result"])):
        search = read_json(jobs[seed, "search"]["result"])
        r = {"search": {k: search[k] for k in ("drawn_at", "rule", "kept_heads", "total_heads", "kept_ffn",
                                               "total_ffn", "train_seconds", "time")}, "runs": {}}
        r["search"]["fraction"] = search["drawn_at"] / max_steps
        for run in ("full", "earlybert", "random", "random-per-layer"):
            if (seed, run) in jobs and os.path.exists(jobs[seed, run]["result"]):
                s = run_summary(jobs[seed, run], search)
                curve = timed_evaluations(read_log(beside(jobs[seed, run], "log.jsonl")), s["first_step"])
                r["runs"][run] = {**{k: s[k] for k in ("steps", "first_step", "val_loss", "val_acc", "train_seconds",
                                                       "mean_step_ms", "parameters", "time", "precision")},
                                  "threads": s.get("threads"), "curve": curve}
        if {"full", "earlybert"} <= set(r["runs"]):
            full, time = r["runs"]["full"], accounted(search, read_json(jobs[seed, "earlybert"]["result"]))
            threads = {"search": search.get("threads"), "earlybert": r["runs"]["earlybert"]["threads"],
                       "full": full["threads"]}
            r["time"] = {"earlybert": time, "full": full["time"]["steps"], "ratio": time["total"] / full["time"]["steps"],
                         "threads": threads, **bounds(jobs, seed, "earlybert", search["drawn_at"] / max_steps)}
            if threads["earlybert"] == threads["full"]:  # else EarlyBERT's seconds and the full run's do not compare
                r["full_equal_time"] = interpolated(full["curve"], time["total"])
        out[str(seed)] = r
    return out


def bounds(jobs: dict, seed: int, run: str, f: float) -> dict:
    """The least time, as a share of the full run's, that a ticket drawn at the fraction f of the schedule
    can take: f + (1 - f) x r, with r a pruned step's measured time over a full one's (bound_steps), or
    the pruned model's FLOPs over the full one's (bound_flops). The search, masks and rebuild come on top."""
    summary = lambda name, file: read_json(beside(jobs[seed, name], file))
    recipe = summary("full", "train_config.json")
    P = n_predictions(recipe["max_len"], recipe["mask_prob"])
    flops = lambda name: flops_per_sequence(BertConfig.from_dict(summary(name, os.path.join("model", "config.json"))),
                                            recipe["max_len"], P)
    r = summary(run, "summary.json")["mean_step_ms"] / summary("full", "summary.json")["mean_step_ms"]
    flop_ratio = flops(run) / flops("full")
    return {"step_ratio": r, "bound_steps": f + (1 - f) * r, "flop_ratio": flop_ratio, "bound_flops": f + (1 - f) * flop_ratio}


def interpolated(curve: list[dict], seconds: float) -> dict:
    """A run's held-out numbers at `seconds` of training, linear between the evaluations around it."""
    at = lambda key: float(np.interp(seconds, [e["train_seconds"] for e in curve], [e[key] for e in curve]))
    return {key: at(key) for key in ("steps", "val_loss", "val_acc")} | {"train_seconds": seconds}


def long_markdown(r: dict, max_steps: int) -> list[str]:
    """--part long's tables: (a) the draw, (b) time against its bounds, (c) the end, (e) along the way."""
    seeds = list(r)
    lines = [f"### The long schedule ({max_steps} steps): (a) the draw and (b) EarlyBERT's time", "",
             "| seed | drawn at (of the schedule) | EarlyBERT s (search steps + masks and draw + reload and rebuild + "
             "efficient steps) | full s | EarlyBERT / full | bound: measured steps | bound: FLOPs | pruned/full "
             "step | first 5 efficient steps s | threads: search / efficient / full |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for seed, x in r.items():
        s, t = x["search"], x.get("time")
        drawn = f"{s['drawn_at']} ({s['fraction']:.1%}, {s['rule']})"
        if not t:
            lines.append(f"| {seed} | {drawn} | not yet run | | | | | | | |")
            continue
        e = t["earlybert"]
        lines.append(f"| {seed} | {drawn} | {e['total']:.0f} ({e['search steps']:.0f} + {e['masks and draw']:.1f} + "
                     f"{e['reload and rebuild']:.1f} + {e['efficient steps']:.0f}) | {t['full']:.0f} | {t['ratio']:.3f} "
                     f"| {t['bound_steps']:.3f} | {t['bound_flops']:.3f} | {t['step_ratio']:.3f} | "
                     f"{e['first steps']:.1f} | {' / '.join(str(t['threads'][k]) for k in t['threads'])} |")
    runs = ("full", "earlybert", "random", "random-per-layer")
    done = [s for s in seeds if set(runs[1:]) <= set(r[s]["runs"])]  # the tickets; the full run where it finished
    if not done:
        return lines
    among = lambda run: [s for s in done if run in r[s]["runs"] or run in r[s]] if run.startswith("full") else done
    get = lambda run, key, s: r[s]["runs"][run][key] if run in r[s]["runs"] else r[s][run][key]
    value = lambda run, key: [get(run, key, s) for s in among(run)]
    short = lambda run: ROWS[run].split(" (")[0]
    subset = lambda run: "" if among(run) == done else f" (seed{'s'[:len(among(run)) - 1]} {', '.join(among(run))})"
    lines += ["", f"### The long schedule: (c) at step {max_steps}, seeds {', '.join(done)}", "",
              "| run | held-out MLM loss | accuracy | per seed: loss | accuracy |", "|---|---:|---:|---:|---:|"]
    for run in (x for x in (*runs, "full_equal_time") if among(x)):
        lines.append(f"| {ROWS[run]}{subset(run)} | {pm(value(run, 'val_loss'), 3)} | "
                     f"{pm(value(run, 'val_acc'), 3)} | {each(value(run, 'val_loss'))} | {each(value(run, 'val_acc'))} |")
    lines += ["", "| paired per seed | loss | verdict | accuracy | verdict |", "|---|---:|---|---:|---|"]
    for a, b in (("earlybert", "random"), ("earlybert", "random-per-layer"), ("earlybert", "full"),
                 ("earlybert", "full_equal_time")):
        d = {k: [get(a, k, s) - get(b, k, s) for s in among(b)] for k in ("val_loss", "val_acc")}  # b's seeds
        lines += [f"| {short(a)} − {short(b)}{subset(b)} | {signed(d['val_loss'])} | {verdict(d['val_loss'])} | "
                  f"{signed(d['val_acc'])} | {verdict(d['val_acc'])} |"] if among(b) else []
    lines += ["", "### The long schedule: (e) along efficient training, drawn − random per-layer and drawn − random "
              "(held-out MLM loss, per seed)", "", "| step | drawn − random per-layer | verdict | drawn − random | "
              "verdict |", "|---:|---:|---|---:|---|"]
    curve = lambda s, run: {e["steps"]: e["val_loss"] for e in r[s]["runs"][run]["curve"]}
    steps = sorted(set.intersection(*[set(curve(s, run)) for s in done for run in runs[1:]]))
    d = {b: [(step, [curve(s, "earlybert")[step] - curve(s, b)[step] for s in done]) for step in steps]
         for b in ("random-per-layer", "random")}
    for (step, a), (_, b) in zip(d["random-per-layer"], d["random"]):
        lines.append(f"| {step} | {signed(a)} | {verdict(a)} | {signed(b)} | {verdict(b)} |")
    return lines + ["", *(f"Drawn − {b.replace('-', ' ', 1)}: {washed_out(d[b])}." for b in d)]
