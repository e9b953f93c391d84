"""The fine-tuning tasks' data and scores: the nine GLUE tasks and SQuAD v1.1, as their papers score them.

GLUE (Wang et al., ICLR 2019, Table 1) is nine sentence and sentence-pair tasks, each a
train.tsv and dev.tsv in the standard download (MNLI: dev_matched.tsv and dev_mismatched.tsv,
scored apart). Each task's columns, labels and metric are one row of the `GLUE` table below:
Matthews correlation for CoLA, F1 and accuracy for MRPC and QQP, Pearson and Spearman
correlation for STS-B (a regression: the model predicts a score), accuracy for the rest.
A sentence (pair) becomes `[CLS] A [SEP] B [SEP]` (BERT, Devlin et al. 2019, sec. 4.1), the
longer sentence cut first when the pair is too long.

SQuAD v1.1 (Rajpurkar et al., EMNLP 2016) asks for the span of a paragraph that answers a
question; a prediction is scored by exact match and word-overlap F1 against the best of the
gold answers, after the official evaluate-v1.1.py's normalisation (sec. 6.1). As BERT (sec.
4.2) and its run_squad.py do, a paragraph longer than the model's window is cut into windows
of context tokens starting `doc_stride` tokens apart, each read as `[CLS] question [SEP]
window [SEP]`; the answer is the best start + end logit over the n-best starts and ends of all
windows, a token's start counting only in the window where it has the most context.

Departures from run_squad.py, on purpose: a training answer whose text is not found at its
answer_start is skipped with one counted warning (not one log line each); a window's n-best
starts are taken among its max-context tokens, where run_squad.py takes the n best of all its
tokens and then drops the others (ours are a superset of its candidates); the answer's text is
cut from the context at its tokens' character offsets, where run_squad.py re-aligns the
de-tokenised WordPieces with the original words.
"""
import json
import math
import os
import re
import string
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch

from model import BertClassifier, BertQA


# ----------------------------------------------------------------------------- GLUE's metrics

def accuracy(pred, gold) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(gold)))


def f1_score(pred, gold) -> float:
    """F1 of the positive class (label 1), as GLUE scores MRPC and QQP: 2 TP / (2 TP + FP + FN)."""
    pred, gold = np.asarray(pred) == 1, np.asarray(gold) == 1
    tp = float(np.sum(pred & gold))
    return 2 * tp / (pred.sum() + gold.sum()) if tp else 0.0


def matthews(pred, gold) -> float:
    """Matthews correlation of binary labels (CoLA); 0 when either side is constant."""
    pred, gold = np.asarray(pred) == 1, np.asarray(gold) == 1
    tp, tn = float(np.sum(pred & gold)), float(np.sum(~pred & ~gold))
    fp, fn = float(np.sum(pred & ~gold)), float(np.sum(~pred & gold))
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denom if denom else 0.0


def pearson(x, y) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum()) / denom if denom else 0.0


def average_ranks(x) -> np.ndarray:
    """Ranks 1..n; equal values share the mean of the ranks they span (Spearman's convention)."""
    _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # the rank of the last value of each group of equal values
    return (last - (counts - 1) / 2)[inverse]


def spearman(x, y) -> float:
    return pearson(average_ranks(x), average_ranks(y))


def acc(pred, gold): return {"accuracy": accuracy(pred, gold)}
def f1_acc(pred, gold): return {"f1": f1_score(pred, gold), "accuracy": accuracy(pred, gold)}
def mcc(pred, gold): return {"mcc": matthews(pred, gold)}
def corr(pred, gold): return {"pearson": pearson(pred, gold), "spearman": spearman(pred, gold)}


# ----------------------------------------------------------------------------- GLUE's tasks

