"""Checkpoints the ecosystem loads: a full-size (unpruned) folder written by save_pretrained
loads in Hugging Face `transformers` and gives our outputs. `transformers` is a test-only
tool here (pip install transformers), never a requirement: without it these tests skip.
Tiny random models, nothing downloaded. (A pruned folder has per-layer sizes, which
transformers' BertConfig cannot express, so it loads only with this project's load_pretrained.)"""
import pytest
import torch

from checkpoint import save_pretrained
from helpers import TINY_MODEL, relative_error
from model import BertClassifier, BertConfig, BertMLM

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # importing transformers' BERT takes seconds


def tiny_config(**kw):
    base = dict(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=48, max_position_embeddings=64, num_labels=3)
    return BertConfig(**{**base, **kw})


def inputs(B=3, T=11):
    g = torch.Generator().manual_seed(0)
    ids, types = torch.randint(5, 101, (B, T), generator=g), torch.randint(0, 2, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 7:], mask[2, 4:] = 0, 0  # padding
    return ids, types, mask


def trained_a_little(model):
    """Random weights everywhere, biases and LayerNorms too (fresh ones are zeros and ones, which
    would hide a bias or LayerNorm that loads under the wrong name)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def load_hf(cls, folder, may_miss=()):
    """transformers' `cls` from our folder; every weight it needs must be there (but `may_miss`)."""
    model, info = getattr(transformers, cls).from_pretrained(str(folder), attn_implementation="eager",
                                                             output_loading_info=True)
    assert set(info["missing_keys"]) <= set(may_miss) and not info.get("mismatched_keys")
    return model.eval()


@pytest.mark.parametrize("ours, theirs", [("bert", "BertModel"), ("mlm", "BertForMaskedLM")])
def test_mlm_checkpoint_loads_in_transformers_with_equal_outputs(tmp_path, ours, theirs):
    model = trained_a_little(BertMLM(tiny_config()))
    save_pretrained(model, str(tmp_path))
    hf = load_hf(theirs, tmp_path, may_miss={"pooler.dense.weight", "pooler.dense.bias"})  # BertMLM has none
    ids, types, mask = inputs()
    with torch.no_grad():
        out = hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
        if ours == "bert":
            expected, got = model.bert(ids, types, mask), out.last_hidden_state  # (B, T, hidden)
        else:
            expected, got = model(ids, types, mask)[0], out.logits  # (B, T, vocab), every position
    assert got.shape == expected.shape
    assert relative_error(got, expected) <= TINY_MODEL  # two implementations: the same sums in other orders


def test_fine_tuned_classifier_loads_as_bert_for_sequence_classification(tmp_path):
    model = trained_a_little(BertClassifier(tiny_config(num_labels=3)))
    save_pretrained(model, str(tmp_path))
    hf = load_hf("BertForSequenceClassification", tmp_path)
    assert hf.config.num_labels == 3
    ids, types, mask = inputs()
    with torch.no_grad():
        expected, got = model(ids, types, mask)[0], hf(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
    assert got.shape == (3, 3) and relative_error(got, expected) <= TINY_MODEL
