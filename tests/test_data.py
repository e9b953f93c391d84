"""Tests for data.py: tokenizer, preparing a corpus into a cache, masking and the resumable
batch stream. The fixed vocabulary tests/vocab.txt and the generated small corpus (conftest.py)."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import corpus
import data
from checkpoint import temporary

MAX_LEN, BATCH = 32, 8


@pytest.fixture(scope="module")
def tokenizer(fixed_vocab):
    return data.load_tokenizer(fixed_vocab)


@pytest.fixture(scope="module")
def special(tokenizer):
    return {t: tokenizer.token_to_id(t) for t in data.SPECIALS}


@pytest.fixture(scope="module")
def docs(small_corpus):
    return open(small_corpus, encoding="utf-8").read().splitlines()


@pytest.fixture(scope="module")
def prepared(small_corpus, fixed_vocab, tmp_path_factory):
    return data.prepare_corpus([small_corpus], str(tmp_path_factory.mktemp("cache")), vocab=fixed_vocab)


def batches(prepared, tokenizer, special, n, **kw):
    loader = data.MLMBatches(prepared[0], "train", BATCH, MAX_LEN, tokenizer.get_vocab_size(), special, **kw)
    return [next(loader) for _ in range(n)]


def assert_same_batches(a, b):
    for x, y in zip(a, b, strict=True):
        for k in x:
            assert (x[k] is None and y[k] is None) or torch.equal(x[k], y[k]), k


def stored_docs(folder, split, dtype):
    tokens = np.fromfile(os.path.join(folder, f"{split}.bin"), dtype=dtype)
    offsets = np.load(os.path.join(folder, f"{split}_docs.npy"))
    return [tokens[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]


def write(path, content) -> str:
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return str(path)


def mtimes(folder) -> dict:
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, fs in os.walk(folder) for f in fs}


# ----------------------------------------------------------------------------- tokenizer

def test_fixed_vocab_puts_specials_first_and_splits_unknown_words(tokenizer):
    assert [tokenizer.token_to_id(t) for t in data.SPECIALS] == [0, 1, 2, 3, 4] and tokenizer.get_vocab_size() == 1500
    assert tokenizer.encode("The function").tokens == ["the", "function"]  # lowercased; no [CLS] / [SEP] added
    assert tokenizer.encode("Xyzzy!").tokens == ["x", "##y", "##z", "##z", "##y", "!"]


def test_trained_vocab_puts_specials_first(small_corpus, tmp_path):
    vocab = data.train_tokenizer([small_corpus], str(tmp_path), vocab_size=300)
    assert vocab == str(tmp_path / "vocab.txt")
    tokenizer = data.load_tokenizer(vocab)
    assert [tokenizer.token_to_id(t) for t in data.SPECIALS] == [0, 1, 2, 3, 4] and tokenizer.get_vocab_size() == 300


def test_load_tokenizer_matches_bert_uncased_vocab(minilm_dir):
    tokenizer = data.load_tokenizer(os.path.join(minilm_dir, "vocab.txt"))
    assert [tokenizer.token_to_id(t) for t in data.SPECIALS] == [0, 100, 101, 102, 103]
    assert tokenizer.encode("Hello World").ids == [7592, 2088]  # bert-base-uncased's ids


@pytest.mark.parametrize("name, content, message", [
    ("nope.txt", None, r"nope.txt: no such vocab file"),
    ("specials.txt", "hello\nworld\n[UNK]\n", r"specials.txt: not a BERT vocab.*\[PAD\]"),
    ("binary.txt", bytes(range(256)), r"binary.txt: not text"),
    ("empty.txt", "", r"empty.txt: the file is empty"),
], ids=["missing", "no specials", "binary", "empty"])
def test_load_tokenizer_rejects_bad_vocab_in_one_line(tmp_path, name, content, message):
    path = write(tmp_path / name, content) if content is not None else str(tmp_path / name)
    with pytest.raises(ValueError, match=message):
        data.load_tokenizer(path)


# ----------------------------------------------------------------------------- corpus.prepare: the token files

def test_prepare_round_trip_and_split_by_whole_documents(docs, tokenizer, small_corpus, tmp_path):
    meta = corpus.prepare([small_corpus], tokenizer, str(tmp_path), val_fraction=0.1)
    train, val = stored_docs(str(tmp_path), "train", meta["dtype"]), stored_docs(str(tmp_path), "val", meta["dtype"])
    assert meta["train_docs"] == len(train) and meta["val_docs"] == len(val) and len(train) + len(val) == len(docs)
    assert 0.05 * len(docs) <= len(val) <= 0.15 * len(docs)
    # Every document, in order, is exactly its tokenization, in train or in val, never in both.
    t = v = 0
    for doc in docs:
        ids = tokenizer.encode(doc).ids
        if t < len(train) and train[t] == ids:
            t += 1
        else:
            assert val[v] == ids
            v += 1
    assert tokenizer.decode(train[0]) == tokenizer.decode(tokenizer.encode(docs[0]).ids)


def test_prepare_uses_uint16_for_a_small_vocab(prepared):
    folder, meta = prepared
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 1500 and meta["max_token_id"] < 1500
    assert os.path.getsize(os.path.join(folder, "train.bin")) == 2 * meta["train_tokens"]


def test_prepare_splits_on_blank_lines_or_else_lines(tokenizer, tmp_path):
    cases = {"one line\nand two\n\n\nsecond doc\n  \nthird\ndoc\n": 3,
             "first doc\nsecond doc\n\nthird doc\nfourth\n": 2,  # a blank line: paragraphs
             "a\nb c\nd\ne\n\n\n": 4}  # blank lines only at the end: one document a line
    for i, (text, n_docs) in enumerate(cases.items()):
        meta = corpus.prepare([write(tmp_path / f"{i}.txt", text)], tokenizer, str(tmp_path / str(i)), val_fraction=0)
        assert meta["train_docs"] == n_docs, text


def test_prepare_keeps_a_held_out_document_for_a_tiny_corpus(tokenizer, tmp_path):
    meta = corpus.prepare([write(tmp_path / "tiny.txt", "alpha doc\nbeta doc\ngamma doc\n")], tokenizer,
                        str(tmp_path), val_fraction=0.01)
    assert meta["train_docs"] == 2 and meta["val_docs"] == 1
    assert stored_docs(str(tmp_path), "val", meta["dtype"]) == [tokenizer.encode("gamma doc").ids]


# ----------------------------------------------------------------------------- prepare_corpus: the cache

def test_prepare_corpus_fills_a_cache_named_after_its_input(prepared, small_corpus, fixed_vocab, special):
    folder, meta = prepared
    assert os.path.basename(folder).startswith("small_corpus-") and len(os.path.basename(folder)) == 13 + 8
    assert sorted(os.listdir(os.path.dirname(folder))) == [os.path.basename(folder)]  # no temporary folder left
    assert meta == json.load(open(os.path.join(folder, "meta.json")))
    assert meta["vocab_path"] == os.path.abspath(fixed_vocab) and meta["lowercase"] is True
    assert meta["files"] == [os.path.abspath(small_corpus)]
    assert meta["train_tokens"] > 20_000 and meta["val_tokens"] > 3_000  # a corpus this small holds out 20%
    data.MLMBatches(folder, "val", BATCH, MAX_LEN, 1500, special)  # readable


def test_prepare_corpus_trains_a_vocab_into_its_cache(small_corpus, tmp_path):
    folder, meta = data.prepare_corpus([small_corpus], str(tmp_path), vocab_size=300)
    assert meta["vocab_path"] == os.path.join(os.path.abspath(folder), "vocab", "vocab.txt")
    assert data.load_tokenizer(meta["vocab_path"]).get_vocab_size() == 300 == meta["vocab_size"]


def test_prepare_corpus_reuses_a_finished_cache_without_work(prepared, small_corpus, fixed_vocab, monkeypatch):
    folder, meta = prepared
    before = mtimes(folder)
    monkeypatch.setattr(corpus, "prepare", lambda *a, **k: pytest.fail("prepared again"))
    assert data.prepare_corpus([small_corpus], os.path.dirname(folder), vocab=fixed_vocab) == (folder, meta)
    assert mtimes(folder) == before


def test_two_corpora_in_one_cache_root_keep_their_own_caches(small_corpus, fixed_vocab, tmp_path):
    text = open(small_corpus, encoding="utf-8").read()
    a, b = write(tmp_path / "a.txt", text), write(tmp_path / "b.txt", text[:len(text) // 2])
    root = str(tmp_path / "cache")
    dir_a, meta_a = data.prepare_corpus([a], root, vocab=fixed_vocab)
    before = mtimes(dir_a)
    dir_b, meta_b = data.prepare_corpus([b], root, vocab=fixed_vocab)
    dir_lower, _ = data.prepare_corpus([a], root, vocab=fixed_vocab, lowercase=False)  # other settings: other cache
    assert len({dir_a, dir_b, dir_lower}) == 3 and mtimes(dir_a) == before
    assert meta_a["files"] == [a] and meta_b["files"] == [b] and meta_b["train_tokens"] < meta_a["train_tokens"]
    os.utime(a, ns=(1, 1))  # the file changed: a new cache, the old one left as it was
    assert data.prepare_corpus([a], root, vocab=fixed_vocab)[0] not in (dir_a, dir_lower) and mtimes(dir_a) == before


@pytest.mark.parametrize("name, content, vocab, message", [
    ("binary.txt", bytes(range(256)) * 8, "fixed", r"binary.txt: not text \(a NUL byte"),
    ("latin1.txt", "Un café, s'il vous plaît.\n".encode("latin-1") * 100, "fixed",
     r"latin1.txt: not UTF-8 text \(byte 0xe9"),
    ("empty.txt", "", "fixed", r"empty.txt: the file is empty"),
    ("short.txt", "the end\n", "fixed", r"short.txt: too little text: 1 document"),
    ("short.txt", "the end\n", "", r"short.txt: too little text to train a vocabulary of 8192 tokens"),
    ("text.txt", "good text\n", "binary", r"vocab.txt: not text"),
    ("text.txt", "good text\n", "empty", r"vocab.txt: the file is empty"),
], ids=["binary", "latin-1", "empty", "one line", "one line, no vocab", "binary vocab", "empty vocab"])
def test_prepare_corpus_rejects_bad_input_in_one_line_and_writes_nothing(
        tmp_path, fixed_vocab, small_corpus, name, content, vocab, message):
    bad = write(tmp_path / name, content)
    files = [bad] if name == "short.txt" else [small_corpus, bad]  # the error names the bad one of several
    if vocab in ("binary", "empty"):
        vocab = write(tmp_path / "vocab.txt", bytes(range(256)) if vocab == "binary" else "")
    with pytest.raises(ValueError, match=message):
        data.prepare_corpus(files, str(tmp_path / "cache"), vocab=fixed_vocab if vocab == "fixed" else vocab)
    assert not os.path.exists(tmp_path / "cache") or os.listdir(tmp_path / "cache") == []


def test_prepare_corpus_loses_a_race_gracefully(small_corpus, fixed_vocab, tmp_path, monkeypatch):
    """Another process finishes the same corpus between our check and our rename: we use its folder."""
    winner, winner_meta = data.prepare_corpus([small_corpus], str(tmp_path / "other"), vocab=fixed_vocab)
    real_prepare, root = corpus.prepare, tmp_path / "cache"

    def prepare_while_another_finishes(*args, **kwargs):
        meta = real_prepare(*args, **kwargs)
        shutil.copytree(winner, root / os.path.basename(winner))
        (root / os.path.basename(winner) / "winner").write_text("")
        return meta
    monkeypatch.setattr(corpus, "prepare", prepare_while_another_finishes)
    folder, meta = data.prepare_corpus([small_corpus], str(root), vocab=fixed_vocab)
    assert folder == str(root / os.path.basename(winner)) and meta == winner_meta
    assert os.path.exists(os.path.join(folder, "winner"))  # theirs, not overwritten by ours
    assert os.listdir(root) == [os.path.basename(winner)]  # our temporary folder is gone


def test_a_crashed_preparation_is_never_taken_for_a_cache(small_corpus, fixed_vocab, tmp_path, monkeypatch,
                                                           dead_pid):
    root = tmp_path / "cache"

    def crash(files, tokenizer, out_dir, *args):
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "meta.json"), "w") as f:
            f.write('{"half": "written"}')
        raise KeyboardInterrupt
    monkeypatch.setattr(corpus, "prepare", crash)
    with pytest.raises(KeyboardInterrupt):
        data.prepare_corpus([small_corpus], str(root), vocab=fixed_vocab)
    assert os.listdir(root) == []  # the temporary folder was removed
    monkeypatch.undo()
    key = data.corpus_key([small_corpus], fixed_vocab, 8192, True, data.VAL_TOKENS, 0)
    killed = temporary(str(root / key)).rsplit("-", 1)[0] + f"-{dead_pid}"  # a killed process's, never renamed
    os.makedirs(killed)
    (Path(killed) / "meta.json").write_text("{}")
    folder, meta = data.prepare_corpus([small_corpus], str(root), vocab=fixed_vocab)
    assert folder == str(root / key) and meta["train_tokens"] > 0
    assert os.listdir(root) == [key]  # the killed process's folder is gone


# ----------------------------------------------------------------------------- masking and batches

def test_chunk_index_cuts_documents_into_consecutive_chunks():
    starts, lengths = data.chunk_index(np.array([0, 5, 5, 12]), 3)  # docs of 5, 0 and 7 tokens
    assert starts.tolist() == [0, 3, 5, 8, 11] and lengths.tolist() == [3, 2, 3, 3, 1]


def synthetic_rows(rng, rows: int, length: int, min_tokens: int = 1):
    """[CLS] random ids [SEP] [PAD]... rows (specials 0-4 as in tests/vocab.txt) and their real lengths."""
    n = rng.integers(min_tokens, length - 1, rows)  # real tokens per row
    ids = rng.integers(5, 1500, (rows, length))
    ids[:, 0] = 2
    ids[np.arange(length) > n[:, None]] = 0
    ids[np.arange(rows), n + 1] = 3
    return ids, n


def test_mask_tokens_follows_bert_statistics():
    """Devlin et al. 2019, Sec. 3.1: 15% of the tokens are predicted, of those 80% [MASK], 10% random, 10% kept."""
    rng = np.random.default_rng(0)
    ids, n = synthetic_rows(rng, 4000, 130)
    specials, random_ids = np.arange(5), np.arange(5, 1500)
    input_ids, positions, labels = data.mask_tokens(ids, specials, random_ids, 4, 20, 0.15, rng)
    rows = np.arange(len(ids))[:, None]
    used = labels != -100
    assert (used.sum(1) == np.maximum(1, np.round(0.15 * n))).all()  # exactly 15% of each row, at least one
    assert (ids[rows, positions][used] >= 5).all()  # never [CLS], [SEP], [PAD]
    assert (labels[used] == ids[rows, positions][used]).all() and (positions[~used] == 0).all()
    assert (np.diff(positions, axis=1)[used[:, 1:]] > 0).all()  # distinct, in reading order, used slots first
    untouched = np.ones(ids.shape, bool)
    untouched[rows.repeat(positions.shape[1], 1)[used], positions[used]] = False
    assert (input_ids[untouched] == ids[untouched]).all()
    new = input_ids[rows, positions][used]
    masked, kept = new == 4, new == labels[used]
    randomized = ~masked & ~kept
    # Five standard errors (about 0.004 for 80%, 0.003 for 10% with ~250k predictions): with a
    # fixed seed the test cannot flake, and a numpy that draws other numbers still passes. A random
    # token equal to the original (1 in 1495 of the 10%) counts as kept: 0.00007, well inside.
    tolerance = lambda p: 5 * np.sqrt(p * (1 - p) / used.sum())
    assert abs(masked.mean() - 0.8) < tolerance(0.8) and abs(kept.mean() - 0.1) < tolerance(0.1)
    assert abs(randomized.mean() - 0.1) < tolerance(0.1) and (new[randomized] >= 5).all()


def test_mask_tokens_caps_the_predictions_per_row():
    rng = np.random.default_rng(1)
    ids, n = synthetic_rows(rng, 500, 200, min_tokens=150)  # 15% of 150-197 tokens is 23-30
    _, positions, labels = data.mask_tokens(ids, np.arange(5), np.arange(5, 1500), 4, 20, 0.15, rng)
    assert positions.shape == (500, 20) and ((labels != -100).sum(1) == 20).all()
    ids = np.array([[2, 7, 3, 0, 0], [2, 3, 0, 0, 0]])  # one real token; none
    _, positions, labels = data.mask_tokens(ids, np.arange(5), np.arange(5, 1500), 4, 2, 0.15, rng)
    assert labels.tolist() == [[7, -100], [-100, -100]] and positions.tolist() == [[1, 0], [0, 0]]


def test_batches_reject_unprepared_dir_and_too_small_vocab(prepared, special, tmp_path):
    with pytest.raises(ValueError, match="meta.json.*prepare_corpus"):
        data.MLMBatches(str(tmp_path), "train", BATCH, MAX_LEN, 1500, special)
    with pytest.raises(ValueError, match="meta.json.*token id"):
        data.MLMBatches(prepared[0], "train", BATCH, MAX_LEN, 1000, special)


def test_batches_hold_masked_sequences_of_the_data(prepared, tokenizer, special):
    loader = data.MLMBatches(prepared[0], "train", BATCH, MAX_LEN, tokenizer.get_vocab_size(), special)
    batch = next(loader)
    ids, lengths = loader.sequences(loader.epoch_order(0)[:BATCH])
    assert batch["input_ids"].shape == (BATCH, MAX_LEN) and batch["input_ids"].dtype == torch.int64
    assert batch["mlm_positions"].shape == (BATCH, 5)  # ceil(0.15 * 30)
    assert (batch["token_type_ids"] == 0).all()
    assert (ids[:, 0] == special["[CLS]"]).all() and (ids[np.arange(BATCH), lengths - 1] == special["[SEP]"]).all()
    clean = batch["input_ids"].clone()
    clean.scatter_(1, batch["mlm_positions"], torch.where(batch["mlm_labels"] == -100, clean[:, :1], batch["mlm_labels"]))
    assert torch.equal(clean, torch.from_numpy(ids))
    start = loader.starts[loader.epoch_order(0)[0]]  # the first row is a chunk of train.bin
    assert ids[0, 1:lengths[0] - 1].tolist() == loader.tokens[start:start + lengths[0] - 2].tolist()


def test_attention_mask_is_none_only_without_padding(prepared, tokenizer, special):
    loader = data.MLMBatches(prepared[0], "train", BATCH, MAX_LEN, tokenizer.get_vocab_size(), special)
    full = np.flatnonzero(loader.lengths == MAX_LEN - 2)[:BATCH]
    short = np.flatnonzero(loader.lengths < MAX_LEN - 2)[:1]
    assert loader.batch(full, np.random.default_rng(0))["attention_mask"] is None
    batch = loader.batch(np.concatenate([full[1:], short]), np.random.default_rng(0))
    mask = batch["attention_mask"]
    assert mask.dtype == torch.bool and mask[:-1].all() and mask[-1].sum() == loader.lengths[short[0]] + 2
    assert (batch["input_ids"][-1][~mask[-1]] == special["[PAD]"]).all()


def test_same_seed_same_batches_other_seed_other_batches(prepared, tokenizer, special):
    a = batches(prepared, tokenizer, special, 3, seed=1)
    assert_same_batches(a, batches(prepared, tokenizer, special, 3, seed=1))
    assert not torch.equal(a[0]["input_ids"], batches(prepared, tokenizer, special, 1, seed=2)[0]["input_ids"])


def test_resume_continues_with_the_same_batches_across_epochs(prepared, tokenizer, special):
    loader = data.MLMBatches(prepared[0], "train", BATCH, MAX_LEN, tokenizer.get_vocab_size(), special)
    n = loader.batches_per_epoch
    straight = [next(loader) for _ in range(n + 3)]
    for stop in (n - 2, n, n + 1):  # before, at and after the epoch boundary
        first = data.MLMBatches(prepared[0], "train", BATCH, MAX_LEN, tokenizer.get_vocab_size(), special)
        for _ in range(stop):
            next(first)
        resumed = data.MLMBatches(prepared[0], "train", BATCH, MAX_LEN, tokenizer.get_vocab_size(), special)
        resumed.load_state_dict(first.state_dict())
        assert_same_batches(straight[stop:], [next(resumed) for _ in range(n + 3 - stop)])
    assert not torch.equal(straight[0]["input_ids"], straight[n]["input_ids"])  # a new epoch reshuffles


def test_ranks_read_disjoint_samples_that_cover_one_rank(prepared, tokenizer, special):
    make = lambda rank, world: data.MLMBatches(prepared[0], "train", BATCH, MAX_LEN, tokenizer.get_vocab_size(),
                                               special, rank=rank, world_size=world)
    one, r0, r1 = make(0, 1), make(0, 2), make(1, 2)
    for epoch in (0, 1):
        a, b, whole = r0.epoch_order(epoch), r1.epoch_order(epoch), one.epoch_order(epoch)
        assert len(a) == len(b) and not set(a) & set(b)
        assert set(a) | set(b) == set(whole[:2 * len(a)]) and len(whole) - 2 * len(a) <= 1
    assert r0.batches_per_epoch == r1.batches_per_epoch
    batch = next(r1)  # what rank 1 reads is its own samples
    clean = batch["input_ids"].clone()
    used = batch["mlm_labels"] != -100
    clean[used.nonzero(as_tuple=True)[0], batch["mlm_positions"][used]] = batch["mlm_labels"][used]
    assert torch.equal(clean, torch.from_numpy(r1.sequences(r1.epoch_order(0)[:BATCH])[0]))


def test_eval_batches_are_the_same_every_call(prepared, tokenizer, special):
    make = lambda: data.MLMBatches(prepared[0], "val", BATCH, MAX_LEN, tokenizer.get_vocab_size(), special, seed=3)
    a = make().eval_batches(4)
    assert len(a) == 4
    assert_same_batches(a, make().eval_batches(4))
    loader = make()
    next(loader)
    assert_same_batches(a, loader.eval_batches(4))


def test_two_ranks_mask_their_halves_as_one_process_masks_the_whole_batch(prepared, tokenizer, special):
    """DDP equivalence starts here: the masking of a sample depends on the sample, not on the rank."""
    make = lambda batch, rank, world: data.MLMBatches(prepared[0], "train", batch, MAX_LEN,
                                                      tokenizer.get_vocab_size(), special, rank=rank, world_size=world)
    one, r0, r1 = make(2 * BATCH, 0, 1), make(BATCH, 0, 2), make(BATCH, 1, 2)
    for _ in range(3):
        whole, a, b = next(one), next(r0), next(r1)
        for key in ("input_ids", "mlm_positions", "mlm_labels"):  # rank r holds rows r, r + 2, r + 4, ...
            assert torch.equal(whole[key][0::2], a[key]) and torch.equal(whole[key][1::2], b[key]), key


def test_row_random_is_uniform_and_keyed_by_sample():
    r = data.RowRandom("mask", np.arange(2000), 7, 0).random((2000, 50))
    assert r.min() >= 0 and r.max() < 1 and abs(r.mean() - 0.5) < 0.005 and abs(r.var() - 1 / 12) < 0.002
    again = data.RowRandom("mask", np.array([5, 3]), 7, 0).random((2, 50))
    assert np.array_equal(again, r[[5, 3]])  # the same sample, the same numbers, wherever it sits
    assert not np.array_equal(data.RowRandom("mask", np.array([5]), 7, 1).random((1, 50)), r[[5]])  # next epoch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pin_memory_pins_every_tensor(prepared, tokenizer, special):
    batch = batches(prepared, tokenizer, special, 1, pin_memory=True)[0]
    assert all(v.is_pinned() for v in batch.values() if v is not None)
