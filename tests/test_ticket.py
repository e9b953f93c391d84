"""ticket.py: drawing tickets, mask distance, the early-bird rule, and the structured rebuild."""
import json
import sys

import numpy as np
import pytest
import torch

from model import Bert, BertClassifier, BertConfig, BertMLM, BertQA, load_pretrained, save_pretrained
from slim import add_coefficients, coefficient_parameters
from ticket import (EarlyBird, Ticket, check_ticket_fits, current_masks, distance_matrix, draw_ticket,
                    mask_distance, plot_distances, random_ticket, rebuild, ticket_masks)


def tiny_config(**kw):
    base = dict(vocab_size=101, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                intermediate_size=48, max_position_embeddings=64, num_labels=3)
    return BertConfig(**{**base, **kw})


def batch(seed=0, B=3, T=11):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 101, (B, T), generator=g)
    types = torch.randint(0, 2, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 7:] = 0  # padding
    mask[2, 4:] = 0
    return ids, types, mask


def logits(model, seed=0):
    ids, types, mask = batch(seed)
    with torch.no_grad():
        out = model(ids, types, mask)
    out = out if torch.is_tensor(out) else out[0]  # task models give (logits, loss)
    return torch.cat(out, -1) if isinstance(out, tuple) else out  # BertQA's logits: (start, end)


@torch.no_grad()
def zero_pruned_coefficients(model, ticket):
    for layer, heads, neurons in zip(getattr(model, "bert", model).layers, ticket.heads, ticket.ffn):
        for coef, kept in ((layer.attn.head_coef, heads), (layer.ffn.ffn_coef, neurons)):
            pruned = torch.ones_like(coef, dtype=torch.bool)
            pruned[kept] = False
            coef[pruned] = 0.0


def masked_model(model_class, ticket, seed):
    """The full model with random coefficients (signs too), those of the ticket's pruned units at 0."""
    torch.manual_seed(seed)
    model = add_coefficients(model_class(tiny_config())).eval()
    with torch.no_grad():
        for p in coefficient_parameters(model):
            p.uniform_(-1.5, 1.5)
    zero_pruned_coefficients(model, ticket)
    return model


# ----------------------------------------------------------------------------- rebuild

@pytest.mark.parametrize("model_class", [BertMLM, BertClassifier, BertQA, Bert])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rebuilt_model_matches_masked_model(model_class, seed):
    head_ratio = [0.25, 0.5, 0.75][seed]
    ticket = random_ticket([4, 4, 4], [48, 48, 48], head_ratio=head_ratio, ffn_ratio=0.6, seed=seed)
    model = masked_model(model_class, ticket, seed)
    small = rebuild(model, ticket)
    assert type(small) is model_class and not small.training
    assert small.config.heads_per_layer == [len(h) for h in ticket.heads]
    assert small.config.ffn_per_layer == [len(n) for n in ticket.ffn]
    layers = getattr(small, "bert", small).layers
    assert all(layer.attn.head_coef is None and layer.ffn.ffn_coef is None for layer in layers)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert (logits(small) - logits(model)).abs().max() <= 1e-5  # every position, padded ones too


def test_rebuild_of_a_rebuilt_model_composes():
    first = random_ticket([4, 4, 4], [48, 48, 48], head_ratio=0.25, ffn_ratio=0.3, seed=3)
    model = masked_model(BertMLM, first, seed=3)
    small = rebuild(model, first)  # folds model's coefficients; small has none (= all ones)
    second = random_ticket(small.config.heads_per_layer, small.config.ffn_per_layer,
                           head_ratio=0.4, ffn_ratio=0.5, seed=4)  # indices relative to `small`
    smaller = rebuild(small, second)

    # Both at once, in the full model's indices: zero every coefficient the composed ticket prunes.
    both = Ticket([[f[i] for i in s] for f, s in zip(first.heads, second.heads)],
                  [[f[i] for i in s] for f, s in zip(first.ffn, second.ffn)],
                  [4, 4, 4], [48, 48, 48], 0.0, 0.0)
    zero_pruned_coefficients(model, both)
    assert smaller.config.ffn_per_layer == [len(n) for n in both.ffn]
    assert (logits(smaller) - logits(model)).abs().max() <= 1e-5


