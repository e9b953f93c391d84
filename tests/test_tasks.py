"""tasks.py: GLUE's nine layouts and metrics, SQuAD v1.1's windows, span decoding and official scores.

Data sets are written into tmp_path by conftest.py's writers (glue_folder, squad), which
test_finetune.py shares; the tokenizer is WordPiece over a vocabulary of the words used there
(others become [UNK]), so a context word is one token.
"""
import re

import numpy as np
import pytest

from data import checkpoint_tokenizer
from tasks import (GLUE, accuracy, average_ranks, best_span, exact_match, f1_score, glue_features, glue_scores,
                   matthews, max_context, normalize_answer, pearson, read_glue, read_squad, spearman, squad_answers,
                   squad_features, squad_scores, text_task, token_f1, window_text)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, write_vocab):
    return checkpoint_tokenizer(write_vocab(tmp_path_factory.mktemp("vocab")), pairs=True)[0]


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

@pytest.mark.parametrize("task", list(GLUE))
def test_each_glue_layout_parses_to_its_texts_and_labels(tmp_path, glue_folder, task):
    expected = glue_folder(tmp_path, task)
    for split, (texts, labels) in expected.items():
        assert read_glue(str(tmp_path / f"{split}.tsv"), GLUE[task]) == (texts, labels)
    if task == "cola":  # no header: the first line is a sentence
        assert expected["train"][0][0] == ("sentence 0 of train",)


