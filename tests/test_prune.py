"""prune.py: the structured rebuild. Literal tickets and coefficients set by hand (helpers.py),
so these tests grade slice_state, fold_coefficients and rebuild alone."""
import pytest
import torch
import torch.nn as nn

from checkpoint import load_pretrained, save_pretrained
from helpers import TICKETS, TINY_MODEL, literal_ticket as literal, relative_error, set_coefficients
from helpers import ticket_config as tiny_config
from helpers import ticket_logits as logits
from model import Bert, BertClassifier, BertMLM, BertQA
from prune import fold_coefficients, rebuild, slice_state


def test_slice_state_keeps_the_kept_units_rows_and_columns_exactly():
    t = literal([[1, 3]], [[0, 2]], full_heads=[4], full_ffn=[3])  # heads of dim 2: rows 2,3 and 6,7
    p = "layers.0."  # a bare encoder's names (a task model's start with "bert.")
    state = {p + "attn.query.weight": torch.arange(40.).view(8, 5), p + "attn.query.bias": torch.arange(8.),
             p + "attn.out.weight": torch.arange(40.).view(5, 8), p + "attn.out.bias": torch.arange(5.),
             p + "ffn.up.weight": torch.arange(15.).view(3, 5), p + "ffn.up.bias": torch.arange(3.),
             p + "ffn.down.weight": torch.arange(15.).view(5, 3), p + "attn.head_coef": torch.ones(4),
             p + "ffn.ffn_coef": torch.ones(3), "embeddings.word.weight": torch.ones(7, 5)}
    sliced = slice_state(state, t)
    assert set(sliced) == set(state) - {p + "attn.head_coef", p + "ffn.ffn_coef"}
    assert torch.equal(sliced[p + "attn.query.weight"], state[p + "attn.query.weight"][[2, 3, 6, 7]])
    assert torch.equal(sliced[p + "attn.query.bias"], torch.tensor([2., 3., 6., 7.]))
    assert torch.equal(sliced[p + "attn.out.weight"], state[p + "attn.out.weight"][:, [2, 3, 6, 7]])
    assert torch.equal(sliced[p + "ffn.up.weight"], state[p + "ffn.up.weight"][[0, 2]])
    assert torch.equal(sliced[p + "ffn.up.bias"], torch.tensor([0., 2.]))
    assert torch.equal(sliced[p + "ffn.down.weight"], state[p + "ffn.down.weight"][:, [0, 2]])
    for name in (p + "attn.out.bias", "embeddings.word.weight"):
        assert sliced[name] is state[name]


def test_slice_state_slices_adamw_moments_like_the_weights():
    model = BertMLM(tiny_config())
    g = torch.Generator().manual_seed(0)
    exp_avg = {name: torch.rand(p.shape, generator=g) for name, p in model.named_parameters()}  # AdamW's, by name
    sliced = slice_state(exp_avg, TICKETS[0])
    q, out, down = "bert.layers.1.attn.query.weight", "bert.layers.0.attn.out.weight", "bert.layers.2.ffn.down.weight"
    assert torch.equal(sliced[q], exp_avg[q][8:16])  # layer 1 keeps head 1 of 4, head_dim 8
    assert torch.equal(sliced[out], exp_avg[out][:, [*range(0, 8), *range(16, 32)]])  # heads 0, 2, 3
    assert torch.equal(sliced[down], exp_avg[down][:, [7]])
    small = BertMLM(tiny_config(heads_per_layer=[3, 1, 4], ffn_per_layer=[3, 6, 1]))
    assert {k: v.shape for k, v in sliced.items()} == {k: v.shape for k, v in small.named_parameters()}