def test_rebuilt_model_saves_and_reloads_on_its_own(tmp_path):
    ticket = random_ticket([4, 4, 4], [48, 48, 48], seed=5)
    small = rebuild(masked_model(BertClassifier, ticket, seed=5), ticket)
    save_pretrained(small, str(tmp_path))
    reloaded = load_pretrained(BertClassifier, str(tmp_path), verbose=False).eval()
    assert reloaded.config.heads_per_layer == small.config.heads_per_layer
    assert reloaded.config.ffn_per_layer == small.config.ffn_per_layer
    assert torch.equal(logits(reloaded), logits(small))


def test_rebuild_leaves_the_original_model_alone_and_keeps_its_mode():
    ticket = random_ticket([4, 4, 4], [48, 48, 48], seed=6)
    model = masked_model(BertMLM, ticket, seed=6).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = rebuild(model, ticket)
    assert small.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(small.bert.embeddings.word.weight, model.bert.embeddings.word.weight)
    assert small.bert.embeddings.word.weight.data_ptr() != model.bert.embeddings.word.weight.data_ptr()


# ----------------------------------------------------------------------------- drawing

def test_heads_are_pruned_layer_wise():
    g = torch.Generator().manual_seed(0)
    heads = [torch.randn(12, generator=g) * s for s in (1.0, 0.01, 100.0)]  # very different scales
    ffn = [torch.randn(8, generator=g) for _ in range(3)]
    ticket = draw_ticket(heads, ffn, head_ratio=1 / 3)
    assert [len(h) for h in ticket.heads] == [8, 8, 8]  # 4 of 12 pruned in every layer
    for c, kept in zip(heads, ticket.heads):
        pruned = sorted(set(range(12)) - set(kept))
        assert c.abs()[pruned].max() <= c.abs()[kept].min()
        assert kept == sorted(kept)


def test_ffn_is_pruned_with_one_global_threshold():
    g = torch.Generator().manual_seed(1)
    heads = [torch.rand(4, generator=g) for _ in range(3)]
    ffn = [torch.randn(48, generator=g) * s for s in (1.0, 0.2, 3.0)]
    ticket = draw_ticket(heads, ffn, ffn_ratio=0.4)
    _, keep = ticket_masks(ticket)
    magnitudes = torch.cat(ffn).abs()
    assert (~keep).sum() == round(0.4 * 144)
    assert magnitudes[~keep].max() <= magnitudes[keep].min()  # every pruned |c| <= every kept |c|
    widths = [len(n) for n in ticket.ffn]
    assert len(set(widths)) == 3 and widths[1] < widths[0] < widths[2]


def test_ties_break_by_index_deterministically():
    ones_h, ones_f = [torch.ones(4)] * 3, [torch.ones(10)] * 3
    ticket = draw_ticket(ones_h, ones_f, head_ratio=0.5, ffn_ratio=0.5)
    assert ticket.heads == [[2, 3]] * 3  # lower index ranks lower among equals
    # globally in layer-major order: all of layer 0, then the first 5 of layer 1 go first
    # Globally, in layer-major order: all of layer 0 and the first 5 of layer 1 rank lowest;
    # layer 0 then keeps its "largest", the last of its ties.
    assert ticket.ffn == [[9], list(range(5, 10)), list(range(10))]
    assert draw_ticket(ones_h, ones_f, 0.5, 0.5) == ticket


def test_every_layer_keeps_at_least_one_head_and_one_neuron():
    heads = [torch.rand(4) for _ in range(3)]
    ffn = [torch.full((20,), 1e-6), torch.rand(20) + 1, torch.rand(20) + 1]
    ffn[0][13] = 2e-6  # layer 0's largest
    ticket = draw_ticket(heads, ffn, head_ratio=0.99, ffn_ratio=0.5)
    assert all(len(h) == 1 for h in ticket.heads)
    assert ticket.heads == [[int(c.abs().argmax())] for c in heads]
    assert ticket.ffn[0] == [13]


