"""ticket.py: drawing tickets, mask distance, the early-bird rule, the command line.

Each function is graded by its own tests: the rebuild and slicing tests use literal tickets and
coefficients set by hand (not draw_ticket or slim.py), the early-bird tests a reference mask
distance, so a blanked-out function fails its own tests only."""
import json
import os
import subprocess
import sys

import pytest
import torch

from checkpoint import load_pretrained, read_safetensors, save_pretrained
from figures import plot_distances
from helpers import TICKETS, TINY_MODEL, literal_ticket as literal, one_line_value_error, relative_error
from helpers import ticket_config as tiny_config, ticket_logits as logits
from model import Bert, BertClassifier, BertMLM
from ticket import (EarlyBird, Ticket, current_masks, distance_matrix, draw_ticket, full_ticket, main, mask_distance,
                    parameters_and_flops, random_ticket, save_mask_distances, ticket_masks)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- drawing

def test_heads_are_pruned_layer_wise():
    g = torch.Generator().manual_seed(0)
    heads = [torch.randn(12, generator=g) * s for s in (1.0, 0.01, 100.0)]  # very different scales
    ticket = draw_ticket(heads, [torch.randn(8, generator=g) for _ in range(3)], head_ratio=1 / 3)
    assert [len(h) for h in ticket.heads] == [8, 8, 8]  # 4 of 12 pruned in every layer
    for c, kept in zip(heads, ticket.heads):
        pruned = sorted(set(range(12)) - set(kept))
        assert c.abs()[pruned].max() <= c.abs()[kept].min() and kept == sorted(kept)


def test_ffn_is_pruned_with_one_global_threshold():
    g = torch.Generator().manual_seed(1)
    ffn = [torch.randn(48, generator=g) * s for s in (1.0, 0.2, 3.0)]
    ticket = draw_ticket([torch.rand(4, generator=g) for _ in range(3)], ffn, ffn_ratio=0.4)
    keep = torch.zeros(144, dtype=torch.bool)
    keep[[48 * l + i for l, kept in enumerate(ticket.ffn) for i in kept]] = True
    magnitudes = torch.cat(ffn).abs()
    assert (~keep).sum() == round(0.4 * 144)
    assert magnitudes[~keep].max() <= magnitudes[keep].min()  # every pruned |c| <= every kept |c|
    widths = [len(n) for n in ticket.ffn]
    assert widths[1] < widths[0] < widths[2]


def test_ties_break_by_index_deterministically():
    ones_h, ones_f = [torch.ones(4)] * 3, [torch.ones(10)] * 3
    ticket = draw_ticket(ones_h, ones_f, head_ratio=0.5, ffn_ratio=0.5)
    assert ticket.heads == [[2, 3]] * 3  # lower index ranks lower among equals
    # Globally, in layer-major order: all of layer 0 and the first 5 of layer 1 rank lowest;
    # layer 0 then keeps its "largest", the last of its ties.
    assert ticket.ffn == [[9], list(range(5, 10)), list(range(10))]


def test_every_layer_keeps_at_least_one_head_and_one_neuron():
    heads = [torch.tensor([0.3, 0.9, 0.1, 0.2]), torch.tensor([0.5, 0.1, 0.2, 0.7]), torch.tensor([1., 2., 3., 4.])]
    ffn = [torch.full((20,), 1e-6), torch.rand(20) + 1, torch.rand(20) + 1]
    ffn[0][13] = 2e-6  # layer 0's largest
    ticket = draw_ticket(heads, ffn, head_ratio=0.99, ffn_ratio=0.5)
    assert ticket.heads == [[1], [3], [3]] and ticket.ffn[0] == [13]


def test_ranking_uses_magnitudes_not_signed_values():
    ticket = draw_ticket([torch.tensor([0.1, -5.0, 0.2, 0.3])], [torch.tensor([0.5, -9.0, 0.01, 0.6])], 0.5, 0.5)
    assert ticket.heads == [[1, 3]] and ticket.ffn == [[1, 3]]  # the large negative coefficient is kept


