"""checkpoint.py: checkpoint folders in the reference layout, ckpt.pt, atomic writes, and
one-line errors for every kind of bad file.

Golden values (tests/golden_minilm.json) came from `transformers` 5.24.0 `BertModel` on
all-MiniLM-L6-v2, run once in a scratch virtualenv (transformers is never a dependency):
    tok = BertTokenizerFast.from_pretrained(folder); enc = tok(sentences, padding=True)
    ref = BertModel.from_pretrained(folder, add_pooling_layer=False)(**enc).last_hidden_state
Our full hidden states matched those to 1.9e-6 (max abs, real tokens); the file keeps
the first 8 features of every token plus each token's sum and max |x| over all 384.
"""
import json
import os
import socket

import pytest
import torch
from tokenizers import BertWordPieceTokenizer

from checkpoint import (atomic, from_reference_name, load_checkpoint, load_pretrained, read_config, read_json,
                        read_safetensors, remove_stale, save_checkpoint, save_pretrained, temporary,
                        to_reference_name, write_json, write_safetensors)
from helpers import FP32_EPS, relative_error
from model import Bert, BertClassifier, BertConfig, BertMLM, BertQA

HERE = os.path.dirname(os.path.abspath(__file__))


def tiny_config(**kw):
    base = dict(vocab_size=101, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                intermediate_size=48, max_position_embeddings=64)
    return BertConfig(**{**base, **kw})


def outputs(model, ids):
    """The model's logits as a list of tensors (BertQA returns a (start, end) pair)."""
    with torch.no_grad():
        out = model(ids)
    out = out[0] if isinstance(out, tuple) else out
    return list(out) if isinstance(out, tuple) else [out]


# ----------------------------------------------------------------------------- a real BERT

@pytest.mark.slow
def test_minilm_hidden_states_match_reference(minilm_dir):
    g = json.load(open(os.path.join(HERE, "golden_minilm.json")))
    model = load_pretrained(Bert, minilm_dir).eval()
    with torch.no_grad():
        h = model(torch.tensor(g["input_ids"]), torch.tensor(g["token_type_ids"]), torch.tensor(g["attention_mask"]))
    real = torch.tensor(g["attention_mask"]).bool()
    # 6 layers of 384 (FFN 1536) sum some 26,000 terms along the chain: as for helpers.TINY_MODEL,
    # 3 sqrt(26,000) roundings, relative to the largest value
    minilm = 480 * FP32_EPS
    assert relative_error(h[..., :8][real], torch.tensor(g["hidden_first8"])[real]) <= minilm
    sums = h.sum(-1)[real]  # 384 values each: relative to their magnitudes' sum
    assert relative_error(sums, torch.tensor(g["hidden_sum"])[real], h.abs().sum(-1).max()) <= minilm
    assert relative_error(h.abs().amax(-1)[real], torch.tensor(g["hidden_absmax"])[real]) <= minilm


@pytest.mark.slow
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


@pytest.mark.slow
def test_minilm_saved_by_us_keeps_every_reference_tensor(minilm_dir, tmp_path):
    """A classifier built on MiniLM and saved here holds the downloaded tensors (encoder and
    pooler), bit for bit, under the reference names, so the folder loads in the reference code."""
    save_pretrained(load_pretrained(BertClassifier, minilm_dir, verbose=False), tmp_path)
    ours = read_safetensors(tmp_path / "model.safetensors")
    theirs = read_safetensors(os.path.join(minilm_dir, "model.safetensors"))  # a bare BertModel's names
    theirs = {"bert." + k: v for k, v in theirs.items() if k != "embeddings.position_ids"}  # a buffer
    assert sorted(ours) == sorted([*theirs, "classifier.weight", "classifier.bias"])
    for name, t in theirs.items():
        assert torch.equal(ours[name], t), name


# ----------------------------------------------------------------------------- names and round trips

def test_reference_names_round_trip():
    for cls in (BertMLM, BertClassifier, BertQA):
        for name in cls(tiny_config()).state_dict():
            ref = to_reference_name(name)
            assert from_reference_name(ref) == name
            assert ref.startswith(("bert.encoder.layer.", "bert.embeddings.", "bert.pooler.dense.",
                                   "cls.predictions.", "classifier.", "qa_outputs."))


def test_reference_names_of_a_layer_are_the_reference_implementations():
    pairs = {"bert.layers.2.attn.out.weight": "bert.encoder.layer.2.attention.output.dense.weight",
             "bert.layers.2.attn_norm.bias": "bert.encoder.layer.2.attention.output.LayerNorm.bias",
             "bert.layers.0.ffn.up.weight": "bert.encoder.layer.0.intermediate.dense.weight",
             "bert.layers.0.ffn.down.bias": "bert.encoder.layer.0.output.dense.bias",
             "bert.layers.1.ffn_norm.weight": "bert.encoder.layer.1.output.LayerNorm.weight",
             "bert.embeddings.word.weight": "bert.embeddings.word_embeddings.weight",
             "mlm.norm.weight": "cls.predictions.transform.LayerNorm.weight"}
    for ours, ref in pairs.items():
        assert to_reference_name(ours) == ref
    # TF-era LayerNorm names and a bare BertModel's names (no 'bert.' prefix) load too
    assert from_reference_name("encoder.layer.1.output.LayerNorm.gamma") == "bert.layers.1.ffn_norm.weight"
    assert from_reference_name("embeddings.LayerNorm.beta") == "bert.embeddings.norm.bias"


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
    for x, y in zip(outputs(model, ids), outputs(again, ids), strict=True):
        assert torch.equal(x, y)