def test_malformed_rows_name_the_file_and_line(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\ngood one\t1\ntoo\tmany\t1\n")
    with pytest.raises(ValueError, match=r"train\.tsv, line 3: 3 tab-separated columns, expected 2"):
        read_glue(str(path), GLUE["sst-2"])
    path.write_text("sentence\tlabel\ngood one\t1\nbad label\tpositive\n")
    with pytest.raises(ValueError, match=r"train\.tsv, line 3: label 'positive' is not one of 0, 1"):
        read_glue(str(path), GLUE["sst-2"])


def test_a_file_that_is_not_utf8_is_one_error_naming_it_and_the_line(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes("sentence\tlabel\ngood one\t1\n".encode() + "caf\u00e9 latin-1\t0\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"train\.tsv, line 3: not UTF-8 text \(byte 0xe9\); save the file as UTF-8$"):
        read_glue(str(path), GLUE["sst-2"])
    with pytest.raises(ValueError, match=r"train\.tsv, line 3: not UTF-8"):
        text_task(str(path))
    squad = tmp_path / "dev-v1.1.json"
    squad.write_bytes(b'{"data": [{"title": "\xff"}]}')
    with pytest.raises(ValueError, match=r"dev-v1\.1\.json, line 1: not UTF-8 text \(byte 0xff\)"):
        read_squad(str(squad))
    path.write_bytes(b"\xef\xbb\xbfsentence\tlabel\r\ngood one\t1\r\n")  # a byte-order mark and CRLF are fine
    assert read_glue(str(path), GLUE["sst-2"]) == ([("good one",)], [1])


def test_a_pair_is_cls_a_sep_b_sep_with_the_longer_sentence_cut_first(tokenizer):
    ids = {w: tokenizer.token_to_id(w) for w in ("[CLS]", "[SEP]", "cat", "sat", "word1", "word2")}
    (f,) = glue_features(tokenizer, [("cat sat", "word1 word2 word1 word2")], [1], max_len=7)
    assert f["input_ids"].tolist() == [ids[w] for w in "[CLS] cat sat [SEP] word1 word2 [SEP]".split()]
    assert f["token_type_ids"].tolist() == [0, 0, 0, 0, 1, 1, 1] and f["labels"] == 1


def test_glue_scores_are_the_tasks_metric_of_the_argmax_or_the_score():
    metrics, predictions = glue_scores(GLUE["mnli"], np.array([[0.0, 2, 1], [3, 0, 0]]), [1, 2])
    assert metrics == {"accuracy": 0.5} and predictions == ["entailment", "contradiction"]
    metrics, predictions = glue_scores(GLUE["sts-b"], np.array([[1.0], [2.0], [4.0]]), [0.5, 1.0, 2.0])
    assert predictions == [1.0, 2.0, 4.0] and metrics["pearson"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- SQuAD

def test_an_answer_across_a_window_boundary_is_found_in_the_windows_holding_all_of_it(tokenizer, squad):
    # question: 4 tokens -> context tokens start at position 6, 9 of them per window, starts 4 apart
    features, windows = squad_features([squad.example("q")], tokenizer, max_len=16, doc_stride=4)
    starts = [0, 4, 8, 12, 16, 20, 24, 28, 32]
    assert len(features) == len(starts) and all(len(f["input_ids"]) <= 16 for f in features)
    word_starts = [m.start() for m in re.finditer(r"\S+", squad.context)]
    assert sorted({int(o[0]) for w in windows for o in w.offsets}) == word_starts  # all covered
    for f, (i, offsets, k, _), first in zip(features, windows, starts):
        assert (i, k, len(offsets)) == (0, 6, min(9, 40 - first))
        s, e = f["start_positions"], f["end_positions"]
        if first <= 8 and 11 < first + 9:  # the window holds the whole answer
            assert (s, e) == (8 - first + k, 11 - first + k)
            assert window_text(squad.context, offsets, s - k, e - k) == squad.answer
        else:  # the first window holds only word8 word9 of it: points at [CLS]
            assert (s, e) == (0, 0)
    assert features[0]["token_type_ids"].tolist() == [0] * 6 + [1] * 10


def test_each_token_has_its_most_context_in_exactly_one_window():
    spans = [(0, 9), (4, 13), (8, 17)]
    own = max_context(spans, 17)
    assert sum(o.sum() for o in own) == 17  # each token belongs to one window
    # token 8: min(left, right) context 0 in the first and the third window, 4 in the second
    assert [o[8 - first] for o, (first, _) in zip(own, spans[:2])] == [False, True]
    assert own[0].tolist() == [True] * 7 + [False] * 2  # token 6: 2 a side here, 2 and 6 in the next: a tie
    assert max_context([(0, 3), (2, 4)], 4)[1].tolist() == [False, True]  # the longer window wins the tie at 2


def test_an_answer_inside_a_word_maps_to_the_tokens_covering_it(tokenizer, squad):
    example = squad.example("q", "ord9 wo", squad.context.index("ord9 wo"))
    features, windows = squad_features([example], tokenizer, 64, 128)
    (f,), ((_, offsets, k, _),) = features, windows
    assert window_text(squad.context, offsets, f["start_positions"] - k, f["end_positions"] - k) == "word9 word10"


def test_an_answer_not_in_its_context_is_skipped_with_a_counted_warning(tokenizer, squad):
    examples = [squad.example("good"), squad.example("bad", start=3), squad.example("worse", "no such words", 0)]
    with pytest.warns(UserWarning, match=r"skipped 2 answers not found in their context \(train-v1\.1\.json\)"):
        features, windows = squad_features(examples, tokenizer, 64, 128, "train-v1.1.json")
    assert [w.example for w in windows] == [0]


def point_at(features, starts: dict, ends: dict):
    """The logits of a stand-in QA model: the score of each token id in starts / ends, else 0."""
    return [(np.vectorize(lambda t: starts.get(t, 0.0))(f["input_ids"]).astype(np.float32),
             np.vectorize(lambda t: ends.get(t, 0.0))(f["input_ids"]).astype(np.float32)) for f in features]


def test_decoding_picks_the_best_span_over_all_windows(tokenizer, squad):
    examples = [squad.example("q")]
    features, windows = squad_features([{**examples[0], "answers": []}], tokenizer, 16, 4)
    word = tokenizer.token_to_id
    predictions = squad_answers(examples, windows, point_at(features, {word("word8"): 10}, {word("word11"): 10}))
    metrics = {"dev-v1.1": squad_scores(predictions, examples)}
    assert predictions == {"q": squad.answer}
    assert metrics == {"dev-v1.1": {"exact_match": 100.0, "f1": 100.0}}
    start, end = np.array([0.0, 5, 1]), np.array([4.0, 0, 2])  # best sum 5 + 4: end before start, no span
    assert best_span(start, end) == (7.0, 1, 2)
    assert best_span(start, end, max_answer_len=1) == (5.0, 1, 1)


def test_a_span_counts_only_in_the_window_where_its_start_has_most_context(tokenizer, squad):
    # windows of 9 tokens starting 4 apart: word7 has most context (3 and 5) in the window
    # starting at word4, so the first window's higher-scored "word7 word8" does not count there
    examples = [squad.example("q")]
    features, windows = squad_features([{**examples[0], "answers": []}], tokenizer, 16, 4)
    word = tokenizer.token_to_id
    outputs = point_at(features, {word("word8"): 10}, {word("word11"): 10})
    k = windows[0].context_at
    outputs[0][0][k + 7], outputs[0][1][k + 8] = 20, 15  # first window only: "word7 word8" scores 35 > 20
    assert squad_answers(examples, windows, outputs) == {"q": squad.answer}
    assert not windows[0].max_context[7] and windows[1].max_context[3]