def test_ffn_multiple_rounds_kept_widths_up():
    g = torch.Generator().manual_seed(2)
    heads = [torch.rand(4, generator=g) for _ in range(3)]
    ffn = [torch.rand(48, generator=g) * s for s in (1.0, 0.3, 2.0)]
    plain, rounded = draw_ticket(heads, ffn, ffn_ratio=0.4), draw_ticket(heads, ffn, ffn_ratio=0.4, ffn_multiple=16)
    for c, p, r in zip(ffn, plain.ffn, rounded.ffn):
        assert len(r) == min(48, -(-len(p) // 16) * 16)  # up to a multiple of 16, at most full width
        extra, rest = sorted(set(r) - set(p)), sorted(set(range(48)) - set(r))  # extra: the next-largest |c|
        assert set(p) <= set(r) and (not extra or not rest or c.abs()[extra].min() >= c.abs()[rest].max())


def test_random_ticket_has_the_same_counts_and_depends_only_on_the_seed():
    full_heads, full_ffn = [12, 12, 6], [64, 64, 32]
    a = random_ticket(full_heads, full_ffn, seed=0)
    assert [len(h) for h in a.heads] == [8, 8, 4] and sum(map(len, a.ffn)) == 160 - round(0.4 * 160)
    assert a.kind == "random" and a.full_heads == full_heads and a.full_ffn == full_ffn
    assert random_ticket(full_heads, full_ffn, seed=0) == a
    b = random_ticket(full_heads, full_ffn, seed=1)
    assert b.ffn != a.ffn and b.heads != a.heads


def test_current_masks_are_the_masks_of_the_drawn_ticket():
    heads, ffn = [torch.tensor([0.1, 0.4, 0.3, 0.2])], [torch.tensor([0.5, 0.1, 0.2, 0.7, 0.3, 0.9])]
    head_mask, ffn_mask = current_masks(heads, ffn, 0.25, 0.5)
    assert head_mask.tolist() == [False, True, True, True] and ffn_mask.tolist() == [1, 0, 0, 1, 0, 1]


def test_ticket_saves_and_loads_one_line_per_layer(tmp_path):
    path, t = tmp_path / "ticket.json", literal(TICKETS[0].heads, TICKETS[0].ffn, kind="earlybird", step=120)
    t.history = [{"step": 100, "head_distance": None, "ffn_distance": None},
                 {"step": 120, "head_distance": 0.0, "ffn_distance": 0.05}]
    t.save(str(path))
    assert Ticket.load(str(path)) == t and json.loads(path.read_text())["ffn"] == t.ffn
    lines = path.read_text().splitlines()
    assert "    [0, 1, 2, 3, 5, 7]," in lines and len(lines) == 23  # a line per layer, not per index
    assert os.listdir(tmp_path) == ["ticket.json"]  # no temporary file left behind


def test_full_ticket_keeps_every_unit():
    t = full_ticket(tiny_config(heads_per_layer=[4, 1, 2], ffn_per_layer=[8, 3, 5]))
    assert t.heads == [[0, 1, 2, 3], [0], [0, 1]] and t.ffn[1:] == [[0, 1, 2], [0, 1, 2, 3, 4]]
    assert (t.full_heads, t.full_ffn, t.kind) == ([4, 1, 2], [8, 3, 5], "full")


def test_ticket_masks_are_flat_and_layer_major():
    heads, ffn = ticket_masks(literal([[1], [0, 3]], [[2], [0]], full_heads=[2, 4], full_ffn=[3, 2]))
    assert heads.tolist() == [False, True, True, False, False, True] and ffn.tolist() == [0, 0, 1, 1, 0]


# ----------------------------------------------------------------------------- the early-bird rule

@pytest.fixture
def reference_distance(monkeypatch):
    """The rule graded on its own: a reference mask distance in place of ticket.mask_distance."""
    monkeypatch.setattr("ticket.mask_distance", lambda a, b: (a != b).double().mean().item())


def test_mask_distance_is_the_fraction_of_differing_bits():
    a = torch.tensor([1, 1, 0, 0, 1, 0, 1, 0], dtype=torch.bool)
    b = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0], dtype=torch.bool)
    assert mask_distance(a, a) == 0.0 and mask_distance(a, ~a) == 1.0
    assert mask_distance(a, b) == mask_distance(b, a) == 2 / 8


