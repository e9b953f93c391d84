"""model.py: a from-scratch BERT that loads real checkpoints with the reference outputs.

Golden values (tests/golden_minilm.json) came from `transformers` 5.24.0 `BertModel` on
all-MiniLM-L6-v2, run once in a scratch virtualenv (transformers is never a dependency):
    tok = BertTokenizerFast.from_pretrained(folder); enc = tok(sentences, padding=True)
    ref = BertModel.from_pretrained(folder, add_pooling_layer=False)(**enc).last_hidden_state
Our full hidden states matched those to 1.9e-6 (max abs, real tokens); the file keeps
the first 8 features of every token plus each token's sum and max |x| over all 384.
"""
import json
import os

import pytest
import torch
from tokenizers import BertWordPieceTokenizer

from model import (Bert, BertClassifier, BertConfig, BertMLM, BertQA, from_reference_name,
                   load_pretrained, save_pretrained, to_reference_name, write_safetensors)

HERE = os.path.dirname(os.path.abspath(__file__))


def tiny_config(**kw):
    base = dict(vocab_size=101, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                intermediate_size=48, max_position_embeddings=64)
    return BertConfig(**{**base, **kw})


def test_minilm_hidden_states_match_reference(minilm_dir):
    g = json.load(open(os.path.join(HERE, "golden_minilm.json")))
    model = load_pretrained(Bert, minilm_dir).eval()
    with torch.no_grad():
        h = model(torch.tensor(g["input_ids"]), torch.tensor(g["token_type_ids"]), torch.tensor(g["attention_mask"]))
    real = torch.tensor(g["attention_mask"]).bool()
    assert (h[..., :8] - torch.tensor(g["hidden_first8"]))[real].abs().max() <= 1e-5
    assert (h.sum(-1) - torch.tensor(g["hidden_sum"]))[real].abs().max() <= 1e-4  # a sum of 384 values
    assert (h.abs().amax(-1) - torch.tensor(g["hidden_absmax"]))[real].abs().max() <= 1e-5


def test_minilm_paraphrases_are_closer_than_unrelated_sentences(minilm_dir):
    tok = BertWordPieceTokenizer(os.path.join(minilm_dir, "vocab.txt"), lowercase=True)
    tok.enable_padding(pad_id=0)
    sentences = ["A man is playing a guitar.", "Someone is playing an instrument.",
                 "The stock market fell sharply today."]
    enc = tok.encode_batch(sentences)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    model = load_pretrained(Bert, minilm_dir).eval()
    with torch.no_grad():
        h = model(ids, attention_mask=mask)
    emb = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # mean pooling, as the model was trained
    emb = torch.nn.functional.normalize(emb, dim=-1)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2
    assert emb[0] @ emb[1] > emb[1] @ emb[2] + 0.2


def test_padding_does_not_change_real_tokens():
    torch.manual_seed(0)
    model = Bert(tiny_config()).eval()
    ids = torch.randint(5, 101, (1, 7))
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], 1)
    with torch.no_grad():
        assert torch.allclose(model(ids), model(padded, attention_mask=mask)[:, :7], atol=1e-5)


def test_sparse_mlm_head_equals_dense_head_at_masked_positions():
    torch.manual_seed(0)
    model = BertMLM(tiny_config()).eval()
    ids = torch.randint(5, 101, (2, 10))
    positions = torch.tensor([[1, 4, 0], [2, 3, 8]])
    labels = torch.tensor([[7, 9, -100], [11, 12, 13]])
    with torch.no_grad():
        sparse, loss = model(ids, mlm_positions=positions, mlm_labels=labels)
        dense, _ = model(ids)
    assert sparse.shape == (2, 3, 101) and dense.shape == (2, 10, 101)
    assert torch.allclose(sparse, dense.gather(1, positions[..., None].expand(-1, -1, 101)), atol=1e-6)
    full = torch.full((2, 10), -100)
    full[0, 1], full[0, 4], full[1, 2], full[1, 3], full[1, 8] = 7, 9, 11, 12, 13
    _, dense_loss = model(ids, mlm_labels=full)
    assert torch.allclose(loss, dense_loss, atol=1e-6)


def test_decoder_is_tied_to_word_embeddings():
    model = BertMLM(tiny_config())
    ids = torch.randint(5, 101, (1, 6))
    _, loss = model(ids, mlm_labels=ids)
    loss.backward()
    assert model.bert.embeddings.word.weight.grad is not None
    assert not any("decoder" in n for n, _ in model.named_parameters())


def test_reference_names_round_trip():
    for cls in (BertMLM, BertClassifier, BertQA):
        for name in cls(tiny_config()).state_dict():
            ref = to_reference_name(name)
            assert from_reference_name(ref) == name
            assert ref.startswith(("bert.encoder.layer.", "bert.embeddings.", "bert.pooler.dense.",
                                   "cls.predictions.", "classifier.", "qa_outputs."))


