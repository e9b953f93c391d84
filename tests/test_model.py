"""model.py, part by part: each module against the same computation written out by hand (the heads:
tests/test_heads.py).

A course can blank out one function of model.py and grade it with `-k`:

    python -m pytest tests/test_model.py -k attention      # SelfAttention.forward (+ head coefficients, query rows)
    python -m pytest tests/test_model.py -k feed_forward   # FeedForward.forward (+ FFN coefficients)
    python -m pytest tests/test_model.py -k add_norm       # Layer.forward (post-LN; at positions)
    python -m pytest tests/test_model.py -k embeddings     # Embeddings.forward
    python -m pytest tests/test_model.py -k encoder        # Bert.forward
    python -m pytest tests/test_model.py -k init_weights   # init_weights
    python -m pytest tests/test_model.py -k frozen         # all of it, against numbers printed once

Sizes are tiny and seeds fixed; the hand-written references use plain tensor algebra only
(no F.scaled_dot_product_attention, no nn.LayerNorm), and agree up to fp32 rounding: relative to
the tensor's magnitude, by as many roundings as the computation sums terms (helpers.PART, LAYER,
TINY_MODEL), so on every CPU's kernels, while an error of 1e-3 in a coefficient still shows. The frozen
numbers at the end were printed once by this code; they catch a change in the order of
initialisation or in the forward that the part-by-part tests let through.
"""
import math

import pytest
import torch
import torch.nn as nn

from helpers import (BF16_EPS, LAYER, PART, TINY_MODEL as MODEL, gelu, gradient_scale, layer_norm, linear, randomize,
                     relative_error, tiny_config)
from model import Bert, BertConfig, BertMLM, Embeddings, FeedForward, Layer, SelfAttention, init_weights, set_attention


