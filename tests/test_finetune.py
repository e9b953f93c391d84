"""finetune.py: GLUE and SQuAD data, their metrics, and fine-tuning plainly and the EarlyBERT way.

Data sets are written into tmp_path by the tests; a tiny random BERT (with a vocabulary of the
words used here) runs the pipelines end to end in a second, and the real all-MiniLM-L6-v2
learns a small sentiment task plainly and with --earlybert (skipped when not installed).
"""
import json
import os
import random
import re
import subprocess
import sys
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from finetune import (GLUE, Config, accuracy, average_ranks, best_span, exact_match, f1_score, finetune, load_task,
                      load_tokenizer, matthews, normalize_answer, parse_args, pearson, read_glue, read_squad,
                      spearman, squad_evaluate, squad_features, squad_scores, token_f1, window_text)
from model import BertClassifier, BertConfig, BertMLM, load_pretrained, save_pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = SimpleNamespace(device=torch.device("cpu"), autocast=nullcontext(), dtype=torch.float32, rank=0, world=1)
WORDS = [f"word{i}" for i in range(40)] + "what is it where the cat sat ? . sentence second of train dev".split()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random 2-layer BERT checkpoint whose vocabulary holds WORDS (others become [UNK])."""
    folder = tmp_path_factory.mktemp("tiny_bert")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    torch.manual_seed(0)
    model = BertMLM(BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=64))
    save_pretrained(model, str(folder), str(folder / "vocab.txt"))
    return str(folder)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(tiny_model)[0]


def run(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path / "out"), batch_size=4, max_len=32, max_steps=2, epochs=1, device="cpu")
    return finetune(Config(**{**base, **kw}))


# ----------------------------------------------------------------------------- metrics

def test_accuracy_and_f1_match_hand_computed_values():
    pred, gold = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1])  # TP 2, FP 1, FN 1, TN 1
    assert accuracy(pred, gold) == pytest.approx(3 / 5)
    assert f1_score(pred, gold) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert f1_score(np.zeros(5), gold) == 0.0  # no positive prediction


def test_matthews_is_hand_computed_and_zero_for_a_constant_prediction():
    pred, gold = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1])
    assert matthews(pred, gold) == pytest.approx((2 * 1 - 1 * 1) / np.sqrt(3 * 3 * 2 * 2))
    assert matthews(np.ones(5), gold) == 0.0
    assert matthews(np.zeros(5), gold) == 0.0
    assert matthews(gold, gold) == pytest.approx(1.0)
    assert matthews(1 - gold, gold) == pytest.approx(-1.0)


def test_pearson_and_spearman_with_ties_use_average_ranks():
    x, y = [1, 2, 3], [2, 4, 7]  # deviations (-1, 0, 1) and (-7/3, -1/3, 8/3)
    assert pearson(x, y) == pytest.approx(5 / np.sqrt(2 * 114 / 9))
    assert average_ranks([3, 1, 2, 2]).tolist() == [4, 1, 2.5, 2.5]
    # ranks (1, 2.5, 2.5, 4) and (1, 2, 3, 4): covariance 4.5, variances 4.5 and 5
    assert spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(4.5 / np.sqrt(4.5 * 5))
    assert spearman([5, 5, 5], [1, 2, 3]) == 0.0  # constant: no correlation, not a NaN


def test_squad_normalisation_matches_the_official_script():
    assert exact_match("The Cat!", "cat") == 1.0
    assert normalize_answer("  An apple,  the pie. ") == "apple pie"
    assert normalize_answer("theater") == "theater"  # articles only as whole words
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert token_f1("dog", "cat") == 0.0
    examples = [{"id": "a", "answers": [{"text": "dog"}, {"text": "Cat."}]}, {"id": "b", "answers": [{"text": "x y"}]}]
    scores = squad_scores({"a": "the cat", "b": "x"}, examples)  # best gold answer counts
    assert scores == pytest.approx({"exact_match": 50.0, "f1": 100 * (1 + 2 / 3) / 2})


# ----------------------------------------------------------------------------- GLUE

def _mnli(i, a, b, y, split):
    labels = [y] * (5 if split != "train" else 1)  # label1 (.. label5 in dev), then gold_label
    return [str(i), "3119", f"{i}n", "fiction", "( a )", "( b )", "(ROOT a)", "(ROOT b)", a, b, *labels, y]


def _mnli_header(split):
    extra = [f"label{i}" for i in range(1, 6 if split != "train" else 2)]
    return ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
            "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", *extra, "gold_label"]


STSB = "index genre filename year old_index source1 source2 sentence1 sentence2 score".split()
LAYOUTS = {  # task: (header, row) in the standard GLUE download's column order
    "cola": (None, lambda i, a, b, y, s: ["gj04", y, "" if y == "1" else "*", a]),
    "sst-2": (["sentence", "label"], lambda i, a, b, y, s: [a, y]),
    "mrpc": (["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
             lambda i, a, b, y, s: [y, f"{i}1", f"{i}2", a, b]),
    "qqp": (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            lambda i, a, b, y, s: [str(i), f"{i}1", f"{i}2", a, b, y]),
    "sts-b": (STSB, lambda i, a, b, y, s: [str(i), "main-captions", "MSRvid", "2012test", f"{i:04}", "none", "none",
                                            a, b, y]),
    "mnli": (_mnli_header, _mnli),
    "qnli": (["index", "question", "sentence", "label"], lambda i, a, b, y, s: [str(i), a, b, y]),
    "rte": (["index", "sentence1", "sentence2", "label"], lambda i, a, b, y, s: [str(i), a, b, y]),
    "wnli": (["index", "sentence1", "sentence2", "label"], lambda i, a, b, y, s: [str(i), a, b, y]),
}


def glue_folder(folder, task, rows=8):
    """Writes train.tsv and the dev file(s) of `task`; returns {split: (texts, label ids)} expected."""
    folder.mkdir(parents=True, exist_ok=True)
    header, row = LAYOUTS[task]
    labels = GLUE[task].labels or ("0.5", "4.25", "3")
    expected = {}
    for split in ("train",) + tuple(d[:-4] for d in GLUE[task].dev):
        head = header(split) if callable(header) else header
        lines, texts, ids = [] if head is None else ["\t".join(head)], [], []
        for i in range(rows):
            a, b, y = f"sentence {i} of {split}", f"second {i} of {split}", labels[i % len(labels)]
            lines.append("\t".join(row(i, a, b, y, split)))
            texts.append((a, b) if len(GLUE[task].texts) == 2 else (a,))
            ids.append(float(y) if GLUE[task].labels is None else i % len(labels))
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        expected[split] = (texts, ids)
    return expected


@pytest.mark.parametrize("task", list(GLUE))
def test_each_glue_layout_parses_to_its_texts_and_labels(tmp_path, task):
    expected = glue_folder(tmp_path, task)
    for split, (texts, labels) in expected.items():
        assert read_glue(str(tmp_path / f"{split}.tsv"), GLUE[task]) == (texts, labels)
    if task == "cola":  # no header: the first line is a sentence
        assert expected["train"][0][0] == ("sentence 0 of train",)


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


def test_unknown_task_lists_the_tasks(tmp_path):
    with pytest.raises(ValueError, match=r"unknown task 'nope'; the tasks are cola, sst-2, .*, wnli, squad"):
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


def test_malformed_rows_name_the_file_and_line(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\ngood one\t1\ntoo\tmany\t1\n")
    with pytest.raises(ValueError, match=r"train\.tsv, line 3: 3 tab-separated columns, expected 2"):
        read_glue(str(path), GLUE["sst-2"])
    path.write_text("sentence\tlabel\ngood one\t1\nbad label\tpositive\n")
    with pytest.raises(ValueError, match=r"train\.tsv, line 3: label 'positive' is not one of 0, 1"):
        read_glue(str(path), GLUE["sst-2"])


def test_bad_input_on_the_command_line_is_one_line(tmp_path, tiny_model):
    cmd = [sys.executable, "finetune.py", "--task", "nope", "--data", str(tmp_path), "--model", tiny_model]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and p.stderr.startswith("error: unknown task 'nope'")
    with pytest.raises(SystemExit):
        parse_args(["--ticket", "random"])  # the control needs --earlybert


# ----------------------------------------------------------------------------- SQuAD

CONTEXT = " ".join(f"word{i}" for i in range(40))  # one token per word with the tiny vocabulary
ANSWER = "word8 word9 word10 word11"  # tokens 8..11


def squad_example(qid, answer=ANSWER, start=None):
    start = CONTEXT.index(answer) if start is None else start
    return {"id": qid, "question": "what is it ?", "context": CONTEXT,
            "answers": [{"text": answer, "answer_start": start}]}


def test_an_answer_across_a_window_boundary_is_found_in_the_windows_holding_all_of_it(tokenizer):
    # question: 4 tokens -> context tokens start at position 6, 9 of them per window, starts 4 apart
    features, windows = squad_features([squad_example("q")], tokenizer, max_len=16, doc_stride=4)
    starts = [0, 4, 8, 12, 16, 20, 24, 28, 32]
    assert len(features) == len(starts) and all(len(f["input_ids"]) <= 16 for f in features)
    word_starts = [m.start() for m in re.finditer(r"\S+", CONTEXT)]
    assert sorted({int(o[0]) for _, offsets, _ in windows for o in offsets}) == word_starts  # all covered
    for f, (i, offsets, k), first in zip(features, windows, starts):
        assert (i, k, len(offsets)) == (0, 6, min(9, 40 - first))
        s, e = f["start_positions"], f["end_positions"]
        if first <= 8 and 11 < first + 9:  # the window holds the whole answer
            assert (s, e) == (8 - first + k, 11 - first + k)
            assert window_text(CONTEXT, offsets, s - k, e - k) == ANSWER
        else:  # the first window holds only word8 word9 of it: points at [CLS]
            assert (s, e) == (0, 0)
    assert features[0]["token_type_ids"].tolist() == [0] * 6 + [1] * 10


def test_an_answer_inside_a_word_maps_to_the_tokens_covering_it(tokenizer):
    features, windows = squad_features([squad_example("q", "ord9 wo", CONTEXT.index("ord9 wo"))], tokenizer, 64, 128)
    (f,), ((_, offsets, k),) = features, windows
    assert window_text(CONTEXT, offsets, f["start_positions"] - k, f["end_positions"] - k) == "word9 word10"


def test_an_answer_not_in_its_context_is_skipped_with_a_counted_warning(tokenizer):
    examples = [squad_example("good"), squad_example("bad", start=3), squad_example("worse", "no such words", 0)]
    with pytest.warns(UserWarning, match=r"skipped 2 answers not found in their context \(train-v1\.1\.json\)"):
        features, windows = squad_features(examples, tokenizer, 64, 128, "train-v1.1.json")
    assert [i for i, _, _ in windows] == [0]


class PointAt(torch.nn.Module):
    """A stand-in QA model whose start and end logits peak at two token ids."""

    def __init__(self, start_id, end_id):
        super().__init__()
        self.start_id, self.end_id = start_id, end_id

    def forward(self, input_ids, token_type_ids=None, attention_mask=None):
        return ((input_ids == self.start_id).float() * 10, (input_ids == self.end_id).float() * 10), None


def test_decoding_picks_the_best_span_over_all_windows(tokenizer):
    examples = [squad_example("q")]
    features, windows = squad_features([{**examples[0], "answers": []}], tokenizer, 16, 4)
    model = PointAt(tokenizer.token_to_id("word8"), tokenizer.token_to_id("word11"))
    metrics, predictions = squad_evaluate(model, examples, features, windows, Config(batch_size=4), CPU)
    assert predictions == {"q": ANSWER}
    assert metrics == {"dev-v1.1": {"exact_match": 100.0, "f1": 100.0}}
    start, end = np.array([0.0, 5, 1]), np.array([4.0, 0, 2])  # best sum 5 + 4: end before start, no span
    assert best_span(start, end) == (7.0, 1, 2)
    assert best_span(start, end, max_answer_len=1) == (5.0, 1, 1)


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