@pytest.mark.parametrize("cls", [BertMLM, BertClassifier, BertQA])
def test_save_and_reload_per_layer_sizes(tmp_path, cls):
    torch.manual_seed(0)
    config = tiny_config(heads_per_layer=[4, 1, 3], ffn_per_layer=[48, 5, 17], num_labels=3)
    model = cls(config).eval()
    save_pretrained(model, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]  # no temporary file left
    saved = json.load(open(tmp_path / "config.json"))
    assert saved["heads_per_layer"] == [4, 1, 3] and saved["ffn_per_layer"] == [48, 5, 17]
    again = load_pretrained(cls, tmp_path).eval()
    ids = torch.randint(5, 101, (2, 9))
    with torch.no_grad():
        a, b = model(ids)[0], again(ids)[0]
    for x, y in zip(a if isinstance(a, tuple) else [a], b if isinstance(b, tuple) else [b]):
        assert torch.equal(x, y)


def test_loads_old_pytorch_model_bin_with_gamma_beta_names(tmp_path):
    torch.manual_seed(0)
    model = BertMLM(tiny_config()).eval()
    state = {to_reference_name(k).replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "pytorch_model.bin")
    json.dump(model.config.to_dict(), open(tmp_path / "config.json", "w"))
    again = load_pretrained(BertMLM, tmp_path).eval()
    ids = torch.randint(5, 101, (1, 8))
    with torch.no_grad():
        assert torch.equal(model(ids)[0], again(ids)[0])


def test_missing_head_is_initialised_and_reported(tmp_path, capsys):
    save_pretrained(BertMLM(tiny_config()), tmp_path)
    model = load_pretrained(BertClassifier, tmp_path, num_labels=1)
    err = capsys.readouterr().err
    assert "classifier" in err and "pooler" in err and "initialised" in err
    logits, loss = model(torch.randint(5, 101, (3, 6)), labels=torch.tensor([0.5, 1.0, 2.0]))
    assert logits.shape == (3, 1) and loss.ndim == 0  # regression head (STS-B)


def test_qa_head_loss_and_shapes():
    model = BertQA(tiny_config())
    (start, end), loss = model(torch.randint(5, 101, (2, 12)), start_positions=torch.tensor([1, 2]),
                               end_positions=torch.tensor([3, 2]))
    assert start.shape == end.shape == (2, 12) and loss.item() > 0


# ----------------------------------------------------------------------------- bad input

def one_line_error(fn, *must_contain):
    with pytest.raises(ValueError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for s in must_contain:
        assert str(s) in msg, msg
    return msg


def test_folder_without_weights_is_one_clear_line(tmp_path):
    json.dump(tiny_config().to_dict(), open(tmp_path / "config.json", "w"))
    one_line_error(lambda: load_pretrained(BertMLM, tmp_path), tmp_path, "model.safetensors")
    one_line_error(lambda: load_pretrained(BertMLM, tmp_path / "nope"), "nope")


def test_missing_config_is_one_clear_line(tmp_path):
    save_pretrained(BertMLM(tiny_config()), tmp_path)
    os.remove(tmp_path / "config.json")
    one_line_error(lambda: load_pretrained(BertMLM, tmp_path), "config.json")


def test_config_not_matching_weights_is_one_clear_line(tmp_path):
    save_pretrained(BertMLM(tiny_config()), tmp_path)
    json.dump(tiny_config(intermediate_size=64).to_dict(), open(tmp_path / "config.json", "w"))
    one_line_error(lambda: load_pretrained(BertMLM, tmp_path), "model.safetensors", "intermediate.dense")


def test_truncated_weights_are_one_clear_line(tmp_path):
    save_pretrained(BertMLM(tiny_config()), tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    one_line_error(lambda: load_pretrained(BertMLM, tmp_path), path, "truncated")
    os.remove(path)
    model = BertMLM(tiny_config())
    torch.save({to_reference_name(k): v for k, v in model.state_dict().items()}, tmp_path / "pytorch_model.bin")
    data = (tmp_path / "pytorch_model.bin").read_bytes()
    (tmp_path / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    one_line_error(lambda: load_pretrained(BertMLM, tmp_path), "pytorch_model.bin", "truncated")


def test_vocab_larger_than_model_is_one_clear_line(tmp_path):
    save_pretrained(BertMLM(tiny_config()), tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(500)) + "\n")
    one_line_error(lambda: load_pretrained(BertMLM, tmp_path), "vocab.txt", "500")


def test_weights_of_another_model_are_rejected(tmp_path):
    write_safetensors({"decoder.layers.0.weight": torch.zeros(3)}, tmp_path / "model.safetensors")
    json.dump(tiny_config().to_dict(), open(tmp_path / "config.json", "w"))
    one_line_error(lambda: load_pretrained(BertMLM, tmp_path), "model.safetensors")