def inputs(seed=1, B=2, T=7, hidden=32):
    """Hidden states (B, T, hidden) and a padding mask: the second sequence has 3 real tokens."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, hidden, generator=g)
    keep = torch.ones(B, T, dtype=torch.long)
    keep[1, 3:] = 0
    return x, keep


# ----------------------------------------------------------------------------- by hand (more in helpers.py)

def attention_by_hand(attn: SelfAttention, x, keep=None, coef=None):
    """softmax(Q K^T / sqrt(d) + mask) V for each head h, times its coefficient c_h, heads
    concatenated, then the output projection (Vaswani et al., eq. 1; EarlyBERT sec. 3.1)."""
    d = attn.head_dim
    heads = []
    for h in range(attn.n_heads):
        rows = slice(h * d, (h + 1) * d)  # head h's slice of the projections
        q, k, v = (linear(x, proj, rows) for proj in (attn.query, attn.key, attn.value))  # (B, T, d)
        scores = q @ k.transpose(1, 2) / math.sqrt(d)  # (B, T, T)
        if keep is not None:  # -inf at padded keys: they get zero weight
            scores = scores + torch.where(keep[:, None, :].bool(), 0.0, float("-inf"))
        context = scores.softmax(-1) @ v
        heads.append(context * (1.0 if coef is None else coef[h]))
    return linear(torch.cat(heads, -1), attn.out)


def feed_forward_by_hand(ffn: FeedForward, x, coef=None):
    h = gelu(linear(x, ffn.up))
    return linear(h * (1.0 if coef is None else coef), ffn.down)


def mask_of(keep):
    """The mask Bert.forward hands to every layer: (B, 1, 1, T), True at real tokens."""
    return keep.bool()[:, None, None, :]


# ----------------------------------------------------------------------------- attention

def test_attention_matches_softmax_qk_v_by_hand():
    attn = randomize(SelfAttention(tiny_config(), n_heads=4))
    x, keep = inputs()
    with torch.no_grad():
        assert relative_error(attn(x, None), attention_by_hand(attn, x)) <= PART
        assert relative_error(attn(x, mask_of(keep)), attention_by_hand(attn, x, keep)) <= PART


def test_attention_ignores_padded_keys():
    attn = randomize(SelfAttention(tiny_config(), n_heads=4))
    x, keep = inputs()
    changed = x.clone()
    changed[1, 3:] = 100.0  # whatever sits at the padded positions
    with torch.no_grad():
        a, b = attn(x, mask_of(keep)), attn(changed, mask_of(keep))
    assert relative_error(a[1, :3], b[1, :3]) <= PART
    assert relative_error(a[1, 3:], b[1, 3:]) > 1e-2  # padded queries see themselves change


def test_attention_scales_each_head_by_its_coefficient():
    attn = randomize(SelfAttention(tiny_config(), n_heads=4))
    x, keep = inputs()
    coef = torch.tensor([1.5, 0.0, -0.7, 0.2])
    attn.head_coef = nn.Parameter(coef.clone())
    with torch.no_grad():
        assert relative_error(attn(x, mask_of(keep)), attention_by_hand(attn, x, keep, coef)) <= PART
    attn.head_coef = None
    with torch.no_grad():
        assert relative_error(attn(x, mask_of(keep)), attention_by_hand(attn, x, keep, coef)) > 1e-2


def test_attention_with_fewer_heads_than_the_full_model():
    attn = randomize(SelfAttention(tiny_config(), n_heads=2))  # a pruned layer: head_dim stays 32 / 4
    assert attn.query.weight.shape == (16, 32) and attn.out.weight.shape == (32, 16)
    x, keep = inputs()
    with torch.no_grad():
        assert relative_error(attn(x, mask_of(keep)), attention_by_hand(attn, x, keep)) <= PART


def test_attention_with_query_rows_is_the_whole_attention_at_those_rows():
    """Queries from some rows only (BertMLM's last layer): keys and values still come
    from every position, so each row's output is what attention over all rows gives it."""
    attn = randomize(SelfAttention(tiny_config(), n_heads=4))
    x, keep = inputs()
    rows = x[:, [2, 0, 5]]
    with torch.no_grad():
        expected = attention_by_hand(attn, x, keep)[:, [2, 0, 5]]
        assert relative_error(attn(x, mask_of(keep), rows), expected) <= PART


def test_attention_coefficient_gets_a_gradient():
    attn = randomize(SelfAttention(tiny_config(), n_heads=4))
    attn.head_coef = nn.Parameter(torch.ones(4))
    x, keep = inputs()
    attn(x, mask_of(keep)).pow(2).sum().backward()
    assert attn.head_coef.grad.shape == (4,) and (attn.head_coef.grad != 0).all()


def test_attention_written_out_gives_sdpas_outputs_and_gradients():
    """set_attention(plain=True), the form bf16 on a CPU runs fastest: with padding, a head
    coefficient and query rows, the same outputs and gradients as SDPA; in bf16 close to them."""
    x, keep = inputs()
    outputs, grads = {}, {}  # grads: parameter name -> gradient
    for plain in (False, True):
        attn = randomize(SelfAttention(tiny_config(), n_heads=4))
        attn.head_coef = nn.Parameter(torch.tensor([1.5, 0.3, -0.7, 0.2]))
        set_attention(attn, plain)
        assert attn.plain == plain
        outputs[plain] = attn(x, mask_of(keep), x[:, [2, 0, 5]])
        outputs[plain].pow(2).sum().backward()
        grads[plain] = {name: p.grad for name, p in attn.named_parameters()}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs[plain, "bf16"] = attn(x, mask_of(keep)).float()
    expected = attention_by_hand(attn, x, keep, attn.head_coef.detach())[:, [2, 0, 5]]
    assert relative_error(outputs[True], expected) <= PART and relative_error(outputs[False], expected) <= PART
    # backward runs the forward's sums again and sums over the 14 positions: twice PART's terms
    for name, a in grads[False].items():
        assert relative_error(grads[True][name], a, gradient_scale(grads[False], name)) <= 2 * PART, name
    # bf16: where SDPA keeps the scores and probabilities in fp32, the written-out form rounds them to
    # bf16, and both round the context and the output: 4 bf16 roundings
    assert relative_error(outputs[True, "bf16"], outputs[False, "bf16"]) <= 4 * BF16_EPS


# ----------------------------------------------------------------------------- feed-forward

def test_feed_forward_matches_up_gelu_down_by_hand():
    ffn = randomize(FeedForward(tiny_config(), n_neurons=48))
    x, _ = inputs()
    with torch.no_grad():
        assert relative_error(ffn(x), feed_forward_by_hand(ffn, x)) <= PART


def test_feed_forward_scales_each_neuron_by_its_coefficient():
    ffn = randomize(FeedForward(tiny_config(), n_neurons=13))  # a pruned width
    x, _ = inputs()
    coef = torch.linspace(-1, 2, 13)
    ffn.ffn_coef = nn.Parameter(coef.clone())
    with torch.no_grad():
        assert relative_error(ffn(x), feed_forward_by_hand(ffn, x, coef)) <= PART
        assert relative_error(ffn(x), feed_forward_by_hand(ffn, x)) > 1e-2


# ----------------------------------------------------------------------------- add & norm (post-LN)

def test_add_norm_layer_is_post_ln_by_hand():
    """LN(x + Attention(x)), then LN(a + FFN(a)): the original BERT's post-LN layer."""
    layer = randomize(Layer(tiny_config(), 0))
    x, keep = inputs()
    with torch.no_grad():
        a = layer_norm(x + attention_by_hand(layer.attn, x, keep), layer.attn_norm)
        expected = layer_norm(a + feed_forward_by_hand(layer.ffn, a), layer.ffn_norm)
        assert relative_error(layer(x, mask_of(keep)), expected) <= LAYER


def test_add_norm_layer_with_coefficients_by_hand():
    layer = randomize(Layer(tiny_config(heads_per_layer=[3, 4, 4], ffn_per_layer=[9, 48, 48]), 0))
    head_coef, ffn_coef = torch.tensor([0.5, 2.0, -1.0]), torch.linspace(0, 1, 9)
    layer.attn.head_coef, layer.ffn.ffn_coef = nn.Parameter(head_coef.clone()), nn.Parameter(ffn_coef.clone())
    x, keep = inputs()
    with torch.no_grad():
        a = layer_norm(x + attention_by_hand(layer.attn, x, keep, head_coef), layer.attn_norm)
        expected = layer_norm(a + feed_forward_by_hand(layer.ffn, a, ffn_coef), layer.ffn_norm)
        assert relative_error(layer(x, mask_of(keep)), expected) <= LAYER


def test_add_norm_layer_at_positions_is_the_whole_layer_there():
    layer = randomize(Layer(tiny_config(), 0))
    layer.attn.head_coef, layer.ffn.ffn_coef = nn.Parameter(torch.linspace(-1, 1, 4)), nn.Parameter(torch.rand(48))
    x, keep = inputs()
    positions = torch.tensor([[6, 1], [0, 2]])  # (B, P), in any order
    with torch.no_grad():
        expected = layer(x, mask_of(keep)).gather(1, positions[..., None].expand(-1, -1, 32))
        assert relative_error(layer(x, mask_of(keep), positions), expected) <= LAYER


# ----------------------------------------------------------------------------- embeddings

def test_embeddings_sum_word_position_token_type_then_norm():
    emb = randomize(Embeddings(tiny_config()))
    g = torch.Generator().manual_seed(2)
    ids, types = torch.randint(0, 101, (2, 7), generator=g), torch.randint(0, 2, (2, 7), generator=g)
    with torch.no_grad():
        x = emb.word.weight[ids] + emb.position.weight[torch.arange(7)] + emb.token_type.weight[types]
        assert relative_error(emb(ids, types), layer_norm(x, emb.norm)) <= PART


def test_embeddings_position_depends_on_place_in_sequence():
    emb = randomize(Embeddings(tiny_config()))
    ids = torch.tensor([[9, 9, 9]])
    with torch.no_grad():
        out = emb(ids, torch.zeros_like(ids))
    assert relative_error(out[0, 0], out[0, 1]) > 1e-3  # same token, other position


# ----------------------------------------------------------------------------- the encoder

def test_encoder_stacks_layers_by_hand():
    torch.manual_seed(0)
    model = randomize(Bert(tiny_config()))
    x_ids = torch.tensor([[2, 17, 45, 3, 60, 3, 0], [2, 88, 3, 0, 0, 0, 0]])
    keep, types = (x_ids != 0).long(), torch.tensor([[0, 0, 0, 0, 1, 1, 0]] * 2)
    with torch.no_grad():
        e = model.embeddings
        x = layer_norm(e.word.weight[x_ids] + e.position.weight[:7] + e.token_type.weight[types], e.norm)
        for layer in model.layers:
            a = layer_norm(x + attention_by_hand(layer.attn, x, keep), layer.attn_norm)
            x = layer_norm(a + feed_forward_by_hand(layer.ffn, a), layer.ffn_norm)
        assert relative_error(model(x_ids, types, keep), x) <= MODEL


def test_padding_does_not_change_real_tokens():
    torch.manual_seed(0)
    model = Bert(tiny_config()).eval()
    ids = torch.randint(5, 101, (1, 7))
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], 1)
    with torch.no_grad():
        assert relative_error(model(ids), model(padded, attention_mask=mask)[:, :7]) <= MODEL