def flip(mask, n):
    mask = mask.clone()
    mask[:n] = ~mask[:n]
    return mask


def test_early_bird_fires_only_when_masks_are_stable(reference_distance):
    head, ffn = torch.arange(20) % 2 == 0, torch.arange(100) % 3 == 0
    eb = EarlyBird(k=3, epsilon=0.1)
    assert not eb.update(head, ffn, step=10) and not eb.update(head, ffn, step=20)  # fewer than k masks
    assert eb.history == [{"step": 10, "head_distance": None, "ffn_distance": None},
                          {"step": 20, "head_distance": None, "ffn_distance": None}]
    assert eb.update(head, ffn, step=30)  # k identical masks
    assert eb.history[-1] == {"step": 30, "head_distance": 0.0, "ffn_distance": 0.0}

    moving = EarlyBird(k=3, epsilon=0.1)  # FFN masks keep moving by 20 of 100 bits each time
    assert not any(moving.update(head, flip(ffn, 20 * (i % 2)), step=i) for i in range(10))
    assert moving.history[-1]["head_distance"] == 0.0 and moving.history[-1]["ffn_distance"] == 0.2

    settling = EarlyBird(k=3, epsilon=0.1)  # small moves (1 of 20 heads, 5 of 100 neurons): fires
    assert [settling.update(flip(head, i % 2), flip(ffn, 5 * (i % 2)), step=i) for i in range(4)] == [0, 0, 1, 1]
    assert settling.history[2]["head_distance"] == 0.05 and settling.history[2]["ffn_distance"] == 0.05

    drifting = EarlyBird(k=3, epsilon=0.1)  # the largest distance to any of the k - 1 older masks counts
    assert not any(drifting.update(flip(head, i), ffn, step=i) for i in range(5))  # 0.05 to the last, 0.1 before
    assert drifting.history[-1]["head_distance"] == pytest.approx(0.1)


def test_early_bird_keeps_copies_of_every_mask_and_resumes(reference_distance):
    eb = EarlyBird(k=2)
    head, ffn = torch.zeros(4, dtype=torch.bool), torch.zeros(6, dtype=torch.bool)
    for step in range(4):
        eb.update(head, ffn, step)
        head[step] = True  # the caller reuses its tensor
    assert [s for s, _, _ in eb.masks] == [0, 1, 2, 3] and [int(h.sum()) for _, h, _ in eb.masks] == [0, 1, 2, 3]
    resumed = EarlyBird(k=9)
    resumed.load_state_dict(eb.state_dict())
    assert resumed.k == 2 and resumed.update(head, ffn, 4) == eb.update(head, ffn, 4)
    assert resumed.history == eb.history


def test_distance_matrix_is_pairwise(reference_distance):
    masks = [(0, torch.tensor([1, 1, 0, 0]).bool(), torch.tensor([1, 0]).bool()),
             (10, torch.tensor([1, 0, 1, 0]).bool(), torch.tensor([1, 0]).bool()),
             (20, torch.tensor([0, 0, 1, 1]).bool(), torch.tensor([0, 1]).bool())]
    d = distance_matrix(masks)
    assert d[0].tolist() == [[0, 0.5, 1], [0.5, 0, 0.5], [1, 0.5, 0]]
    assert d[1].tolist() == [[0, 0, 1], [0, 0, 1], [1, 1, 0]]


