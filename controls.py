"""Does the drawn ticket matter? The controls a reader of EarlyBERT asks for, from a finished
search's folder, with forward passes only (no training after).

    at_draw(search)   held-out MLM loss and accuracy of the search's model rebuilt with the drawn
                      ticket, with random tickets of its per-layer sizes, with random tickets of its
                      totals (train.py --ticket random), and with the anti-ticket (the smallest |c|
                      kept at the drawn sizes); and how spread the coefficients are
    alike(tickets)    mask distances between tickets (the seeds' searches, say) against the
                      distance between random tickets of the same per-layer sizes

If drawn ~ random ~ anti at the draw, the coefficients say nothing yet about which units matter;
if drawn ~ random-per-layer < random, what they say is how many units to keep in each layer.
reproduce.py --part controls runs these over seeds and draw steps.
"""
import itertools
import os
from contextlib import nullcontext

import numpy as np
import torch

import data
import prune
import slim
from checkpoint import load_checkpoint, read_json, write_json
from model import BertConfig, BertMLM
from runtime import evaluate
from ticket import Ticket, mask_distance, random_ticket, random_ticket_like, ticket_masks, ticket_of_sizes


def anti_ticket(like: Ticket, head_coefs, ffn_coefs) -> Ticket:
    """The drawn ticket turned around: in each layer as many units as `like` keeps, those of the
    smallest |coefficient|. If it does as well as the drawn one, the ranking carries nothing."""
    flip = lambda coefs: [-c.detach().abs().double().cpu().numpy() for c in coefs]
    return ticket_of_sizes(like, flip(head_coefs), flip(ffn_coefs), "anti")


def searched_model(search: str) -> BertMLM:
    """The search's model as its checkpoint holds it (at the draw): weights and slimming coefficients."""
    state = load_checkpoint(os.path.join(search, "ckpt.pt"))
    model = slim.add_coefficients(BertMLM(BertConfig.from_dict(state["model_config"])))
    model.load_state_dict(state["model"])
    return model.eval()


def held_out_batches(search: str) -> list[dict]:
    """The held-out batches the search evaluated on (train.py's: its data, length, batch size, seed)."""
    cfg = read_json(os.path.join(search, "train_config.json"), "train config")
    data_dir = read_json(os.path.join(search, "summary.json"), "run summary")["data_dir"]
    meta = data.corpus_meta(data_dir)
    tokenizer = data.load_tokenizer(meta["vocab_path"], meta["lowercase"])
    special = {t: tokenizer.token_to_id(t) for t in data.SPECIALS}
    return data.MLMBatches(data_dir, "val", cfg["batch_size"], cfg["max_len"], tokenizer.get_vocab_size(), special,
                           seed=cfg["seed"]).eval_batches(cfg["eval_batches"])


def spread(coefs) -> dict:
    """Quantiles of |c| over all units, and the share within 0.05 of the median: how much the
    L1 search has told the units apart."""
    mags = torch.cat([c.detach().abs().flatten() for c in coefs]).double().numpy()
    median = float(np.median(mags))
    return {"q10": float(np.quantile(mags, 0.1)), "median": median, "q90": float(np.quantile(mags, 0.9)),
            "near_median": float(np.mean(np.abs(mags - median) < 0.05))}


def at_draw(search: str, n_random: int = 5, seed: int = 0) -> dict:
    """Held-out (loss, accuracy) of the search's checkpoint rebuilt with each ticket, fp32 on the CPU.
    "searched": the model itself, coefficients and all, before any unit is removed."""
    model, batches = searched_model(search), held_out_batches(search)
    # "random i" and "random-per-layer i" rank the units by the same random scores (the same seed):
    # what differs between them is the per-layer sizes alone
    drawn = Ticket.load(os.path.join(search, "ticket.json"))
    heads, ffn = slim.coefficients(model)
    tickets = {"drawn": drawn, "anti": anti_ticket(drawn, heads, ffn)}
    for i in range(n_random):
        tickets[f"random-per-layer {i}"] = random_ticket_like(drawn, seed + i)
        tickets[f"random {i}"] = random_ticket(drawn.full_heads, drawn.full_ffn, drawn.head_ratio, drawn.ffn_ratio,
                                               seed + i, drawn.ffn_multiple)
    cpu = torch.device("cpu")
    scores = {"searched": evaluate(model, batches, cpu, nullcontext())}
    scores.update({name: evaluate(prune.rebuild(model, t), batches, cpu, nullcontext()) for name, t in tickets.items()})
    return {"step": drawn.step, "kind": drawn.kind, "scores": scores,
            "head_spread": spread(heads), "ffn_spread": spread(ffn)}


def alike(tickets: list[Ticket], n_random: int = 20, seed: int = 0) -> dict:
    """Mean head and FFN mask distance over every pair of `tickets`, beside the mean over pairs of
    random tickets with the same per-layer sizes (random_ticket_like: what chance alone gives)."""
    def mean_distance(pairs):
        d = [[mask_distance(x, y) for x, y in zip(ticket_masks(a), ticket_masks(b))] for a, b in pairs]
        return {"heads": float(np.mean([h for h, _ in d])), "ffn": float(np.mean([f for _, f in d]))}
    assert len(tickets) >= 2, "two tickets at least"
    pairs = list(itertools.combinations(tickets, 2))
    chance = [(random_ticket_like(a, seed + 2 * i), random_ticket_like(b, seed + 2 * i + 1))
              for i in range(n_random) for a, b in pairs]
    return {"tickets": len(tickets), "pairs": len(pairs), "distance": mean_distance(pairs),
            "chance": mean_distance(chance)}