def read_text(path: str) -> str:
    """A data file's text, UTF-8 (a byte-order mark is dropped); any other encoding is a
    one-line error naming the file and the line, not a UnicodeDecodeError."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); "
                         "save the file as UTF-8") from None


@dataclass(frozen=True)
class GlueTask:
    texts: tuple[int, ...]  # the column of the sentence, or the two of the sentence pair
    label: int  # the label's column (-1: the last)
    labels: tuple[str, ...] | None  # label strings in class-id order; None: a score (regression)
    metric: Callable  # (predictions, gold) -> {name: value}
    header: bool = True
    dev: tuple[str, ...] = ("dev.tsv",)


BINARY, NLI = ("0", "1"), ("entailment", "not_entailment")
GLUE = {  # the column layouts of the standard GLUE download
    "cola": GlueTask((3,), 1, BINARY, mcc, header=False),  # source, label, original label, sentence
    "sst-2": GlueTask((0,), 1, BINARY, acc),
    "mrpc": GlueTask((3, 4), 0, BINARY, f1_acc),  # Quality, #1 ID, #2 ID, #1 String, #2 String
    "qqp": GlueTask((3, 4), 5, BINARY, f1_acc),  # id, qid1, qid2, question1, question2, is_duplicate
    "sts-b": GlueTask((7, 8), -1, None, corr),
    "mnli": GlueTask((8, 9), -1, ("contradiction", "entailment", "neutral"), acc,
                     dev=("dev_matched.tsv", "dev_mismatched.tsv")),
    "qnli": GlueTask((1, 2), 3, NLI, acc),  # index, question, sentence, label
    "rte": GlueTask((1, 2), 3, NLI, acc),  # index, sentence1, sentence2, label
    "wnli": GlueTask((1, 2), 3, BINARY, acc),
}
TASKS = [*GLUE, "text", "squad"]


def text_task(train_path: str) -> GlueTask:
    """A single-sentence classification task of your own, in SST-2's layout: train.tsv and
    dev.tsv with a `sentence<TAB>label` header. The classes are train.tsv's labels, sorted."""
    if not os.path.isfile(train_path):
        raise ValueError(f"{train_path}: missing; the text task reads train.tsv and dev.tsv (sentence<TAB>label)")
    lines = read_text(train_path).split("\n")
    labels = {line.rstrip("\r").split("\t")[-1] for line in lines[1:] if line.strip()}
    if len(labels) < 2:
        raise ValueError(f"{train_path}: needs rows of at least two labels, found {len(labels)}")
    return GlueTask((0,), 1, tuple(sorted(labels)), acc)


def read_glue(path: str, task: GlueTask) -> tuple[list[tuple[str, ...]], list]:
    """(texts, labels) of one GLUE .tsv. Every row must have as many columns as the header
    (as the first row, for CoLA, which has no header); labels become class ids (floats for STS-B)."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: missing; a GLUE task folder holds train.tsv and {' and '.join(task.dev)}")
    lines = read_text(path).split("\n")  # tabs only: GLUE's fields are never quoted
    rows = [(n, line.rstrip("\r").split("\t")) for n, line in enumerate(lines, 1) if line.strip()]
    if len(rows) <= task.header:
        raise ValueError(f"{path}: no rows")
    width, need = len(rows[0][1]), max(task.texts + (task.label,)) + 1
    if width < need:
        raise ValueError(f"{path}, line {rows[0][0]}: {width} columns, but this task's layout has at least {need}")
    texts, labels = [], []
    for n, cols in rows[task.header:]:
        if len(cols) != width:
            raise ValueError(f"{path}, line {n}: {len(cols)} tab-separated columns, expected {width}")
        label = cols[task.label]
        if task.labels is None:
            try:
                labels.append(float(label))
            except ValueError:
                raise ValueError(f"{path}, line {n}: score {label!r} is not a number") from None
        elif label in task.labels:
            labels.append(task.labels.index(label))
        else:
            raise ValueError(f"{path}, line {n}: label {label!r} is not one of {', '.join(task.labels)}")
        texts.append(tuple(cols[i] for i in task.texts))
    return texts, labels


def glue_features(tokenizer, texts, labels, max_len: int) -> list[dict]:
    """[CLS] a [SEP] (b [SEP]), the longer sentence cut first when a pair is too long
    (the tokenizer: data.checkpoint_tokenizer(folder, pairs=True))."""
    tokenizer.enable_truncation(max_len)
    encodings = tokenizer.encode_batch([t[0] if len(t) == 1 else t for t in texts])
    return [{"input_ids": np.array(e.ids, np.int32), "token_type_ids": np.array(e.type_ids, np.int8), "labels": y}
            for e, y in zip(encodings, labels)]


def glue_scores(task: GlueTask, logits: np.ndarray, gold) -> tuple[dict, list]:
    """The task's metrics of the model's outputs (N, num_labels), and its predictions: label
    strings, or STS-B's scores."""
    pred = logits[:, 0] if task.labels is None else logits.argmax(-1)
    predictions = pred.tolist() if task.labels is None else [task.labels[p] for p in pred]
    return task.metric(pred, np.asarray(gold)), predictions


