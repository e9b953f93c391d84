"""What the tests share that is not a fixture (those are in conftest.py): the generated corpus,
a tiny model and the by-hand references its parts are checked against, the fine-tuning data
writers, literal tickets, and tiny train.py runs. A module of its own, so a
test file imports it by name (`from helpers import tiny`) under any pytest --import-mode."""
import bisect
import itertools
import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import train
from model import BertConfig
from tasks import GLUE
from ticket import Ticket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- comparing numbers
# Two computations of the same value agree only up to rounding, and how closely depends on the
# kernels a CPU runs: AVX-512, AVX2 and more threads sum in other orders, over other blocks. Summing
# K terms in any order errs by at most about K * eps times the terms' magnitude (Higham, Accuracy
# and Stability of Numerical Algorithms, 2nd ed., sec. 3.1), and along a chain of sums the K's add
# up. So the tests compare relative to a tensor's magnitude, with a tolerance counted in roundings
# from the computation it checks, never a bare atol printed on one machine.

FP32_EPS = torch.finfo(torch.float32).eps  # 2**-23 = 1.2e-7: one fp32 rounding, relative
BF16_EPS = torch.finfo(torch.bfloat16).eps  # 2**-7 = 7.8e-3: one bf16 rounding, relative
# A whole model is too deep for the worst case: a tiny test model (2-3 layers of hidden 32) sums
# about 1000 terms along its longest chain (tests/test_model.py counts them), and 1000 roundings
# (1.2e-4) would let an error of 1e-3 in one part through, which the residuals and LayerNorms
# dilute. Independent roundings grow like sqrt(1000) = 32 of them (Higham, sec. 2.8): 3 times that.
TINY_MODEL = 100 * FP32_EPS  # 1.2e-5 of the largest value compared


def relative_error(actual, expected, scale=None) -> float:
    """max |actual - expected| over the largest |expected|, or over `scale` where the computation
    cancels terms larger than its result (their size is what its rounding scales with). One
    magnitude for the whole tensor, not elementwise: an entry near 0 is held to the rounding of the
    terms that made it, not to its own size."""
    actual, expected = (torch.as_tensor(t).detach().double() for t in (actual, expected))
    scale = expected.abs().max() if scale is None else torch.as_tensor(scale).double()
    assert scale > 0, "a scale of 0 says nothing: give the terms' magnitude"
    return float((actual - expected).abs().max() / scale)


# ----------------------------------------------------------------------------- tiny models, by hand
# test_model.py and test_heads.py: a tiny BERT with every parameter drawn afresh, and the plain tensor
# algebra its parts are checked against.

# Tolerances relative to the largest value compared (relative_error), in fp32 roundings: about
# one per term along the longest chain of sums. tiny_config sums 32 terms in a projection and in a
# LayerNorm statistic, 8 in a score, 7 over the keys and 48 in the FFN's down projection.
PART = 100 * FP32_EPS  # attention 32 + 8 + 7 + 7 + 32; the FFN 32 + 48; a head and its loss: ~90 terms
LAYER = 300 * FP32_EPS  # attention, FFN and two LayerNorms (2 x 2 x 32): ~300 terms


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


def layer_norm(x, norm: nn.LayerNorm):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # the biased variance, as LayerNorm uses
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))  # the exact (erf) GELU of the original BERT


def linear(x, lin: nn.Linear, rows=slice(None)):
    return x @ lin.weight[rows].T + lin.bias[rows]


def gradient_scale(grads: dict, name: str):
    """The magnitude the rounding of gradient `name` scales with (relative_error's scale): its own
    (None), but for a key bias. That one adds q . b_k to all of a query's scores, which softmax
    ignores: its gradient is 0 in exact arithmetic, and what is computed is the rounding of terms
    the size of the key weights' gradient."""
    return grads[name.replace("key.bias", "key.weight")].abs().max() if name.endswith("key.bias") else None


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


# ----------------------------------------------------------------------------- fine-tuning data
# Writers shared by test_tasks.py and test_finetune.py (conftest.py's fixtures hand them out): tiny
# GLUE and SQuAD files in the standard downloads' layouts, and a checkpoint vocabulary holding every
# word they use, so a word is one token (other words become [UNK]).

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


def vocab_folder(folder) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + TASK_WORDS) + "\n")
    return str(folder)


def glue_files(folder, task: str, rows: int = 8) -> dict:
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


def squad_example(qid: str, answer: str = SQUAD_ANSWER, start: int | None = None) -> dict:
    start = SQUAD_CONTEXT.index(answer) if start is None else start
    return {"id": qid, "question": "what is it ?", "context": SQUAD_CONTEXT,
            "answers": [{"text": answer, "answer_start": start}]}


# ----------------------------------------------------------------------------- tickets
# Literal tickets for a tiny 3-layer model, shared by test_ticket.py and test_prune.py, so
# neither depends on draw_ticket: a blanked-out function fails its own tests only.

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
# test_train_input.py (bad input; nothing a user has is lost), test_experiment.py and tests/ddp_soak.py.

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


def files_under(folder) -> dict:
    """Every file under `folder` (but run locks): relative path -> (mtime in ns, bytes)."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if name != ".lock":
                path = os.path.join(root, name)
                found[os.path.relpath(path, folder)] = (os.stat(path).st_mtime_ns, open(path, "rb").read())
    return found


# A tiny search: a loose epsilon for a tiny model; no dropout (see test_train.py's compile test); FFN
# widths unrounded, so the paper's 40% exactly (test_train.py tests the rounding). SEARCH draws at a
# fixed step (conftest.py's `searched`); EARLY_BIRD leaves the draw to the rule, which fires well
# within its 200 steps at this learning rate (test_train.py's test of the rule).
EARLY_BIRD = dict(phase="search", max_steps=200, eb_k=3, eb_epsilon=0.3, lr=1e-2, lambda_head=1e-2, lambda_ffn=1e-2,
                  dropout=0.0, ffn_multiple=1)
SEARCH = dict(EARLY_BIRD, max_steps=24, draw_step=12)


# max_minutes: a budget far off, so the ranks agree at every log step that time is left (runtime.any_rank);
# fp32 pinned: the torchrun processes run the real --precision auto probe, the fixture cannot reach them
DDP_ONE = dict(phase="search", precision="fp32", dropout=0.0, max_steps=6, eb_epsilon=0.0, max_minutes=60.0, log_every=2)
DDP_TWO = dict(DDP_ONE, batch_size=4, eval_batches=8)  # batch 4 x 2 processes; the same 32 held-out sequences


def torchrun_two_processes(cfg: train.Config, timeout: float = 240) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node=2 train.py` with cfg's settings, 2 CPU processes (gloo).
    tests/ddp_soak.py repeats it to catch a rare failure of the processes' teardown."""
    args = [f"--{k.replace('_', '-')}={v}" for k, v in vars(cfg).items() if not isinstance(v, bool)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               os.path.join(ROOT, "train.py"), *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as e:
            # SIGTERM: torchrun stops its workers (each in its own session) before it exits;
            # a SIGKILL would leave them running, orphaned
            proc.terminate()
            try:
                e.output, e.stderr = proc.communicate(timeout=60)  # what it printed before it hung
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    return subprocess.CompletedProcess(command, proc.returncode, out, err)
