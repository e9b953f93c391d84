"""model.py, part by part: each module against the same computation written out by hand.

A course can blank out one function of model.py and grade it with `-k`:

    python -m pytest tests/test_model.py -k attention      # SelfAttention.forward (+ head coefficients, query rows)
    python -m pytest tests/test_model.py -k feed_forward   # FeedForward.forward (+ FFN coefficients)
    python -m pytest tests/test_model.py -k add_norm       # Layer.forward (post-LN; at positions)
    python -m pytest tests/test_model.py -k embeddings     # Embeddings.forward
    python -m pytest tests/test_model.py -k encoder        # Bert.forward
    python -m pytest tests/test_model.py -k init_weights   # init_weights
    python -m pytest tests/test_model.py -k mlm_head       # BertMLM.forward (sparse head, loss)
    python -m pytest tests/test_model.py -k tied_decoder   # MLMHead.forward
    python -m pytest tests/test_model.py -k "classifier or qa_head"  # BertClassifier / BertQA.forward
    python -m pytest tests/test_model.py -k frozen         # all of it, against numbers printed once

Sizes are tiny and seeds fixed; the hand-written references use plain tensor algebra only
(no F.scaled_dot_product_attention, no nn.LayerNorm), and agree up to fp32 rounding: relative to
the tensor's magnitude, by as many roundings as the computation sums terms (PART, LAYER, MODEL
below), so on every CPU's kernels, while an error of 1e-3 in a coefficient still shows. The frozen
numbers at the end were printed once by this code; they catch a change in the order of
initialisation or in the forward that the part-by-part tests let through.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import BF16_EPS, FP32_EPS, TINY_MODEL, relative_error
from model import (Bert, BertClassifier, BertConfig, BertMLM, BertQA, ChunkedCrossEntropy, Embeddings, FeedForward,
                   Layer, SelfAttention, init_weights, mlm_loss, set_attention)

# Tolerances relative to the largest value compared (helpers.relative_error), in fp32 roundings: about
# one per term along the longest chain of sums. tiny_config sums 32 terms in a projection and in a
# LayerNorm statistic, 8 in a score, 7 over the keys and 48 in the FFN's down projection.
PART = 100 * FP32_EPS  # attention 32 + 8 + 7 + 7 + 32; the FFN 32 + 48; a head and its loss: ~90 terms
LAYER = 300 * FP32_EPS  # attention, FFN and two LayerNorms (2 x 2 x 32): ~300 terms
MODEL = TINY_MODEL  # the embeddings' LayerNorm, 3 layers and a head: ~1000 terms, 3 sqrt(1000) roundings


def tiny_config(**kw):
    base = dict(vocab_size=101, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                intermediate_size=48, max_position_embeddings=64)
    return BertConfig(**{**base, **kw})


def randomize(module: nn.Module, seed: int = 0, std: float = 0.3) -> nn.Module:
    """Every parameter drawn afresh, LayerNorm scales and biases included, so that a part
    that forgets a bias or a LayerNorm's affine step cannot pass; eval() turns dropout off."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module.eval()


