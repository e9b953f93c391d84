"""finetune.py: fine-tuning on GLUE and SQuAD, plainly and the EarlyBERT way.

Data sets are written into tmp_path with test_tasks.py's writers; a tiny random BERT (with a
vocabulary of the words used there) runs the pipelines end to end in a second, and the real
all-MiniLM-L6-v2 learns a small sentiment task plainly and with --earlybert (skipped when not installed).
"""
import json
import os
import random
import subprocess
import sys
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

from data import checkpoint_tokenizer
from finetune import Config, finetune, load_task, parse_args, squad_evaluate
from model import BertClassifier, BertConfig, BertMLM, load_pretrained, save_pretrained
from tasks import GLUE, read_squad, squad_features
from test_tasks import ANSWER, CONTEXT, WORDS, glue_folder, squad_example, write_vocab

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = SimpleNamespace(device=torch.device("cpu"), autocast=nullcontext(), dtype=torch.float32, rank=0, world=1)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random 2-layer BERT checkpoint whose vocabulary holds WORDS (others become [UNK])."""
    folder = write_vocab(tmp_path_factory.mktemp("tiny_bert"))
    torch.manual_seed(0)
    save_pretrained(BertMLM(tiny_config()), folder)
    return folder


def tiny_config(**kw):
    return BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64, **kw)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return checkpoint_tokenizer(tiny_model, pairs=True)[0]


def run(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path / "out"), batch_size=4, max_len=32, max_steps=2, epochs=1, device="cpu")
    return finetune(Config(**{**base, **kw}))


# ----------------------------------------------------------------------------- GLUE

@pytest.mark.parametrize("task", list(GLUE))
def test_each_glue_task_fine_tunes_and_is_scored_with_its_metric(tmp_path, tiny_model, task):
    glue_folder(tmp_path / "data", task)
    results = run(tmp_path, task=task, data=str(tmp_path / "data"), model=tiny_model)
    names = {"cola": {"mcc"}, "mrpc": {"f1", "accuracy"}, "qqp": {"f1", "accuracy"},
             "sts-b": {"pearson", "spearman"}}.get(task, {"accuracy"})
    dev = {"dev_matched", "dev_mismatched"} if task == "mnli" else {"dev"}
    assert set(results["metrics"]) == dev  # MNLI: both dev sets evaluated
    assert all(set(m) == names for m in results["metrics"].values())
    out = tmp_path / "out" / f"{task}-full"
    assert json.loads((out / "results.json").read_text())["metrics"] == results["metrics"]
    predictions = json.loads((out / "predictions.json").read_text())
    assert set(predictions) == dev and all(len(p) == 8 for p in predictions.values())


def test_a_two_label_classifier_fine_tunes_on_three_label_mnli_with_a_fresh_head(tmp_path, capsys):
    folder = write_vocab(tmp_path / "two_labels")
    torch.manual_seed(0)
    save_pretrained(BertClassifier(tiny_config(num_labels=2)), folder)  # an SST-2 model, say
    glue_folder(tmp_path / "data", "mnli")
    results = run(tmp_path, task="mnli", data=str(tmp_path / "data"), model=folder)
    assert "initialised it afresh" in capsys.readouterr().err  # the 2-label head is not used
    out = tmp_path / "out" / "mnli-full"
    assert json.loads((out / "results.json").read_text())["metrics"] == results["metrics"]
    assert set(results["metrics"]) == {"dev_matched", "dev_mismatched"}
    assert load_pretrained(BertClassifier, str(out / "model"), verbose=False).config.num_labels == 3


def test_unknown_task_lists_the_tasks(tmp_path):
    with pytest.raises(ValueError, match=r"unknown task 'nope'; the tasks are cola, sst-2, .*, wnli, text, squad"):
        load_task(Config(task="nope", data=str(tmp_path)), None)


def test_a_folder_without_dev_tsv_names_the_missing_file(tmp_path, tokenizer):
    glue_folder(tmp_path, "rte")
    (tmp_path / "dev.tsv").unlink()
    with pytest.raises(ValueError, match=r"dev\.tsv: missing"):
        load_task(Config(task="rte", data=str(tmp_path)), tokenizer)
    glue_folder(tmp_path, "mnli")
    (tmp_path / "dev_mismatched.tsv").unlink()
    with pytest.raises(ValueError, match=r"dev_mismatched\.tsv: missing"):
        load_task(Config(task="MNLI", data=str(tmp_path)), tokenizer)


def test_bad_input_on_the_command_line_is_one_line(tmp_path, tiny_model):
    cmd = [sys.executable, "finetune.py", "--task", "nope", "--data", str(tmp_path), "--model", tiny_model]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and p.stderr.startswith("error: unknown task 'nope'")
    with pytest.raises(SystemExit):
        parse_args(["--ticket", "random"])  # the control needs --earlybert
    with pytest.raises(ValueError, match=r"^--model: no such checkpoint folder; give one with --model$"):
        finetune(Config(task="rte", data=str(tmp_path)))


# ----------------------------------------------------------------------------- SQuAD

class PointAt(torch.nn.Module):
    """A stand-in QA model whose start and end logits peak at two token ids."""

    def __init__(self, start_id, end_id):
        super().__init__()
        self.start_id, self.end_id = start_id, end_id

    def forward(self, input_ids, token_type_ids=None, attention_mask=None):
        return ((input_ids == self.start_id).float() * 10, (input_ids == self.end_id).float() * 10), None


def test_evaluation_decodes_the_models_logits_into_answers(tokenizer):
    examples = [squad_example("q")]
    features, windows = squad_features([{**examples[0], "answers": []}], tokenizer, 16, 4)
    model = PointAt(tokenizer.token_to_id("word8"), tokenizer.token_to_id("word11"))
    metrics, predictions = squad_evaluate(model, examples, features, windows, Config(batch_size=4), CPU)
    assert predictions == {"q": ANSWER}
    assert metrics == {"dev-v1.1": {"exact_match": 100.0, "f1": 100.0}}


def test_squad_fine_tunes_end_to_end(tmp_path, tiny_model):
    data = tmp_path / "squad"
    data.mkdir()
    as_file = lambda examples: {"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": e["context"], "qas": [{"id": e["id"], "question": e["question"], "answers": e["answers"]}]}
        for e in examples]}]}
    train = [squad_example(f"t{i}", f"word{i} word{i + 1}") for i in range(12)] + [squad_example("bad", start=1)]
    (data / "train-v1.1.json").write_text(json.dumps(as_file(train)))
    (data / "dev-v1.1.json").write_text(json.dumps(as_file([squad_example("d1"), squad_example("d2", "word30")])))
    assert [e["id"] for e in read_squad(str(data / "dev-v1.1.json"))] == ["d1", "d2"]
    with pytest.warns(UserWarning, match="skipped 1 answers"):
        results = run(tmp_path, task="squad", data=str(data), model=tiny_model, max_len=16, doc_stride=4)
    scores = results["metrics"]["dev-v1.1"]
    assert set(scores) == {"exact_match", "f1"} and 0 <= scores["exact_match"] <= scores["f1"] <= 100
    predictions = json.loads((tmp_path / "out" / "squad-full" / "predictions.json").read_text())
    assert set(predictions) == {"d1", "d2"} and all(p in CONTEXT for p in predictions.values())
    (data / "dev-v1.1.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"dev-v1\.1\.json: not a SQuAD v1\.1 file"):
        run(tmp_path, task="squad", data=str(data), model=tiny_model)


# ----------------------------------------------------------------------------- EarlyBERT (tiny)

def test_the_search_stops_when_the_early_bird_rule_fires(tmp_path, tiny_model):
    # search lr 0: the coefficients never move, so the masks agree and the rule fires as soon
    # as it has k = 5 of them (every step here), before the longest search (a whole epoch).
    glue_folder(tmp_path / "data", "rte", rows=40)
    results = run(tmp_path, task="rte", data=str(tmp_path / "data"), model=tiny_model, earlybert=True,
                  search_lr=0.0, ticket_every=1, search_fraction=1.0, max_steps=0, epochs=1)
    t = results["ticket"]
    assert (t["kind"], t["drawn_at_step"]) == ("earlybird", 5)
    assert (t["kept_heads"], t["total_heads"], t["kept_ffn"], t["total_ffn"]) == (6, 8, 77, 128)
    ticket = json.loads((tmp_path / "out" / "rte-earlybert" / "ticket.json").read_text())
    assert [h["step"] for h in ticket["history"]] == [1, 2, 3, 4, 5]


def test_a_random_ticket_needs_no_search(tmp_path, tiny_model):
    glue_folder(tmp_path / "data", "sst-2")
    results = run(tmp_path, task="sst-2", data=str(tmp_path / "data"), model=tiny_model, earlybert=True,
                  ticket="random")
    assert results["ticket"]["kind"] == "random" and results["ticket"]["drawn_at_step"] is None
    model = load_pretrained(BertClassifier, str(tmp_path / "out" / "sst-2-random" / "model"), verbose=False)
    assert sum(model.config.heads_per_layer) == results["ticket"]["kept_heads"] == 6


# ----------------------------------------------------------------------------- a real BERT

POSITIVE = "wonderful great excellent delightful superb brilliant lovely fantastic charming moving".split()
NEGATIVE = "terrible awful dreadful boring horrible dull painful weak disappointing clumsy".split()


def sentiment_folder(folder, n_train=128, n_dev=40):
    """SST-2 layout: 'the film was superb and lovely' -> 1, '... dull and clumsy' -> 0."""
    rng = random.Random(0)
    folder.mkdir()
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            words = POSITIVE if i % 2 else NEGATIVE
            noun = rng.choice(["movie", "film", "story", "plot", "script", "cast"])
            rows.append(f"the {noun} was {rng.choice(words)} and {rng.choice(words)}\t{i % 2}")
        (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return str(folder)


def test_minilm_learns_a_sentiment_task(tmp_path, minilm_dir):
    data = sentiment_folder(tmp_path / "sst")
    results = run(tmp_path, task="sst-2", data=data, model=minilm_dir, batch_size=16, max_len=32, lr=1e-4,
                  epochs=2, max_steps=0)
    assert results["steps"] == 16 and len(results["history"]) == 2  # dev scores after every epoch
    assert results["metrics"]["dev"]["accuracy"] >= 0.8


def test_minilm_learns_it_the_earlybert_way_with_fewer_heads_and_neurons(tmp_path, minilm_dir):
    data = sentiment_folder(tmp_path / "sst")
    results = run(tmp_path, task="sst-2", data=data, model=minilm_dir, batch_size=16, max_len=32, lr=1e-4,
                  epochs=2, max_steps=0, earlybert=True, search_lr=1e-4, ticket_every=2, search_fraction=0.5)
    t = results["ticket"]
    assert t["drawn_at_step"] <= 4 and t["kind"] in ("earlybird", "fixed-step")  # at most half an epoch
    assert (t["kept_heads"], t["total_heads"]) == (48, 72)  # 8 of 12 heads in each of 6 layers
    assert (t["kept_ffn"], t["total_ffn"]) == (5530, 9216)  # 40% of all FFN neurons pruned
    assert t["parameters"] < results["parameters"]
    assert results["search_seconds"] > 0 and results["train_seconds"] > 0
    assert results["total_seconds"] == pytest.approx(results["search_seconds"] + results["train_seconds"])
    assert results["metrics"]["dev"]["accuracy"] >= 0.8
    model = load_pretrained(BertClassifier, str(tmp_path / "out" / "sst-2-earlybert" / "model"), verbose=False)
    assert sum(model.config.heads_per_layer) == 48 and sum(model.config.ffn_per_layer) == 5530


def test_the_text_task_takes_its_classes_from_train_tsv(tmp_path, tokenizer):
    assert "train.tsv: missing" in str(pytest.raises(ValueError, load_task,
                                                     Config(task="text", data=str(tmp_path)), tokenizer).value)
    rows = [("a small animal", "animal"), ("a tall plant", "plant"), ("a red animal", "animal"), ("a tool", "artifact")]
    for split in ("train", "dev"):
        (tmp_path / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    task = load_task(Config(task="text", data=str(tmp_path)), tokenizer)
    assert task.overrides == {"num_labels": 3}  # artifact, animal, plant
    assert [f["labels"] for f in task.train] == [0, 2, 0, 1]  # sorted: animal, artifact, plant