def test_ranking_uses_magnitudes_not_signed_values():
    heads = [torch.tensor([0.1, -5.0, 0.2, 0.3])]
    ffn = [torch.tensor([0.5, -9.0, 0.01, 0.6])]
    ticket = draw_ticket(heads, ffn, head_ratio=0.5, ffn_ratio=0.5)
    assert ticket.heads == [[1, 3]]  # the large negative coefficient is kept
    assert ticket.ffn == [[1, 3]]


def test_ffn_multiple_rounds_kept_widths_up():
    g = torch.Generator().manual_seed(2)
    heads = [torch.rand(4, generator=g) for _ in range(3)]
    ffn = [torch.rand(48, generator=g) * s for s in (1.0, 0.3, 2.0)]
    plain = draw_ticket(heads, ffn, ffn_ratio=0.4)
    rounded = draw_ticket(heads, ffn, ffn_ratio=0.4, ffn_multiple=16)
    for c, p, r in zip(ffn, plain.ffn, rounded.ffn):
        assert len(r) == min(48, -(-len(p) // 16) * 16)  # up to a multiple of 16, at most full width
        assert set(p) <= set(r)
        extra = sorted(set(r) - set(p))  # the next-largest |c| of the layer
        rest = sorted(set(range(48)) - set(r))
        assert not extra or not rest or c.abs()[extra].min() >= c.abs()[rest].max()


def test_random_ticket_has_the_same_counts_and_depends_only_on_the_seed():
    full_heads, full_ffn = [12, 12, 6], [64, 64, 32]
    a = random_ticket(full_heads, full_ffn, seed=0)
    g = torch.Generator().manual_seed(0)
    drawn = draw_ticket([torch.rand(n, generator=g) for n in full_heads],
                        [torch.rand(n, generator=g) for n in full_ffn])
    assert [len(h) for h in a.heads] == [len(h) for h in drawn.heads] == [8, 8, 4]
    assert sum(map(len, a.ffn)) == sum(map(len, drawn.ffn)) == 160 - round(0.4 * 160)
    assert a.kind == "random" and a.full_heads == full_heads and a.full_ffn == full_ffn
    assert random_ticket(full_heads, full_ffn, seed=0) == a
    assert random_ticket(full_heads, full_ffn, seed=1).ffn != a.ffn
    assert random_ticket(full_heads, full_ffn, seed=1).heads != a.heads


def test_ticket_saves_and_loads(tmp_path):
    path = tmp_path / "ticket.json"
    ticket = random_ticket([4, 4, 4], [48, 48, 48], seed=0)
    ticket.kind, ticket.step = "earlybird", 120
    ticket.history = [{"step": 100, "head_distance": None, "ffn_distance": None},
                      {"step": 120, "head_distance": 0.0, "ffn_distance": 0.05}]
    ticket.save(str(path))
    assert Ticket.load(str(path)) == ticket
    text = path.read_text()
    assert json.loads(text)["ffn"] == ticket.ffn
    assert len(text.splitlines()) < 30  # one line per layer, not one per index


def test_current_masks_are_the_masks_of_the_drawn_ticket():
    heads, ffn = [torch.randn(4) for _ in range(3)], [torch.randn(48) for _ in range(3)]
    head_mask, ffn_mask = current_masks(heads, ffn, 0.25, 0.5)
    assert head_mask.dtype == torch.bool and head_mask.shape == (12,) and ffn_mask.shape == (144,)
    assert head_mask.sum() == 9 and ffn_mask.sum() == 72
    expected = ticket_masks(draw_ticket(heads, ffn, 0.25, 0.5))
    assert torch.equal(head_mask, expected[0]) and torch.equal(ffn_mask, expected[1])


# ----------------------------------------------------------------------------- the early-bird rule

def test_mask_distance_is_the_fraction_of_differing_bits():
    a = torch.tensor([1, 1, 0, 0, 1, 0, 1, 0], dtype=torch.bool)
    b = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0], dtype=torch.bool)
    assert mask_distance(a, a) == 0.0
    assert mask_distance(a, b) == mask_distance(b, a) == 2 / 8
    assert mask_distance(a, ~a) == 1.0


