"""model.py's heads, each against the same computation written out by hand: the MLM head (its sparse
form gives the dense model's logits, loss and gradients; the decoder tied to the word embeddings; the
loss, chunked in bf16) and the fine-tuning heads (classification, regression, question answering).

A course can blank out one of them and grade it with `-k`:

    python -m pytest tests/test_heads.py -k mlm_head       # BertMLM.forward (sparse head, loss)
    python -m pytest tests/test_heads.py -k tied_decoder   # MLMHead.forward
    python -m pytest tests/test_heads.py -k chunked        # ChunkedCrossEntropy (mlm_loss in bf16)
    python -m pytest tests/test_heads.py -k "classifier or qa_head"  # BertClassifier / BertQA.forward

The tolerances count fp32 roundings as tests/test_model.py does (helpers.PART, LAYER, TINY_MODEL).
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import (BF16_EPS, LAYER, PART, TINY_MODEL as MODEL, gelu, gradient_scale, layer_norm, linear, randomize,
                     relative_error, tiny_config)
from model import BertClassifier, BertMLM, BertQA, ChunkedCrossEntropy, mlm_loss


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