def inputs(seed=1, B=2, T=7, hidden=32):
    """Hidden states (B, T, hidden) and a padding mask: the second sequence has 3 real tokens."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, hidden, generator=g)
    keep = torch.ones(B, T, dtype=torch.long)
    keep[1, 3:] = 0
    return x, keep


# ----------------------------------------------------------------------------- by hand

def layer_norm(x, norm: nn.LayerNorm):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # the biased variance, as LayerNorm uses
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))  # the exact (erf) GELU of the original BERT


def linear(x, lin: nn.Linear, rows=slice(None)):
    return x @ lin.weight[rows].T + lin.bias[rows]


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


def gradient_scale(grads: dict, name: str):
    """The magnitude the rounding of gradient `name` scales with (relative_error's scale): its own
    (None), but for a key bias. That one adds q . b_k to all of a query's scores, which softmax
    ignores: its gradient is 0 in exact arithmetic, and what is computed is the rounding of terms
    the size of the key weights' gradient."""
    return grads[name.replace("key.bias", "key.weight")].abs().max() if name.endswith("key.bias") else None


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


@pytest.mark.parametrize("upstream", [1.0, 0.3])
def test_chunked_cross_entropy_is_cross_entropy_in_fp32(upstream):
    """bf16 logits on a CPU: the loss in fp32 and the logits' gradient as F.cross_entropy over the
    fp32 logits gives them (rounded to bf16), over several row blocks, -100 rows counting nothing."""
    g = torch.Generator().manual_seed(0)
    rows = 2 * ChunkedCrossEntropy.ROWS + 5  # two whole blocks and a part
    logits = (3 * torch.randn(rows, 97, generator=g)).bfloat16().requires_grad_()
    labels = torch.randint(0, 97, (rows,), generator=g)
    labels[::4] = -100
    loss = mlm_loss(logits, labels)
    (upstream * loss).backward()
    reference = logits.detach().float().requires_grad_()
    expected = F.cross_entropy(reference, labels, ignore_index=-100)
    (upstream * expected).backward()
    assert loss.dtype == torch.float32 and relative_error(loss, expected) <= PART  # 97 logits, 51 rows
    assert logits.grad.dtype == torch.bfloat16
    # each entry fp32's, rounded to bf16; for an upstream gradient other than 1, the upstream and the
    # product are rounded too: 3 roundings of half a bf16 step at most, relative, entry by entry
    assert torch.allclose(logits.grad.float(), reference.grad, rtol=2 * BF16_EPS, atol=0)
    assert (logits.grad[::4] == 0).all()


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


# ----------------------------------------------------------------------------- MLM head

def mlm_batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 101, (2, 10), generator=g)
    positions = torch.tensor([[1, 4, 0], [2, 3, 8]])  # P = 3 slots per sequence
    labels = torch.tensor([[7, 9, -100], [11, 12, 13]])  # -100: an empty slot
    return ids, positions, labels


def test_mlm_head_sparse_equals_dense_at_masked_positions():
    model = randomize(BertMLM(tiny_config()))
    ids, positions, labels = mlm_batch()
    with torch.no_grad():
        sparse, loss = model(ids, mlm_positions=positions, mlm_labels=labels)
        dense, _ = model(ids)
    assert sparse.shape == (2, 3, 101) and dense.shape == (2, 10, 101)
    assert relative_error(sparse, dense.gather(1, positions[..., None].expand(-1, -1, 101))) <= MODEL
    full = torch.full((2, 10), -100)
    full[0, 1], full[0, 4], full[1, 2], full[1, 3], full[1, 8] = 7, 9, 11, 12, 13
    with torch.no_grad():
        _, dense_loss = model(ids, mlm_labels=full)
    assert relative_error(loss, dense_loss) <= MODEL