# ----------------------------------------------------------------------------- SQuAD v1.1: windows

def read_squad(path: str) -> list[dict]:
    """SQuAD v1.1 JSON -> [{"id", "question", "context", "answers": [{"text", "answer_start"}]}]."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: missing; a SQuAD folder holds train-v1.1.json and dev-v1.1.json")
    text = read_text(path)
    try:
        articles = json.loads(text)["data"]
        return [{"id": qa["id"], "question": qa["question"], "context": p["context"], "answers": qa["answers"]}
                for a in articles for p in a["paragraphs"] for qa in p["qas"]]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a SQuAD v1.1 file ({type(e).__name__}: {e})") from None


class Window(NamedTuple):
    """Where one feature's context tokens come from, to turn its logits back into text."""
    example: int  # the index of its question
    offsets: np.ndarray  # (n, 2): the character span of each of its n context tokens
    context_at: int  # the feature position of its first context token
    max_context: np.ndarray  # (n,) bool: this is the window where the token has the most context


def max_context(spans: list[tuple[int, int]], n: int) -> list[np.ndarray]:
    """run_squad.py's _check_is_max_context: a token in several windows [first, last) belongs to
    the one where it has most context on its shorter side, + 0.01 x the window's length; the
    first such window on a tie. Returns, per window, which of its tokens are its own."""
    score, t = np.full((len(spans), n), -np.inf), np.arange(n)
    for w, (first, last) in enumerate(spans):
        score[w, first:last] = np.minimum(t[first:last] - first, last - 1 - t[first:last]) + 0.01 * (last - first)
    best = score.argmax(0)  # (n,) the window each token belongs to
    return [best[first:last] == w for w, (first, last) in enumerate(spans)]


