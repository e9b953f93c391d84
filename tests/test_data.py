"""Tests for data.py: tokenizer, prepare, masking and the resumable batch stream.
A throwaway WordPiece vocab is trained in-process on part of the built-in corpus."""
import os
import time

import numpy as np
import pytest
import torch

import data

MAX_LEN, BATCH = 32, 8


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return data.builtin_corpus(str(tmp_path_factory.mktemp("builtin")))[0]


@pytest.fixture(scope="module")
def docs(corpus):
    """The first 300 documents of the built-in corpus (about 400 KB)."""
    return open(corpus, encoding="utf-8").read().split("\n\n")[:300]


@pytest.fixture(scope="module")
def tokenizer(docs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vocab")
    path = folder / "text.txt"
    path.write_text("\n\n".join(docs))
    return data.load_tokenizer(data.train_tokenizer([str(path)], str(folder), vocab_size=1000))


@pytest.fixture(scope="module")
def special(tokenizer):
    return {t: tokenizer.token_to_id(t) for t in data.SPECIALS}


@pytest.fixture(scope="module")
def prepared(docs, tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepared")
    (folder / "text.txt").write_text("\n\n".join(docs) + "\n")
    meta = data.prepare([str(folder / "text.txt")], tokenizer, str(folder), val_fraction=0.1)
    return str(folder), meta


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


# ----------------------------------------------------------------------------- corpus and tokenizer

def test_builtin_corpus_is_real_english_text(corpus):
    text = open(corpus, encoding="utf-8").read()
    assert os.path.getsize(corpus) > 1_000_000
    words = text.lower().split()
    assert sum(w in ("the", "of", "a", "to", "is", "and", "in") for w in words) / len(words) > 0.1
    assert text.count("\n\n") > 500  # many documents, separated by blank lines
    assert data.builtin_corpus(os.path.dirname(corpus)) == [corpus]  # built once


def test_trained_vocab_puts_specials_first_and_is_cached(tokenizer, docs, tmp_path):
    assert [tokenizer.token_to_id(t) for t in data.SPECIALS] == [0, 1, 2, 3, 4]
    assert tokenizer.encode("The function").tokens == ["the", "function"]  # lowercased; no [CLS] / [SEP] added
    (tmp_path / "a.txt").write_text("\n\n".join(docs[:50]))
    vocab = data.train_tokenizer([str(tmp_path / "a.txt")], str(tmp_path), vocab_size=300)
    mtime = os.stat(vocab).st_mtime_ns
    assert data.train_tokenizer([str(tmp_path / "a.txt")], str(tmp_path), vocab_size=300) == vocab
    assert os.stat(vocab).st_mtime_ns == mtime
    data.train_tokenizer([str(tmp_path / "a.txt")], str(tmp_path), vocab_size=400)  # other inputs: retrained
    assert data.load_tokenizer(vocab).get_vocab_size() == 400


def test_load_tokenizer_matches_bert_uncased_vocab(minilm_dir):
    tokenizer = data.load_tokenizer(os.path.join(minilm_dir, "vocab.txt"))
    assert [tokenizer.token_to_id(t) for t in data.SPECIALS] == [0, 100, 101, 102, 103]
    assert tokenizer.encode("Hello World").ids == [7592, 2088]  # bert-base-uncased's ids


def test_load_tokenizer_rejects_bad_vocab(tmp_path):
    with pytest.raises(ValueError, match="nope.txt"):
        data.load_tokenizer(str(tmp_path / "nope.txt"))
    (tmp_path / "vocab.txt").write_text("hello\nworld\n[UNK]\n")
    with pytest.raises(ValueError, match=r"vocab.txt.*\[PAD\]"):
        data.load_tokenizer(str(tmp_path / "vocab.txt"))


# ----------------------------------------------------------------------------- prepare

def test_prepare_round_trip_and_split_by_whole_documents(prepared, docs, tokenizer):
    folder, meta = prepared
    train, val = stored_docs(folder, "train", meta["dtype"]), stored_docs(folder, "val", meta["dtype"])
    assert meta["train_docs"] == len(train) and meta["val_docs"] == len(val) and len(train) + len(val) == len(docs)
    assert 10 <= len(val) <= 50  # about 10% of 300
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
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 1000 and meta["max_token_id"] < 1000
    assert os.path.getsize(os.path.join(folder, "train.bin")) == 2 * meta["train_tokens"]


def test_prepare_splits_on_blank_lines_or_else_lines(tokenizer, tmp_path):
    (tmp_path / "paragraphs.txt").write_text("one line\nand two\n\n\nsecond doc\n  \nthird\ndoc\n")
    (tmp_path / "lines.txt").write_text("first doc\nsecond doc\n\nthird doc\nfourth\n")  # a blank line: paragraphs
    (tmp_path / "one_per_line.txt").write_text("a\nb c\nd\ne\n\n\n")  # blank lines only at the end
    for name, n_docs in (("paragraphs.txt", 3), ("lines.txt", 2), ("one_per_line.txt", 4)):
        meta = data.prepare([str(tmp_path / name)], tokenizer, str(tmp_path / name[:-4]), val_fraction=0)
        assert meta["train_docs"] == n_docs, name


def test_prepare_keeps_a_held_out_document_for_a_tiny_corpus(tokenizer, tmp_path):
    (tmp_path / "tiny.txt").write_text("alpha doc\nbeta doc\ngamma doc\n")
    meta = data.prepare([str(tmp_path / "tiny.txt")], tokenizer, str(tmp_path), val_fraction=0.01)
    assert meta["train_docs"] == 2 and meta["val_docs"] == 1
    assert stored_docs(str(tmp_path), "val", meta["dtype"]) == [tokenizer.encode("gamma doc").ids]


def test_prepare_reuses_its_cache_until_the_input_changes(tokenizer, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the first document\n\nthe second document\n")
    meta = data.prepare([str(text)], tokenizer, str(tmp_path), val_fraction=0)
    mtime = os.stat(tmp_path / "train.bin").st_mtime_ns
    assert data.prepare([str(text)], tokenizer, str(tmp_path), val_fraction=0) == meta
    assert os.stat(tmp_path / "train.bin").st_mtime_ns == mtime  # not tokenized again
    text.write_text("a changed first document\n\nthe second document\n")
    assert data.prepare([str(text)], tokenizer, str(tmp_path), val_fraction=0)["train_tokens"] > meta["train_tokens"]


def test_prepare_rejects_bad_input(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="missing.txt"):
        data.prepare([str(tmp_path / "missing.txt")], tokenizer, str(tmp_path))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt"):
        data.prepare([str(tmp_path / "empty.txt")], tokenizer, str(tmp_path))
    (tmp_path / "blank.txt").write_text("\n   \n\n")
    with pytest.raises(ValueError, match="blank.txt"):
        data.prepare([str(tmp_path / "blank.txt")], tokenizer, str(tmp_path))
    assert not os.path.exists(tmp_path / "meta.json")


def test_batches_reject_unprepared_dir_and_too_small_vocab(prepared, special, tmp_path):
    with pytest.raises(ValueError, match="meta.json.*prepare"):
        data.MLMBatches(str(tmp_path), "train", BATCH, MAX_LEN, 1000, special)
    with pytest.raises(ValueError, match="meta.json"):
        data.MLMBatches(prepared[0], "train", BATCH, MAX_LEN, 500, special)


# ----------------------------------------------------------------------------- masking and batches

def test_chunk_index_cuts_documents_into_consecutive_chunks():
    starts, lengths = data.chunk_index(np.array([0, 5, 5, 12]), 3)  # docs of 5, 0 and 7 tokens
    assert starts.tolist() == [0, 3, 5, 8, 11] and lengths.tolist() == [3, 2, 3, 3, 1]


def test_masking_follows_bert_statistics(prepared, tokenizer, special):
    loader = data.MLMBatches(prepared[0], "train", BATCH, 128, tokenizer.get_vocab_size(), special)
    ids, _ = loader.sequences(np.tile(np.arange(len(loader.starts)), 5))  # (B, T) about 15k rows
    specials = np.array(list(special.values()))
    input_ids, positions, labels = data.mask_tokens(ids, specials, loader.random_ids, special["[MASK]"],
                                                    loader.max_predictions, 0.15, data.RowRandom("mask", np.arange(len(ids)), 0, 0))
    rows = np.arange(len(ids))[:, None]
    used = labels != -100
    eligible = ~np.isin(ids, specials)
    n = eligible.sum(1)
    assert (used.sum(1) == np.maximum(1, np.round(0.15 * n))).all()  # exactly 15%, at least one
    assert abs(used.sum() / eligible.sum() - 0.15) < 0.005  # rounding moves short rows only a little
    assert eligible[rows, positions][used].all()  # never [CLS], [SEP], [PAD]
    assert (positions[~used] == 0).all()
    assert (labels[used] == ids[rows, positions][used]).all()  # labels are the original ids
    untouched = np.ones_like(eligible)
    untouched[rows.repeat(positions.shape[1], 1)[used], positions[used]] = False
    assert (input_ids[untouched] == ids[untouched]).all()
    new = input_ids[rows, positions][used]
    masked, kept = new == special["[MASK]"], new == labels[used]
    randomized = ~masked & ~kept
    stderr = np.sqrt(0.1 * 0.9 / used.sum())
    assert abs(masked.mean() - 0.8) < 5 * stderr and abs(kept.mean() - 0.1) < 5 * stderr
    assert abs(randomized.mean() - 0.1) < 5 * stderr and not np.isin(new[randomized], specials).any()


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