def test_fold_coefficients_scales_each_kept_units_columns_by_a_power_of_its_coefficient():
    model = BertMLM(tiny_config())  # coefficients in layer 0 only, set by hand
    model.bert.layers[0].attn.head_coef = nn.Parameter(torch.tensor([2.0, -1.0, 4.0, 0.5]))
    model.bert.layers[0].ffn.ffn_coef = nn.Parameter(torch.arange(1.0, 9.0))
    out, down, up = "bert.layers.0.attn.out.weight", "bert.layers.0.ffn.down.weight", "bert.layers.1.attn.out.weight"
    state = {out: torch.ones(32, 24), down: torch.ones(32, 3), up: torch.ones(32, 8)}  # sliced by TICKETS[0]
    heads = torch.tensor([2.0] * 8 + [4.0] * 8 + [0.5] * 8)  # kept heads 0, 2, 3 (head_dim 8)
    neurons = torch.tensor([2.0, 5.0, 7.0])  # kept neurons 1, 4, 6
    for power in (1, -1, -2):  # weights; AdamW's exp_avg; exp_avg_sq
        folded = fold_coefficients(state, model, TICKETS[0], power)
        assert torch.allclose(folded[out], torch.ones(32, 24) * heads ** power)
        assert torch.allclose(folded[down], torch.ones(32, 3) * neurons ** power)
        assert folded[up] is state[up] and torch.equal(state[out], torch.ones(32, 24))  # no coefficients; no change


@pytest.mark.parametrize("model_class, t, seed", [(BertMLM, TICKETS[0], 0), (BertClassifier, TICKETS[1], 1),
                                                  (BertQA, TICKETS[0], 2), (Bert, TICKETS[1], 3),
                                                  (BertMLM, TICKETS[2], 4)])
def test_rebuilt_model_matches_masked_model(model_class, t, seed):
    torch.manual_seed(seed)
    model = set_coefficients(model_class(tiny_config()).eval(), t, seed)
    small = rebuild(model, t)
    assert type(small) is model_class and not small.training
    assert small.config.heads_per_layer == [len(h) for h in t.heads]
    assert small.config.ffn_per_layer == [len(n) for n in t.ffn]
    layers = getattr(small, "bert", small).layers
    assert all(layer.attn.head_coef is None and layer.ffn.ffn_coef is None for layer in layers)
    assert relative_error(logits(small), logits(model)) <= TINY_MODEL  # every position, padded ones too


def test_rebuild_without_coefficients_only_slices():
    torch.manual_seed(0)
    model = BertClassifier(tiny_config())
    small = rebuild(model, TICKETS[0])
    assert torch.equal(small.bert.layers[0].ffn.down.weight, model.bert.layers[0].ffn.down.weight[:, [1, 4, 6]])
    assert torch.equal(small.bert.layers[1].attn.value.bias, model.bert.layers[1].attn.value.bias[8:16])
    with pytest.raises(ValueError, match="2 layers"):  # a ticket that does not fit
        rebuild(model, literal([[0]] * 2, [[0]] * 2, [4] * 2, [8] * 2))


def test_rebuild_of_a_rebuilt_model_composes():
    model = set_coefficients(BertMLM(tiny_config()).eval(), TICKETS[0], seed=5)
    second = literal([[1, 2], [0], [3]], [[0, 2], [1, 3, 5], [0]], full_heads=[3, 1, 4], full_ffn=[3, 6, 1])
    smaller = rebuild(rebuild(model, TICKETS[0]), second)  # second's indices are relative to the first rebuild
    both = literal([[2, 3], [1], [3]], [[1, 6], [1, 3, 7], [7]])  # the same, in the full model's indices
    set_coefficients(model, both, seed=5)  # same values, more of them at zero
    assert smaller.config.ffn_per_layer == [2, 3, 1]
    assert relative_error(logits(smaller), logits(model)) <= TINY_MODEL


def test_rebuild_leaves_the_original_model_alone_and_keeps_its_mode():
    model = set_coefficients(BertMLM(tiny_config()).train(), TICKETS[1], seed=6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = rebuild(model, TICKETS[1])
    assert small.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(small.bert.embeddings.word.weight, model.bert.embeddings.word.weight)
    assert small.bert.embeddings.word.weight.data_ptr() != model.bert.embeddings.word.weight.data_ptr()


def test_rebuilt_model_saves_and_reloads_on_its_own(tmp_path):
    small = rebuild(set_coefficients(BertClassifier(tiny_config()), TICKETS[1], seed=5), TICKETS[1]).eval()
    save_pretrained(small, str(tmp_path))
    reloaded = load_pretrained(BertClassifier, str(tmp_path), verbose=False).eval()
    assert reloaded.config.ffn_per_layer == small.config.ffn_per_layer == [1, 2, 7]
    assert torch.equal(logits(reloaded), logits(small))
