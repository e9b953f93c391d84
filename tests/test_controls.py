"""Tests for controls.py (does the drawn ticket matter?) and the tickets it compares: random
units at a drawn ticket's per-layer sizes (ticket.random_ticket_like, train.py --ticket
random-per-layer) and the anti-ticket."""
import json
import os
from dataclasses import replace

import pytest
import torch

import controls
import slim
import train
from helpers import TINY_MODEL, log, relative_error
from ticket import Ticket, draw_ticket, random_ticket, random_ticket_like

SIZES = dict(full_heads=[4, 4, 4], full_ffn=[10, 10, 10], head_ratio=0.25, ffn_ratio=0.5)


def drawn() -> Ticket:
    """A ticket of uneven widths (10, 4, 1 neurons of 10), as a global FFN threshold gives."""
    g = torch.Generator().manual_seed(0)
    heads = [torch.rand(4, generator=g) for _ in range(3)]
    ffn = [torch.rand(10, generator=g) + shift for shift in (1.0, 0.5, 0.0)]
    return draw_ticket(heads, ffn, 0.25, 0.5)


def test_random_ticket_like_keeps_the_drawn_per_layer_sizes_with_random_units():
    t = drawn()
    assert [len(f) for f in t.ffn] == [10, 4, 1]
    like = [random_ticket_like(t, seed) for seed in range(4)]
    for r in like:
        assert [len(h) for h in r.heads] == [len(h) for h in t.heads] and [len(f) for f in r.ffn] == [10, 4, 1]
        assert r.kind == "random-per-layer" and r.full_ffn == t.full_ffn and r.step == t.step
    assert like[0] == random_ticket_like(t, 0)  # seeded
    assert len({str(r.ffn) for r in like}) > 1  # the units differ from seed to seed
    # random_ticket prunes as many in all, but its global draw spreads them evenly: not the drawn widths
    spread = random_ticket(t.full_heads, t.full_ffn, 0.25, 0.5, seed=0)
    assert sum(map(len, spread.ffn)) == 15 and [len(f) for f in spread.ffn] != [10, 4, 1]


def test_anti_ticket_keeps_the_smallest_coefficients_at_the_drawn_sizes():
    heads = [torch.tensor([0.9, -0.1, 0.5, 0.3])] * 2
    ffn = [torch.tensor([0.5, -2.0, 0.1, 0.7, 0.2, 0.05]), torch.tensor([1.0, 0.3, -0.4, 0.8, 0.9, 0.6])]
    t = draw_ticket(heads, ffn, 0.25, 0.5)
    anti = controls.anti_ticket(t, heads, ffn)
    assert t.heads == [[0, 2, 3]] * 2 and anti.heads == [[1, 2, 3]] * 2  # |c| 0.1, 0.3, 0.5 kept
    assert [len(f) for f in anti.ffn] == [len(f) for f in t.ffn] and anti.kind == "anti"
    for layer, (kept, coefs) in enumerate(zip(anti.ffn, ffn)):
        pruned = [i for i in range(6) if i not in kept]
        assert coefs[kept].abs().max() <= coefs[pruned].abs().min(), layer


def test_alike_is_zero_for_one_ticket_twice_and_chance_for_random_ones():
    t = drawn()
    same = controls.alike([t, replace(t)])
    assert same["distance"] == {"heads": 0.0, "ffn": 0.0} and same["pairs"] == 1
    assert 0.2 < same["chance"]["ffn"] < 0.6 and 0.2 < same["chance"]["heads"] < 0.6
    strangers = controls.alike([random_ticket_like(t, 100), random_ticket_like(t, 101), random_ticket_like(t, 102)])
    assert strangers["pairs"] == 3 and abs(strangers["distance"]["ffn"] - strangers["chance"]["ffn"]) < 0.25


def test_spread_of_coefficients():
    ones = controls.spread([torch.ones(4), torch.ones(6)])
    assert ones == {"q10": 1.0, "median": 1.0, "q90": 1.0, "near_median": 1.0}
    apart = controls.spread([torch.linspace(0, 1, 101)])
    assert apart["median"] == pytest.approx(0.5) and apart["near_median"] == pytest.approx(9 / 101)