def flip(mask, n):
    mask = mask.clone()
    mask[:n] = ~mask[:n]
    return mask


def test_early_bird_fires_only_when_masks_are_stable():
    head, ffn = torch.zeros(20, dtype=torch.bool), torch.zeros(100, dtype=torch.bool)
    head[::2], ffn[::3] = True, True

    eb = EarlyBird(k=3, epsilon=0.1)
    assert not eb.update(head, ffn, step=10)  # identical masks, but fewer than k of them
    assert not eb.update(head, ffn, step=20)
    assert eb.history == [{"step": 10, "head_distance": None, "ffn_distance": None},
                          {"step": 20, "head_distance": None, "ffn_distance": None}]
    assert eb.update(head, ffn, step=30)  # k identical masks
    assert eb.history[-1] == {"step": 30, "head_distance": 0.0, "ffn_distance": 0.0}

    moving = EarlyBird(k=3, epsilon=0.1)
    for i in range(10):  # FFN masks keep moving by 20 of 100 bits each time; heads are still
        assert not moving.update(head, flip(ffn, 20 * (i % 2)), step=i)
    assert moving.history[-1]["head_distance"] == 0.0 and moving.history[-1]["ffn_distance"] == 0.2

    # Small moves (1 of 20 heads, 5 of 100 neurons) stay under epsilon: fires.
    settling = EarlyBird(k=3, epsilon=0.1)
    results = [settling.update(flip(head, i % 2), flip(ffn, 5 * (i % 2)), step=i) for i in range(4)]
    assert results == [False, False, True, True]
    assert settling.history[2]["head_distance"] == 0.05 and settling.history[2]["ffn_distance"] == 0.05

    # Distances are the largest to any of the k - 1 older masks, not just the previous one.
    drifting = EarlyBird(k=3, epsilon=0.1)
    results = [drifting.update(flip(head, i), ffn, step=i) for i in range(5)]
    assert results == [False] * 5  # each step moves 1 bit of 20: 0.05 to the last, 0.1 to the one before
    assert drifting.history[-1]["head_distance"] == pytest.approx(0.1)


def test_early_bird_keeps_copies_of_every_mask():
    eb = EarlyBird(k=2)
    head, ffn = torch.zeros(4, dtype=torch.bool), torch.zeros(6, dtype=torch.bool)
    for step in range(4):
        eb.update(head, ffn, step)
        head[step] = True  # the caller reuses its tensor
    assert [s for s, _, _ in eb.masks] == [0, 1, 2, 3]
    assert [int(h.sum()) for _, h, _ in eb.masks] == [0, 1, 2, 3]
    assert len(eb.queue) == 2


def test_distance_matrix_is_symmetric_with_zero_diagonal():
    eb = EarlyBird(k=5)
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        eb.update(torch.rand(12, generator=g) < 0.6, torch.rand(50, generator=g) < 0.6, step)
    d = distance_matrix(eb.masks)
    assert d.shape == (2, 6, 6)
    assert np.array_equal(d, d.transpose(0, 2, 1)) and not d[:, range(6), range(6)].any()
    assert d[1, 2, 4] == mask_distance(eb.masks[2][2], eb.masks[4][2]) and d[1].max() > 0


def test_plot_distances_is_optional(tmp_path, monkeypatch):
    eb = EarlyBird(k=2)
    for step in range(4):
        eb.update(torch.arange(8) % (step + 2) == 0, torch.arange(30) % (step + 2) == 0, step * 10)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert plot_distances(eb, str(tmp_path / "d.png")) is None
    assert not (tmp_path / "d.png").exists()


def test_plot_distances_writes_a_figure(tmp_path):
    pytest.importorskip("matplotlib")
    eb = EarlyBird(k=2)
    for step in range(4):
        eb.update(torch.arange(8) % (step + 2) == 0, torch.arange(30) % (step + 2) == 0, step * 10)
    assert plot_distances(eb, str(tmp_path / "d.png")) == str(tmp_path / "d.png")
    assert (tmp_path / "d.png").stat().st_size > 1000