@pytest.mark.parametrize("change, says", [
    (lambda t: Ticket(t.heads[:2], t.ffn[:2], t.full_heads[:2], t.full_ffn[:2], 0.25, 0.4), "2 layers"),
    (lambda t: Ticket(t.heads, t.ffn[:2], t.full_heads, t.full_ffn, 0.25, 0.4), "differ in length"),
    (lambda t: Ticket(t.heads, t.ffn, [6, 4, 4], t.full_ffn, 0.25, 0.4), "6 heads"),
    (lambda t: Ticket(t.heads, t.ffn, t.full_heads, [8, 16, 8], 0.25, 0.4), "16 FFN"),
    (lambda t: Ticket([[0, 4], [0], [1]], t.ffn, t.full_heads, t.full_ffn, 0.25, 0.4), "indices 0..3"),
    (lambda t: Ticket([[0], [-1], [1]], t.ffn, t.full_heads, t.full_ffn, 0.25, 0.4), "indices 0..3"),
    (lambda t: Ticket(t.heads, [[1, 1], [2], [3]], t.full_heads, t.full_ffn, 0.25, 0.4), "twice"),
    (lambda t: Ticket(t.heads, [[1], [], [3]], t.full_heads, t.full_ffn, 0.25, 0.4), "keeps no"),
])
def test_ticket_that_does_not_fit_the_model_is_refused(change, says):
    TICKETS[0].check_fits(tiny_config(), "runs/ticket.json")
    one_line_value_error(lambda: change(TICKETS[0]).check_fits(tiny_config(), "runs/ticket.json"),
                         "runs/ticket.json", says)


def test_summary_counts_the_kept_units():
    assert literal([[0], [1, 2]], [[0, 1, 2], [3]], [4, 4], [8, 8], kind="earlybird", step=7).summary() == {
        "drawn_at": 7, "rule": "earlybird", "kept_heads": 3, "total_heads": 8, "kept_ffn": 4, "total_ffn": 16}


def recorded(steps=(0, 10, 20, 30), k=2, fired=True):
    """An EarlyBird's record, written directly (not by update): the masks of step i keep the
    multiples of i + 2; the rule fired at the last step, or never."""
    eb = EarlyBird(k=k)
    eb.masks = [(s, torch.arange(8) % (i + 2) == 0, torch.arange(30) % (i + 2) == 0) for i, s in enumerate(steps)]
    eb.history = [{"step": s, "head_distance": None, "ffn_distance": None} for s in steps]
    eb.history[-1].update(head_distance=0.0 if fired else 0.5, ffn_distance=0.0 if fired else 0.5)
    return eb


def test_save_mask_distances_without_matplotlib(tmp_path, monkeypatch, reference_distance):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    eb = recorded()
    assert save_mask_distances(eb, str(tmp_path), draw_step=30) is None
    saved = json.loads((tmp_path / "mask_distances.json").read_text())
    assert saved["steps"] == [0, 10, 20, 30] and os.listdir(tmp_path) == ["mask_distances.json"]
    assert saved["head_distance"][0][1] == 3 / 8  # {0, 2, 4, 6} vs {0, 3, 6}
    assert saved["ffn_distance"][0][1] == 15 / 30  # the evens vs the multiples of 3, below 30
    assert (saved["k"], saved["epsilon"], saved["drawn_at"]) == (2, 0.1, 30)  # all the figure needs, drawn later


def test_mask_distance_figures_are_written(tmp_path, reference_distance):
    pytest.importorskip("matplotlib")
    assert save_mask_distances(recorded(), str(tmp_path), draw_step=30) == str(tmp_path / "mask_distances.png")
    assert (tmp_path / "mask_distances.png").stat().st_size > 1000
    never = recorded(steps=(3, 5, 12), k=5, fired=False)  # steps not evenly spaced
    d = distance_matrix(never.masks)
    distances = {"steps": [3, 5, 12], "head_distance": d[0].tolist(), "ffn_distance": d[1].tolist(), "k": 5,
                 "epsilon": 0.1, "drawn_at": None}
    assert plot_distances(distances, str(tmp_path / "never.png")) == str(tmp_path / "never.png")
    assert sorted(os.listdir(tmp_path)) == ["mask_distances.json", "mask_distances.png", "never.png"]