def test_mlm_head_sparse_gives_the_dense_models_loss_and_gradients():
    """The sparse head runs the last layer at the predicted positions only: with padding
    and slimming coefficients, the loss and every parameter's gradient stay those of the
    model that computes every position and keeps the predicted ones."""
    model = randomize(BertMLM(tiny_config()))
    for i, layer in enumerate(model.bert.layers):
        layer.attn.head_coef = nn.Parameter(torch.linspace(-1, 1, 4) + i)
        layer.ffn.ffn_coef = nn.Parameter(torch.linspace(0.5, 1.5, 48))
    ids, positions, labels = mlm_batch()
    attention_mask = torch.ones_like(ids)
    attention_mask[1, 9:] = 0  # the second sequence has 9 real tokens
    _, loss = model(ids, attention_mask=attention_mask, mlm_positions=positions, mlm_labels=labels)
    sparse = torch.autograd.grad(loss, list(model.parameters()))
    dense, _ = model(ids, attention_mask=attention_mask)
    at = dense.gather(1, positions[..., None].expand(-1, -1, 101))
    dense_loss = F.cross_entropy(at.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert relative_error(loss, dense_loss) <= MODEL
    names = [name for name, _ in model.named_parameters()]
    dense_grads = dict(zip(names, torch.autograd.grad(dense_loss, list(model.parameters())), strict=True))
    for name, a in zip(names, sparse, strict=True):  # backward: twice the forward's sums
        assert relative_error(a, dense_grads[name], gradient_scale(dense_grads, name)) <= 2 * MODEL, name


def test_mlm_head_loss_is_cross_entropy_by_hand():
    model = randomize(BertMLM(tiny_config()))
    ids, positions, labels = mlm_batch()
    with torch.no_grad():
        logits, loss = model(ids, mlm_positions=positions, mlm_labels=labels)
    terms = [torch.logsumexp(logits[b, p], -1) - logits[b, p, labels[b, p]]  # -log softmax at the label
             for b in range(2) for p in range(3) if labels[b, p] != -100]
    assert len(terms) == 5
    assert relative_error(loss, torch.stack(terms).mean()) <= PART


def test_tied_decoder_logits_are_the_input_matrix_times_transformed_states():
    """The decoder is the word-embedding matrix itself (BERT; Press & Wolf, 2017) plus a
    bias per token, after dense + GELU + LayerNorm: no second vocab x hidden matrix."""
    model = randomize(BertMLM(tiny_config()))
    ids, positions, _ = mlm_batch()
    with torch.no_grad():
        h = model.bert(ids).gather(1, positions[..., None].expand(-1, -1, 32))
        t = layer_norm(gelu(linear(h, model.mlm.transform)), model.mlm.norm)
        expected = F.linear(t, model.bert.embeddings.word.weight) + model.mlm.bias
        assert relative_error(model(ids, mlm_positions=positions)[0], expected) <= LAYER
    assert [n for n, p in model.named_parameters() if p.shape == (101, 32)] == ["bert.embeddings.word.weight"]


# ----------------------------------------------------------------------------- fine-tuning heads

def test_classifier_head_pools_cls_by_hand():
    model = randomize(BertClassifier(tiny_config(num_labels=3)))
    ids = torch.randint(5, 101, (4, 6), generator=torch.Generator().manual_seed(4))
    labels = torch.tensor([0, 2, 1, 2])
    with torch.no_grad():
        logits, loss = model(ids, labels=labels)
        pooled = torch.tanh(linear(model.bert(ids)[:, 0], model.pooler))
        assert relative_error(logits, linear(pooled, model.classifier)) <= PART
    nll = torch.logsumexp(logits, -1) - logits[torch.arange(4), labels]
    assert relative_error(loss, nll.mean()) <= PART


def test_classifier_head_regression_is_mean_squared_error():
    model = randomize(BertClassifier(tiny_config(num_labels=1)))
    ids = torch.randint(5, 101, (3, 6), generator=torch.Generator().manual_seed(5))
    target = torch.tensor([0.5, 1.0, 4.0])
    with torch.no_grad():
        logits, loss = model(ids, labels=target)
    assert logits.shape == (3, 1)
    assert relative_error(loss, ((logits[:, 0] - target) ** 2).mean()) <= PART


def test_qa_head_start_end_logits_and_loss_by_hand():
    model = randomize(BertQA(tiny_config()))
    ids = torch.randint(5, 101, (2, 12), generator=torch.Generator().manual_seed(6))
    starts, ends = torch.tensor([1, 2]), torch.tensor([3, 2])
    with torch.no_grad():
        (start, end), loss = model(ids, start_positions=starts, end_positions=ends)
        both = linear(model.bert(ids), model.qa)  # (B, T, 2)
    assert start.shape == end.shape == (2, 12)
    assert relative_error(start, both[..., 0]) <= PART and relative_error(end, both[..., 1]) <= PART
    nll = lambda x, y: (torch.logsumexp(x, -1) - x[torch.arange(2), y]).mean()  # noqa: E731
    assert relative_error(loss, (nll(start, starts) + nll(end, ends)) / 2) <= PART


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