def test_per_layer_sizes_give_each_layer_its_shapes():
    config = tiny_config(heads_per_layer=[4, 1, 3], ffn_per_layer=[48, 5, 17])
    model = Bert(config)
    for layer, heads, width in zip(model.layers, [4, 1, 3], [48, 5, 17], strict=True):
        assert layer.attn.n_heads == heads and layer.attn.head_dim == 8
        for proj in (layer.attn.query, layer.attn.key, layer.attn.value):
            assert proj.weight.shape == (heads * 8, 32) and proj.bias.shape == (heads * 8,)
        assert layer.attn.out.weight.shape == (32, heads * 8)
        assert layer.ffn.up.weight.shape == (width, 32) and layer.ffn.down.weight.shape == (32, width)
    assert model(torch.randint(5, 101, (2, 6))).shape == (2, 6, 32)
    with pytest.raises(AssertionError):
        tiny_config(heads_per_layer=[4, 4])  # one size per layer


def test_init_weights_follows_bert():
    torch.manual_seed(0)
    model = init_weights(randomize(BertMLM(tiny_config(vocab_size=2000, hidden_size=64))), std=0.02)
    word = model.bert.embeddings.word.weight
    assert (word[0] == 0).all()  # the [PAD] row (pad_token_id 0)
    assert abs(word[1:].std().item() - 0.02) < 0.001 and abs(word[1:].mean().item()) < 0.001
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            assert (m.weight == 1).all() and (m.bias == 0).all()
        if isinstance(m, nn.Linear):
            assert (m.bias == 0).all() and abs(m.weight.std().item() - 0.02) < 0.005