def test_distances_draws_a_finished_searchs_figure_from_its_json(tmp_path, monkeypatch, capsys, reference_distance):
    """`python ticket.py distances FOLDER`: the figure of a search that ran without matplotlib, from its
    mask_distances.json; one written before the file held k, epsilon and the draw step takes them from
    the train_config.json and ticket.json beside it. Without matplotlib: one line saying what to install."""
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "matplotlib", None)
        m.setitem(sys.modules, "matplotlib.figure", None)
        save_mask_distances(recorded(), str(tmp_path), draw_step=30)
        one_line_value_error(lambda: main(["distances", str(tmp_path)]), "mask_distances.png", "pip install matplotlib")
    assert os.listdir(tmp_path) == ["mask_distances.json"]
    pytest.importorskip("matplotlib")
    main(["distances", str(tmp_path)])
    assert capsys.readouterr().out.strip() == f"mask distances -> {tmp_path / 'mask_distances.png'}"
    assert (tmp_path / "mask_distances.png").read_bytes()[:4] == b"\x89PNG"

    old = json.loads((tmp_path / "mask_distances.json").read_text())
    for key in ("k", "epsilon", "drawn_at"):
        del old[key]
    (tmp_path / "mask_distances.json").write_text(json.dumps(old))
    (tmp_path / "train_config.json").write_text(json.dumps({"eb_k": 2, "eb_epsilon": 0.1}))
    literal([[0]], [[0]], [1], [8], step=30).save(str(tmp_path / "ticket.json"))
    main(["distances", str(tmp_path), "--out", str(tmp_path / "old.png")])
    assert (tmp_path / "old.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("head_ratio, ffn_ratio", [(-0.1, 0.4), (1.0, 0.4), (1 / 3, 1.0), (1 / 3, 1.5)])
def test_ratios_outside_zero_to_one_are_refused(head_ratio, ffn_ratio):
    one_line_value_error(lambda: draw_ticket([torch.rand(4)] * 3, [torch.rand(8)] * 3, head_ratio, ffn_ratio), "ratio")


def test_zero_ratios_prune_nothing():
    ticket = draw_ticket([torch.rand(4)] * 2, [torch.rand(8)] * 2, head_ratio=0.0, ffn_ratio=0.0)
    assert ticket.heads == [list(range(4))] * 2 and ticket.ffn == [list(range(8))] * 2


FIELDS = '"full_heads": [4], "full_ffn": [8], "head_ratio": 0, "ffn_ratio": 0'


@pytest.mark.parametrize("content", [
    "{not json", "", "[1, 2]", "\x00\xff", '{"heads": [[0]], "ffn": [[0]]}',  # missing fields
    '{"heads": [["a"]], "ffn": [[0]], ' + FIELDS + "}", '{"heads": [[0.5]], "ffn": [[0]], ' + FIELDS + "}",
    '{"heads": 3, "ffn": [[0]], ' + FIELDS + "}", '{"heads": [[4]], "ffn": [[0]], ' + FIELDS + "}",
    '{"heads": [[0]], "ffn": [[0], [1]], ' + FIELDS + "}"])
def test_malformed_ticket_file_is_refused(tmp_path, content):
    path = tmp_path / "ticket.json"
    path.write_text(content, encoding="latin-1")
    one_line_value_error(lambda: Ticket.load(str(path)), str(path))
    for argv in (["show", path], ["compare", path, path], ["apply", path, "--model", "m", "--out", "o"]):
        one_line_value_error(lambda: main(list(map(str, argv))), str(path))


def test_missing_ticket_file_is_refused(tmp_path):
    missing = str(tmp_path / "nope.json")
    for argv in (["show", missing], ["compare", missing, missing], ["apply", missing, "--model", "m", "--out", "o"]):
        one_line_value_error(lambda: main(argv), missing, "no such ticket")
    one_line_value_error(lambda: Ticket.load(str(tmp_path)), str(tmp_path))  # a folder


# ----------------------------------------------------------------------------- command line

@pytest.fixture
def folders(tmp_path):
    """A full-size tiny checkpoint folder, and TICKETS[0] and TICKETS[1] saved beside it."""
    torch.manual_seed(0)
    save_pretrained(BertClassifier(tiny_config()).eval(), str(tmp_path / "full"), lowercase=True)
    (tmp_path / "full" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a"]) + "\n")
    TICKETS[0].save(str(tmp_path / "a.json"))
    TICKETS[1].save(str(tmp_path / "b.json"))
    return tmp_path


def test_show_prints_kept_units_and_what_they_cost(folders, capsys):
    main(["show", str(folders / "a.json")])
    out = capsys.readouterr().out.splitlines()
    assert out[2].split() == ["0", "3/4", "0", "2", "3", "3/8", "(38%)"] and out[3].split()[:3] == ["1", "1/4", "1"]
    assert out[5] == "total  heads 8/12 (67%), FFN neurons 10/24 (42%)" and "--model" in out[6]
    main(["show", str(folders / "a.json"), "--model", str(folders / "full"), "--seq-len", "16"])
    last = capsys.readouterr().out.splitlines()[-1]
    small = tiny_config(heads_per_layer=[3, 1, 4], ffn_per_layer=[3, 6, 1])
    params = [sum(p.numel() for p in Bert(c).parameters()) for c in (small, tiny_config())]
    assert f"{params[0] / 1e6:.2f}M of {params[1] / 1e6:.2f}M" in last and "length 16" in last


def test_show_counts_flops_at_the_length_the_run_trained_at(folders, capsys):
    """A ticket in a run's folder: the FLOPs at that run's --max-len (its train_config.json), not 128."""
    (folders / "train_config.json").write_text(json.dumps({"max_len": 64}))
    main(["show", str(folders / "a.json"), "--model", str(folders / "full")])
    assert "at length 64:" in capsys.readouterr().out.splitlines()[-1]
    os.remove(folders / "train_config.json")
    main(["show", str(folders / "a.json"), "--model", str(folders / "full")])
    assert "at length 128:" in capsys.readouterr().out.splitlines()[-1]


def test_parameters_and_flops_count_every_weight_and_the_attention():
    config = tiny_config(num_hidden_layers=1, hidden_size=4, num_attention_heads=2, heads_per_layer=[1],
                         ffn_per_layer=[2])  # one layer keeping 1 head of dim 2 and 2 neurons
    params, flops = parameters_and_flops(config, seq_len=5)
    # embeddings (101 + 64 + 2) x 4 + LayerNorm 8; Q, K, V 3 x (4 x 2 + 2), out 2 x 4 + 4, up 4 x 2 + 2,
    # down 2 x 4 + 4, two LayerNorms 16
    assert params == 676 + 30 + 12 + 10 + 12 + 16
    assert flops == 6 * (3 * 8 + 8 + 8 + 8) + 12 * 5 * 2  # 6 per matrix weight + 12 x seq_len x head dims


def test_show_draws_a_picture(folders, capsys):
    pytest.importorskip("matplotlib")
    main(["show", str(folders / "a.json"), "--plot", str(folders / "a.png")])
    assert (folders / "a.png").stat().st_size > 1000 and "a.png" in capsys.readouterr().out


def test_compare_prints_mask_distances_per_layer_and_overall(folders, capsys, reference_distance):
    main(["compare", str(folders / "a.json"), str(folders / "b.json")])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[3:]]
    # heads {0,2,3} vs {3}: 2 of 4 differ; {1} vs {0,1}: 1; {0,1,2,3} vs {1,2}: 2; 5 of 12 in all.
    # FFN {1,4,6} vs {0}: 4 of 8; {0,1,2,3,5,7} vs {2,3}: 4; {7} vs {1,...,7}: 6; 14 of 24 in all.
    assert rows == [["0", "0.500", "0.500"], ["1", "0.250", "0.500"], ["2", "0.500", "0.750"],
                    ["all", "0.417", "0.583"]]
    literal([[0]], [[0]], [1], [8]).save(str(folders / "other.json"))
    one_line_value_error(lambda: main(["compare", str(folders / "a.json"), str(folders / "other.json")]),
                         "a.json", "other.json")


@pytest.mark.parametrize("layout", ["ours", "downloaded"])
def test_apply_writes_the_smaller_checkpoint(folders, capsys, layout):
    full = folders / "full"
    if layout == "downloaded":  # pytorch_model.bin, with the pooler and an NSP head our classes do not have
        weights = read_safetensors(str(full / "model.safetensors"))
        torch.save({**weights, "cls.seq_relationship.weight": torch.ones(2, 32)}, full / "pytorch_model.bin")
        (full / "model.safetensors").unlink()
    main(["apply", str(folders / "a.json"), "--model", str(full), "--out", str(folders / "small")])
    assert "small" in capsys.readouterr().out
    small = load_pretrained(BertClassifier, str(folders / "small"), verbose=False).eval()
    masked = load_pretrained(BertClassifier, str(full), verbose=False).eval()  # the pruned units' coefficients at 0
    for layer, heads, neurons in zip(masked.bert.layers, TICKETS[0].heads, TICKETS[0].ffn):
        layer.attn.head_coef, layer.ffn.ffn_coef = torch.zeros(4), torch.zeros(8)
        layer.attn.head_coef[heads], layer.ffn.ffn_coef[neurons] = 1.0, 1.0
    assert small.config.heads_per_layer == [3, 1, 4] and relative_error(logits(small), logits(masked)) <= TINY_MODEL
    saved = read_safetensors(str(folders / "small" / "model.safetensors"))
    assert torch.equal(saved["bert.pooler.dense.weight"], masked.pooler.weight)
    assert (layout == "downloaded") == ("cls.seq_relationship.weight" in saved)
    assert (folders / "small" / "vocab.txt").read_text() == (full / "vocab.txt").read_text()


def test_apply_refuses_what_does_not_fit_and_never_overwrites(folders):
    full, out = str(folders / "full"), folders / "out"
    literal([[0]] * 2, [[0]] * 2, [4] * 2, [8] * 2).save(str(folders / "two.json"))
    for argv in (["apply", str(folders / "two.json"), "--model", full, "--out", str(out)],
                 ["show", str(folders / "two.json"), "--model", full]):
        one_line_value_error(lambda: main(argv), "two.json", os.path.join(full, "config.json"), "2 layers")
    one_line_value_error(lambda: main(["apply", str(folders / "a.json"), "--model", str(folders), "--out", str(out)]),
                         "config.json")
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    one_line_value_error(lambda: main(["apply", str(folders / "a.json"), "--model", full, "--out", str(out)]),
                         str(out), "--force")
    assert os.listdir(out) == ["keep.txt"]
    main(["apply", str(folders / "a.json"), "--model", full, "--out", str(out), "--force"])
    assert load_pretrained(BertMLM, str(out), verbose=False).config.heads_per_layer == [3, 1, 4]


@pytest.mark.slow  # a fresh Python importing torch: about 3 s
def test_command_line_errors_are_one_line(tmp_path):
    run = subprocess.run([sys.executable, os.path.join(ROOT, "ticket.py"), "compare", str(tmp_path / "a.json"),
                          str(tmp_path / "b.json")], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == [f"error: {tmp_path / 'a.json'}: no such ticket file; draw one with the "
                                       "search phase first"]