def test_at_draw_scores_each_ticket_and_the_drawn_one_is_where_efficient_training_starts(corpus, searched, tmp_path):
    """Forward passes only: the drawn ticket's held-out loss is the efficient phase's first evaluation
    (the same rebuilt model, the same held-out batches)."""
    search = str(searched.out / "search")
    result = controls.at_draw(search, n_random=2)
    names = {"searched", "drawn", "anti", "random-per-layer 0", "random-per-layer 1", "random 0", "random 1"}
    assert set(result["scores"]) == names and result["step"] == searched.summary["drawn_at"]
    assert all(0 < loss < 10 and 0 <= acc <= 1 for loss, acc in result["scores"].values())
    loss = {name: l for name, (l, _) in result["scores"].items()}
    assert len({loss[n] for n in ("searched", "drawn", "anti", "random-per-layer 0", "random-per-layer 1")}) == 5
    # "random i" ranks units by random-per-layer i's scores: where its widths are the drawn ones, they coincide
    assert result["ffn_spread"]["q10"] <= result["ffn_spread"]["median"] <= result["ffn_spread"]["q90"]
    cfg = replace(searched.cfg, phase="efficient", out_dir=str(tmp_path), search_dir=search)
    first = searched.summary["drawn_at"]
    assert train.train(cfg, stop_after=first + 1) is None
    start = [r for r in log(tmp_path, "efficient") if "val_loss" in r][0]
    assert start["step"] == first
    assert relative_error(start["val_loss"], result["scores"]["drawn"][0]) <= TINY_MODEL
    assert start["val_acc"] == pytest.approx(result["scores"]["drawn"][1], abs=1e-9)


def test_efficient_phase_trains_random_units_at_the_drawn_sizes(corpus, searched, tmp_path):
    """--ticket random-per-layer: its own folder, the drawn ticket's per-layer sizes, other units."""
    search = str(searched.out / "search")
    cfg = replace(searched.cfg, phase="efficient", out_dir=str(tmp_path), search_dir=search, ticket="random-per-layer")
    summary = train.train(cfg)
    used = Ticket.load(str(tmp_path / "efficient-random-per-layer" / "ticket.json"))
    drawn_ticket = Ticket.load(os.path.join(search, "ticket.json"))
    assert used == random_ticket_like(drawn_ticket, searched.cfg.seed) and used.ffn != drawn_ticket.ffn
    assert [len(f) for f in used.ffn] == [len(f) for f in drawn_ticket.ffn]
    assert summary["kept_ffn"] == sum(map(len, drawn_ticket.ffn)) and summary["ticket"] == "random-per-layer"
    assert json.load(open(tmp_path / "efficient-random-per-layer" / "summary.json"))["steps"] == searched.cfg.max_steps


def test_every_search_but_the_first_gets_its_vocabulary():
    """One vocabulary for every search: a WordPiece vocabulary trained again differs a little."""
    found = controls.jobs("out", [0, 1], ["--max-steps", "2400"], 2400, "VOCAB")
    searches = {k: j["args"] for k, j in found.items() if k[1] == "search"}
    assert len(searches) == 2 * (4 + 3) and "--vocab" not in searches[0, "search", "rule"]
    assert all(args[args.index("--vocab") + 1] == "VOCAB" for k, args in searches.items() if k != (0, "search", "rule"))
    assert searches[1, "search", 0.5][-2:] == ["--draw-step", "1200"]
    assert searches[1, "search", "sgd"][-2:] == ["--coef-optimizer", "sgd"] and "--draw-step" not in searches[1, "search", "sgd"]
    assert searches[0, "search", "sgd-l1x10"][-6:] == ["--coef-optimizer", "sgd", "--lambda-head", "1e-3", "--lambda-ffn",
                                                      "1e-3"]
    assert "--init-from" in found[1, "reordered"]["args"]  # its start's vocabulary comes with it