def test_config_from_dict_keeps_known_fields():
    d = {k: v for k, v in tiny_config().to_dict().items() if k != "num_labels"}
    d |= {"architectures": ["BertForMaskedLM"], "id2label": {"0": "a", "1": "b", "2": "c"}}  # a reference config
    config = BertConfig.from_dict(d)
    assert config.num_labels == 3 and config.hidden_size == 32 and config.head_dim == 8
    assert config.to_dict()["model_type"] == "bert" and "heads_per_layer" not in config.to_dict()
    pruned = tiny_config(heads_per_layer=[4, 1, 3], ffn_per_layer=[48, 5, 17])
    assert BertConfig.from_dict(pruned.to_dict()) == pruned
    assert [pruned.heads(i) for i in range(3)] == [4, 1, 3] and [pruned.ffn(i) for i in range(3)] == [48, 5, 17]


# ----------------------------------------------------------------------------- frozen numbers

FROZEN_IDS = torch.tensor([[2, 17, 45, 3, 60, 3, 0, 0], [2, 88, 91, 7, 3, 12, 30, 3]])
FROZEN_TYPES = torch.tensor([[0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1]])
# printed once by the code as it was when these tests were written (torch 2.13, CPU)
FROZEN_H00 = [-0.619251, -0.924735, 1.939571, 0.118835, 0.697411, -0.794117]  # h[0, 0, :6]
FROZEN_H05 = [-0.161968, -0.007454, 0.538684, 1.234743, 0.398027, -0.833239]  # h[0, 5, :6]
FROZEN_H17 = [1.028208, -0.119644, 1.248303, 1.144169, 0.269595, -0.310779]  # h[1, 7, :6]
FROZEN_LOGITS = [0.03285, -0.022401, 0.212971, 0.034694]  # MLM logits[1, 1, 5:9]
FROZEN_LOSS = 4.61544  # near ln(101) = 4.6151, as a fresh model's loss should be


def test_frozen_hidden_states_of_a_seeded_model():
    """torch.manual_seed(0) then Bert(tiny_config()): initialisation order and forward pinned."""
    torch.manual_seed(0)
    model = Bert(tiny_config()).eval()
    with torch.no_grad():
        h = model(FROZEN_IDS, FROZEN_TYPES, (FROZEN_IDS != 0).long())
    expected = {(0, 0): FROZEN_H00, (0, 5): FROZEN_H05, (1, 7): FROZEN_H17}
    for (b, t), values in expected.items():
        assert relative_error(h[b, t, :6], torch.tensor(values)) <= MODEL, (b, t, h[b, t, :6].tolist())


def test_frozen_mlm_loss_of_a_seeded_model():
    torch.manual_seed(0)
    model = BertMLM(tiny_config()).eval()
    positions, labels = torch.tensor([[1, 4], [2, 6]]), torch.tensor([[17, 60], [91, 30]])
    with torch.no_grad():
        logits, loss = model(FROZEN_IDS, FROZEN_TYPES, (FROZEN_IDS != 0).long(), mlm_positions=positions,
                             mlm_labels=labels)
    assert relative_error(logits[1, 1, 5:9], torch.tensor(FROZEN_LOGITS)) <= MODEL, logits[1, 1, 5:9].tolist()
    assert relative_error(loss, FROZEN_LOSS) <= MODEL