# ----------------------------------------------------------------------------- bad input

def one_line_value_error(fn, *names):
    with pytest.raises(ValueError) as e:
        fn()
    assert "\n" not in str(e.value)
    for name in names:
        assert name in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("head_ratio, ffn_ratio", [(-0.1, 0.4), (1.0, 0.4), (1 / 3, 1.0), (1 / 3, 1.5)])
def test_ratios_outside_zero_to_one_are_refused(head_ratio, ffn_ratio):
    heads, ffn = [torch.rand(4)] * 3, [torch.rand(48)] * 3
    one_line_value_error(lambda: draw_ticket(heads, ffn, head_ratio, ffn_ratio), "ratio")
    one_line_value_error(lambda: random_ticket([4] * 3, [48] * 3, head_ratio, ffn_ratio), "ratio")


def test_zero_ratios_prune_nothing():
    ticket = random_ticket([4, 4], [8, 8], head_ratio=0.0, ffn_ratio=0.0)
    assert ticket.heads == [list(range(4))] * 2 and ticket.ffn == [list(range(8))] * 2


@pytest.mark.parametrize("change, says", [
    (lambda t: Ticket(t.heads[:2], t.ffn[:2], t.full_heads[:2], t.full_ffn[:2], 0.25, 0.4), "2 layers"),
    (lambda t: Ticket(t.heads, t.ffn[:2], t.full_heads, t.full_ffn, 0.25, 0.4), "differ in length"),
    (lambda t: Ticket(t.heads, t.ffn, [6, 4, 4], t.full_ffn, 0.25, 0.4), "6 heads"),
    (lambda t: Ticket(t.heads, t.ffn, t.full_heads, [48, 64, 48], 0.25, 0.4), "64 FFN"),
    (lambda t: Ticket([[0, 4], [0], [1]], t.ffn, t.full_heads, t.full_ffn, 0.25, 0.4), "indices 0..3"),
    (lambda t: Ticket([[0], [-1], [1]], t.ffn, t.full_heads, t.full_ffn, 0.25, 0.4), "indices 0..3"),
    (lambda t: Ticket(t.heads, [[1, 1], [2], [3]], t.full_heads, t.full_ffn, 0.25, 0.4), "twice"),
    (lambda t: Ticket(t.heads, [[1], [], [3]], t.full_heads, t.full_ffn, 0.25, 0.4), "keeps no"),
])
def test_ticket_that_does_not_fit_the_model_is_refused(change, says):
    good = random_ticket([4, 4, 4], [48, 48, 48], head_ratio=0.25)
    check_ticket_fits(good, tiny_config(), "runs/ticket.json")
    bad = change(good)
    one_line_value_error(lambda: check_ticket_fits(bad, tiny_config(), "runs/ticket.json"),
                         "runs/ticket.json", says)
    model = BertMLM(tiny_config())
    with pytest.raises(ValueError):
        rebuild(model, bad)


@pytest.mark.parametrize("content", [
    "{not json",
    "",
    "[1, 2]",
    '{"heads": [[0]], "ffn": [[0]]}',  # missing fields
    '{"heads": [["a"]], "ffn": [[0]], "full_heads": [4], "full_ffn": [8], "head_ratio": 0, "ffn_ratio": 0}',
    '{"heads": [[0.5]], "ffn": [[0]], "full_heads": [4], "full_ffn": [8], "head_ratio": 0, "ffn_ratio": 0}',
    '{"heads": 3, "ffn": [[0]], "full_heads": [4], "full_ffn": [8], "head_ratio": 0, "ffn_ratio": 0}',
])
def test_malformed_ticket_file_is_refused(tmp_path, content):
    path = tmp_path / "ticket.json"
    path.write_text(content)
    one_line_value_error(lambda: Ticket.load(str(path)), str(path))


def test_missing_ticket_file_is_refused(tmp_path):
    one_line_value_error(lambda: Ticket.load(str(tmp_path / "nope.json")), "nope.json", "no such ticket")
    one_line_value_error(lambda: Ticket.load(str(tmp_path)), str(tmp_path))  # a folder