def squad_features(examples, tokenizer, max_len: int, doc_stride: int, path: str = ""):
    """[CLS] question [SEP] context window [SEP] (BERT sec. 4.2, as its run_squad.py): windows
    start doc_stride tokens apart; the answer's start/end token positions where the window holds
    all of it, else 0, 0 (the [CLS] token). Answers not at their answer_start: skipped, one warning.
    Returns (features, windows), a Window per feature."""
    tokenizer.no_truncation()
    questions = tokenizer.encode_batch([e["question"] for e in examples], add_special_tokens=False)
    unique = list(dict.fromkeys(e["context"] for e in examples))  # each paragraph is encoded once
    contexts = dict(zip(unique, tokenizer.encode_batch(unique, add_special_tokens=False)))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    features, windows, skipped = [], [], 0
    for i, (e, q) in enumerate(zip(examples, questions)):
        question = q.ids[:min(64, max_len // 2)]  # run_squad.py's max_query_length
        k, room = len(question) + 2, max_len - len(question) - 3
        ctx = contexts[e["context"]]
        offsets = np.array(ctx.offsets, np.int32).reshape(-1, 2)  # (n, 2): character span of each token
        answer = None
        if e["answers"]:  # the first gold answer is the one trained on (v1.1 train has one)
            text, a0 = e["answers"][0]["text"], e["answers"][0]["answer_start"]
            if not text.strip() or e["context"][a0:a0 + len(text)] != text:
                skipped += 1
                continue
            # first token ending after the answer's start, last token starting before its end
            answer = (int(np.argmax(offsets[:, 1] > a0)), int(np.nonzero(offsets[:, 0] < a0 + len(text))[0][-1]))
        first, spans = 0, []
        while True:  # windows of `room` context tokens, starting doc_stride apart
            last = min(first + room, len(ctx.ids))
            ids = [cls] + question + [sep] + ctx.ids[first:last] + [sep]
            types = np.zeros(len(ids), np.int8)
            types[k:] = 1
            start = end = 0
            if answer and first <= answer[0] and answer[1] < last:
                start, end = answer[0] - first + k, answer[1] - first + k
            features.append({"input_ids": np.array(ids, np.int32), "token_type_ids": types,
                             "start_positions": start, "end_positions": end})
            spans.append((first, last))
            if last >= len(ctx.ids):
                break
            first += min(doc_stride, room)
        for (first, last), own in zip(spans, max_context(spans, len(ctx.ids))):
            windows.append(Window(i, offsets[first:last], k, own))
    if skipped:
        warnings.warn(f"skipped {skipped} answers not found in their context ({path})")
    return features, windows


# ----------------------------------------------------------------------------- SQuAD v1.1: answers

def best_span(start: np.ndarray, end: np.ndarray, n_best: int = 20, max_answer_len: int = 30):
    """(score, s, e) of the highest start[s] + end[e] with s <= e < s + max_answer_len, among
    the n_best highest starts and ends (run_squad.py's search); score -inf when there is none."""
    top_s, top_e = np.argsort(start)[-n_best:], np.argsort(end)[-n_best:]
    s, e = top_s[:, None], top_e[None, :]
    score = np.where((s <= e) & (e < s + max_answer_len), start[s] + end[e], -np.inf)
    i, j = np.unravel_index(score.argmax(), score.shape)
    return score[i, j], int(top_s[i]), int(top_e[j])


def window_text(context: str, offsets: np.ndarray, s: int, e: int) -> str:
    """The context's text from context token s to token e of a window (offsets: that window's)."""
    return context[offsets[s, 0]:offsets[e, 1]]


def squad_answers(examples: list[dict], windows: list[Window], outputs) -> dict:
    """{question id: answer text}: the best span over all windows of each question.
    outputs: (start logits, end logits) per feature, over all its tokens."""
    best = {}  # example index -> (score, answer text)
    for (start, end), w in zip(outputs, windows):
        n, k = len(w.offsets), w.context_at  # only context tokens can be answers: logits k .. k + n - 1
        score, s, e = best_span(np.where(w.max_context, start[k:k + n], -np.inf), end[k:k + n])
        if score > best.get(w.example, (-np.inf,))[0]:
            best[w.example] = (score, window_text(examples[w.example]["context"], w.offsets, s, e))
    return {e["id"]: best.get(i, (0.0, ""))[1] for i, e in enumerate(examples)}


def normalize_answer(s: str) -> str:
    """The official SQuAD v1.1 normalisation: lower case, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def exact_match(pred: str, gold: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(gold))


def token_f1(pred: str, gold: str) -> float:
    """The official SQuAD F1: overlap of the normalised answers' words, as bags."""
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict, examples: list[dict]) -> dict:
    """Official EM and F1 (in %): each prediction against its best-matching gold answer."""
    em = [max((exact_match(predictions[e["id"]], a["text"]) for a in e["answers"]), default=0.0) for e in examples]
    f1 = [max((token_f1(predictions[e["id"]], a["text"]) for a in e["answers"]), default=0.0) for e in examples]
    return {"exact_match": 100 * float(np.mean(em)), "f1": 100 * float(np.mean(f1))}


# ----------------------------------------------------------------------------- a task as finetune.py trains it

@dataclass
class Task:
    name: str
    model_class: type  # BertClassifier or BertQA
    overrides: dict  # config fields for load_pretrained (num_labels)
    train: list[dict]  # features: model inputs and targets
    dev: dict  # split -> features: the model's inputs
    score: Callable  # {split: the model's outputs per feature} -> (metrics, predictions)


def task_name(name: str) -> str:
    """The task's name as TASKS spell it ('SST2' -> 'sst-2'); an unknown one is a one-line error."""
    names = {t.replace("-", ""): t for t in TASKS}
    if name.lower().replace("-", "") not in names:
        raise ValueError(f"unknown task {name!r}; the tasks are {', '.join(TASKS)}")
    return names[name.lower().replace("-", "")]


def load_task(name: str, folder: str, tokenizer, max_len: int = 0, doc_stride: int = 128) -> Task:
    """The task `name` in `folder` (finetune.py's --task, --data, --max-len, --doc-stride): its
    training features, its dev features and how they are scored."""
    name = task_name(name)
    if not os.path.isdir(folder):
        raise ValueError(f"{folder or '--data'}: no such folder; give the task's data folder with --data")
    if name == "squad":
        max_len = max_len or 384
        if max_len < 8 or doc_stride < 1:
            raise ValueError(f"--max-len {max_len} --doc-stride {doc_stride}: SQuAD windows need a length "
                             "of at least 8 and a stride of at least 1")
        paths = [os.path.join(folder, f) for f in ("train-v1.1.json", "dev-v1.1.json")]
        train_examples, dev_examples = (read_squad(p) for p in paths)  # both read first: errors come early
        train, _ = squad_features(train_examples, tokenizer, max_len, doc_stride, paths[0])
        dev, windows = squad_features([{**e, "answers": []} for e in dev_examples], tokenizer, max_len, doc_stride)
        return Task(name, BertQA, {}, train, {"dev": dev},
                    lambda outputs: squad_dev_scores(dev_examples, windows, outputs["dev"]))
    task = text_task(os.path.join(folder, "train.tsv")) if name == "text" else GLUE[name]
    max_len = max_len or 128
    splits = {os.path.splitext(f)[0]: read_glue(os.path.join(folder, f), task) for f in ("train.tsv",) + task.dev}
    train = glue_features(tokenizer, *splits.pop("train"), max_len)
    dev = {split: glue_features(tokenizer, texts, labels, max_len) for split, (texts, labels) in splits.items()}
    gold = {split: labels for split, (_, labels) in splits.items()}
    return Task(name, BertClassifier, {"num_labels": len(task.labels or [0])}, train, dev,
                lambda outputs: glue_dev_scores(task, gold, outputs))


def glue_dev_scores(task: GlueTask, gold: dict, outputs: dict) -> tuple[dict, dict]:
    """Each dev split's metrics and predictions, from the model's (logits,) per feature."""
    metrics, predictions = {}, {}
    for split, labels in gold.items():
        logits = np.stack([o[0] for o in outputs[split]])  # (N, num_labels)
        metrics[split], predictions[split] = glue_scores(task, logits, labels)
    return metrics, predictions


def squad_dev_scores(examples: list[dict], windows: list[Window], outputs) -> tuple[dict, dict]:
    """Best span over all windows of each question, then the official EM and F1."""
    predictions = squad_answers(examples, windows, outputs)
    return {"dev-v1.1": squad_scores(predictions, examples)}, predictions


def collate(features: list[dict], targets: bool = True) -> dict:
    """Pad to the batch's longest sequence; attention_mask is None when nothing is padded."""
    lengths = torch.tensor([len(f["input_ids"]) for f in features])
    batch = {}
    for key in ("input_ids", "token_type_ids"):
        x = np.zeros((len(features), int(lengths.max())), np.int64)
        for row, f in zip(x, features):
            row[:len(f[key])] = f[key]
        batch[key] = torch.from_numpy(x)
    mask = torch.arange(batch["input_ids"].shape[1])[None, :] < lengths[:, None]  # (B, T)
    batch["attention_mask"] = None if mask.all() else mask
    for key in (features[0].keys() - {"input_ids", "token_type_ids"} if targets else ()):
        batch[key] = torch.tensor([f[key] for f in features])  # labels: int64, or float32 scores
    return batch


def batches(features: list[dict], batch_size: int, seed: int, rank: int = 0, world: int = 1):
    """One epoch of shuffled batches; each process takes its share, all the same number."""
    order = np.random.default_rng(seed).permutation(len(features))
    order = order[:len(order) // world * world][rank::world]
    for i in range(0, len(order), batch_size):
        yield collate([features[j] for j in order[i:i + batch_size]])