def test_save_and_reload_bare_encoder(tmp_path):
    torch.manual_seed(0)
    model = Bert(tiny_config()).eval()
    save_pretrained(model, tmp_path)
    assert all(k.startswith("bert.") for k in read_safetensors(tmp_path / "model.safetensors"))
    again = load_pretrained(Bert, tmp_path, verbose=False).eval()
    for name, t in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], t), name


def test_save_pretrained_writes_vocab_and_casing_then_loads_back(tmp_path):
    torch.manual_seed(0)
    vocab = tmp_path / "vocab_src.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat", "sat"]) + "\n")
    model = BertMLM(tiny_config()).eval()
    save_pretrained(model, tmp_path / "ckpt", vocab_path=str(vocab), lowercase=False)
    folder = tmp_path / "ckpt"
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "tokenizer_config.json", "vocab.txt"]
    assert (folder / "vocab.txt").read_bytes() == vocab.read_bytes()
    assert json.load(open(folder / "tokenizer_config.json")) == {"do_lower_case": False}
    assert read_config(folder) == model.config
    again = load_pretrained(BertMLM, folder, verbose=False).eval()
    assert again.state_dict().keys() == model.state_dict().keys()
    for name, t in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], t), name
    save_pretrained(again, folder, vocab_path=str(folder / "vocab.txt"))  # its own vocab: left as it is
    assert (folder / "vocab.txt").read_bytes() == vocab.read_bytes()


def test_load_pretrained_overrides_config_fields(tmp_path):
    save_pretrained(BertMLM(tiny_config()), tmp_path)
    model = load_pretrained(BertClassifier, tmp_path, verbose=False, num_labels=5, hidden_dropout_prob=0.0)
    assert model.classifier.out_features == 5 and model.config.hidden_dropout_prob == 0.0


def test_loads_old_pytorch_model_bin_with_gamma_beta_names(tmp_path):
    torch.manual_seed(0)
    model = BertMLM(tiny_config()).eval()
    state = {to_reference_name(k).replace("LayerNorm.weight", "LayerNorm.gamma")
             .replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "pytorch_model.bin")
    json.dump(model.config.to_dict(), open(tmp_path / "config.json", "w"))
    again = load_pretrained(BertMLM, tmp_path).eval()
    ids = torch.randint(5, 101, (1, 8))
    assert torch.equal(outputs(model, ids)[0], outputs(again, ids)[0])


def test_missing_head_is_initialised_and_reported(tmp_path, capsys):
    save_pretrained(BertMLM(tiny_config()), tmp_path)
    model = load_pretrained(BertClassifier, tmp_path, num_labels=1)
    err = capsys.readouterr().err
    assert "classifier" in err and "pooler" in err and "initialised" in err
    assert "embeddings" not in err and "layers" not in err  # the encoder did load
    logits, loss = model(torch.randint(5, 101, (3, 6)), labels=torch.tensor([0.5, 1.0, 2.0]))
    assert logits.shape == (3, 1) and loss.ndim == 0  # regression head (STS-B)


def test_head_for_another_number_of_labels_is_initialised_afresh(tmp_path, capsys):
    torch.manual_seed(0)
    trained = BertClassifier(tiny_config(num_labels=3))
    save_pretrained(trained, tmp_path)
    model = load_pretrained(BertClassifier, tmp_path, num_labels=2)
    assert "initialised it afresh" in capsys.readouterr().err
    assert model.classifier.out_features == 2
    assert torch.equal(model.pooler.weight, trained.pooler.weight)  # the rest of the checkpoint loaded


def test_safetensors_round_trip_keeps_dtypes_and_shapes(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(6, dtype=torch.int64).view(2, 3),
               "c": torch.randn(5).to(torch.bfloat16), "empty": torch.zeros(0, 7)}
    write_safetensors(tensors, tmp_path / "t.safetensors")
    back = read_safetensors(tmp_path / "t.safetensors")
    assert back.keys() == tensors.keys()
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name


def test_training_checkpoint_round_trip(tmp_path):
    state = {"step": 7, "model": {"w": torch.randn(3, 3)}, "config": {"lr": 1e-3}}
    save_checkpoint(state, tmp_path / "ckpt.pt")
    back = load_checkpoint(tmp_path / "ckpt.pt")
    assert back["step"] == 7 and back["config"] == {"lr": 1e-3} and torch.equal(back["model"]["w"], state["model"]["w"])
    assert os.listdir(tmp_path) == ["ckpt.pt"]


# ----------------------------------------------------------------------------- atomic writes