# ----------------------------------------------------------------------------- over seeds and draw steps
# reproduce.py --part controls: per seed, searches that draw by the rule and at fixed later steps;
# each checkpoint scored with every ticket (at_draw); the searches' tickets compared across seeds and
# with a search from the same initial weights but another data order (alike); then efficient training
# of the drawn ticket and both random controls from the rule's draw and the earlier fixed steps.

DRAW_AT = (0.25, 0.5, 0.75)  # later draws, as fractions of the schedule ("rule": the early-bird rule)
TRAIN_FROM = ("rule", 0.25, 0.5)  # the draws that efficient training goes on from
# The coefficients' optimizer (declared before any was run): network slimming's SGD (momentum 0.9, lr 0.1
# on the weights' schedule) at the recipe's L1, AdamW at ten times the L1, and SGD at ten times the L1;
# each searched until the rule fires (else to the last step) and scored as at_draw does.
COEF_SEARCHES = {"sgd": ["--coef-optimizer", "sgd"], "l1x10": ["--lambda-head", "1e-3", "--lambda-ffn", "1e-3"],
                 "sgd-l1x10": ["--coef-optimizer", "sgd", "--lambda-head", "1e-3", "--lambda-ffn", "1e-3"]}
SEARCHES = ("rule", *DRAW_AT, *COEF_SEARCHES)  # every search of a seed, in the order reproduce.py runs them
TICKETS = {"earlybird": "efficient", "random": "efficient-random", "random-per-layer": "efficient-random-per-layer"}
TRAIN_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")


def draw_name(draw, max_steps: int) -> str:
    return draw if isinstance(draw, str) else f"step{round(draw * max_steps)}"


def jobs(out: str, seeds: list[int], common: list[str], max_steps: int, vocab: str) -> dict:
    """(seed, what) -> a train.py job ({script, args, result}) under OUT/controls/seed{S}: ("search", draw),
    ("efficient", draw, ticket) and ("reordered",): the rule's search again from the first one's initial
    weights (--init-from its start/) with another seed, so another data order and masking."""
    found = {}
    for seed in seeds:
        folder = os.path.join(out, "controls", f"seed{seed}")
        for draw in SEARCHES:
            run_dir = os.path.join(folder, draw_name(draw, max_steps))
            at = COEF_SEARCHES.get(draw, []) if isinstance(draw, str) else ["--draw-step", str(round(draw * max_steps))]
            first = seed == seeds[0] and draw == "rule"  # trains the vocabulary every other search gets
            own = [*common, "--seed", str(seed), *([] if first else ["--vocab", vocab])]
            found[seed, "search", draw] = {"script": TRAIN_PY, "args": ["--phase", "search", "--out-dir", run_dir,
                                                                        *own, *at],
                                           "result": os.path.join(run_dir, "search", "summary.json")}
            for ticket, sub in TICKETS.items() if draw in TRAIN_FROM else ():
                found[seed, "efficient", draw, ticket] = {
                    "script": TRAIN_PY, "args": ["--phase", "efficient", "--out-dir", run_dir, "--ticket", ticket],
                    "result": os.path.join(run_dir, sub, "summary.json")}
        start = os.path.join(folder, "rule", "search", "start")
        run_dir = os.path.join(folder, "reordered")
        found[seed, "reordered"] = {"script": TRAIN_PY, "result": os.path.join(run_dir, "search", "summary.json"),
                                    "args": ["--phase", "search", "--out-dir", run_dir, *common, "--init-from", start,
                                             "--seed", str(seed + 1000)]}
    return found


def scored(search: str, seed: int) -> dict:
    """at_draw(search), computed once: kept in SEARCH/at_draw.json."""
    path = os.path.join(search, "at_draw.json")
    if not os.path.exists(path):
        write_json(at_draw(search, seed=seed), path)
    return read_json(path, "ticket scores")


def results(found: dict, seeds: list[int], max_steps: int) -> dict:
    """What the finished jobs say (efficient runs only where they have finished)."""
    folder = lambda job: os.path.dirname(job["result"])
    ticket = lambda job: Ticket.load(os.path.join(folder(job), "ticket.json"))
    r = {"at_draw": {}, "alike": {}, "reordered": {}, "trained": {}, "coef_search": {}}
    for draw in ("rule", *DRAW_AT):
        name = draw_name(draw, max_steps)
        r["at_draw"][name] = {str(s): scored(folder(found[s, "search", draw]), s) for s in seeds}
        if len(seeds) > 1:
            r["alike"][name] = alike([ticket(found[s, "search", draw]) for s in seeds])
    for variant in COEF_SEARCHES:
        r["coef_search"][variant] = {str(s): scored(folder(found[s, "search", variant]), s) for s in seeds
                                     if os.path.exists(found[s, "search", variant]["result"])}
    for s in seeds:
        a, b = ticket(found[s, "search", "rule"]), ticket(found[s, "reordered"])
        r["reordered"][str(s)] = {**alike([a, b]), "steps": [a.step, b.step]}
        for draw in TRAIN_FROM:
            done = {t: read_json(found[s, "efficient", draw, t]["result"]) for t in TICKETS
                    if os.path.exists(found[s, "efficient", draw, t]["result"])}
            r["trained"].setdefault(draw_name(draw, max_steps), {})[str(s)] = {
                t: {"val_loss": d["val_loss"], "val_acc": d["val_acc"], "from_step": d["first_step"]}
                for t, d in done.items()}
    return r