def test_atomic_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "summary.json"
    write_json({"run": 1}, path)
    with pytest.raises(RuntimeError):
        with atomic(str(path)) as tmp:
            with open(tmp, "w") as f:
                f.write('{"run": 2, "half')
            raise RuntimeError("disk full")
    assert json.load(open(path)) == {"run": 1}
    assert os.listdir(tmp_path) == ["summary.json"]  # the temporary file is gone too
    with pytest.raises(TypeError):  # not JSON-serialisable: fails half-way through json.dump
        write_json({"run": 3, "bad": object()}, path)
    assert json.load(open(path)) == {"run": 1} and os.listdir(tmp_path) == ["summary.json"]
    write_json({"run": 4}, path)
    assert json.load(open(path)) == {"run": 4}


def test_a_write_removes_what_killed_writers_left_and_nothing_else(tmp_path, dead_pid):
    path = str(tmp_path / "ckpt.pt")
    this_host = temporary(path).rsplit("-", 1)[0]  # PATH.tmp-HOST, then -PID
    killed, running = f"{this_host}-{dead_pid}", f"{this_host}-{os.getppid()}"
    elsewhere = f"{path}.tmp-not-{socket.gethostname()}-{dead_pid}"  # another host's process: unknown here
    for p in (killed, running, elsewhere):
        open(p, "w").close()
    write_json({"step": 1}, path)
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in (path, running, elsewhere))
    folder = temporary(str(tmp_path / "corpus")).rsplit("-", 1)[0] + f"-{dead_pid}"  # a folder too
    os.makedirs(os.path.join(folder, "vocab"))
    remove_stale(str(tmp_path / "corpus"))
    assert not os.path.exists(folder)


def test_save_checkpoint_keeps_the_old_checkpoint_when_saving_fails(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"step": 1}, path)
    with pytest.raises(Exception):
        save_checkpoint({"step": 2, "unpicklable": lambda: None}, path)
    assert load_checkpoint(path) == {"step": 1} and os.listdir(tmp_path) == ["ckpt.pt"]


# ----------------------------------------------------------------------------- bad input: one line each

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


@pytest.mark.parametrize("content", [b"\x80\x81\xfe\xff\x00\x01binary", b'"a JSON string"', b"[1, 2, 3]",
                                     b'{"hidden_size": 32', b'{"hidden_size": 30, "num_attention_heads": 4}',
                                     b'{"hidden_act": "swish"}'],
                         ids=["binary", "string", "list", "cut", "bad-heads", "bad-act"])
def test_bad_config_json_is_one_clear_line(tmp_path, content):
    save_pretrained(BertMLM(tiny_config()), tmp_path)
    (tmp_path / "config.json").write_bytes(content)
    msg = one_line_error(lambda: load_pretrained(BertMLM, tmp_path), tmp_path / "config.json")
    assert len(msg) < 200 + len(str(tmp_path))


def test_read_json_says_what_it_expected(tmp_path):
    path = tmp_path / "ticket.json"
    one_line_error(lambda: read_json(path, "ticket"), path, "no such file")
    path.write_text("[1, 2]")
    one_line_error(lambda: read_json(path, "ticket"), path, "ticket", "list")
    path.write_text('{"heads": [1]}')
    assert read_json(path) == {"heads": [1]}


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
    path.write_bytes(b"")
    one_line_error(lambda: load_pretrained(BertMLM, tmp_path), path, "truncated")
    os.remove(path)
    model = BertMLM(tiny_config())
    torch.save({to_reference_name(k): v for k, v in model.state_dict().items()}, tmp_path / "pytorch_model.bin")
    data = (tmp_path / "pytorch_model.bin").read_bytes()
    (tmp_path / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    one_line_error(lambda: load_pretrained(BertMLM, tmp_path), "pytorch_model.bin", "truncated")


@pytest.mark.parametrize("cut", [0.5, 0.0])
def test_truncated_training_checkpoint_is_one_short_line(tmp_path, cut):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"step": 3, "model": BertMLM(tiny_config()).state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    msg = one_line_error(lambda: load_checkpoint(path), path, "truncated")
    assert len(msg) - len(str(path)) < 150, msg  # short: not torch's multi-sentence unpickling advice


def test_binary_vocab_in_a_checkpoint_folder_is_one_clear_line(tmp_path):
    save_pretrained(BertMLM(tiny_config()), tmp_path)
    (tmp_path / "vocab.txt").write_bytes(bytes(range(256)) * 4)
    one_line_error(lambda: load_pretrained(BertMLM, tmp_path), tmp_path / "vocab.txt", "binary")


def test_vocab_larger_than_model_is_one_clear_line(tmp_path):
    save_pretrained(BertMLM(tiny_config()), tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(500)) + "\n")
    one_line_error(lambda: load_pretrained(BertMLM, tmp_path), "vocab.txt", "500")


def test_weights_of_another_model_are_rejected(tmp_path):
    write_safetensors({"decoder.layers.0.weight": torch.zeros(3)}, tmp_path / "model.safetensors")
    json.dump(tiny_config().to_dict(), open(tmp_path / "config.json", "w"))
    one_line_error(lambda: load_pretrained(BertMLM, tmp_path), "model.safetensors", "none of its weights")
