"""
The masked-language-model data pipeline: text files -> WordPiece ids on disk -> masked batches.
(Where the text comes from, the built-in corpus and a user's files, is corpus.py.)

1. `train_tokenizer` / `load_tokenizer`: BERT's WordPiece vocabulary, one token a line in a vocab.txt.
2. `prepare_corpus`: checks the text files, trains a vocabulary if none is given and tokenizes
   them once, streaming (`corpus.prepare`), into flat token arrays (train.bin, val.bin; memory-mapped
   later, so the corpus may be far larger than RAM) and document offsets, in a cache folder
   named after what it is made from.
3. `MLMBatches`: cuts documents into `[CLS] chunk [SEP]` sequences and masks them as BERT does
   (Devlin et al. 2019, Sec. 3.1 and Appendix A.1): a fraction `mask_prob` of the tokens is
   predicted (BERT's 15%; train.py's laptop recipe 40%); of those 80% become [MASK], 10% a random
   token, 10% stay unchanged.

Departures from BERT's create_pretraining_data.py, on purpose:
- No next-sentence prediction (RoBERTa, Liu et al. 2019, Sec. 4.2, finds it does not help):
  token_type_ids are all zero and a sequence never crosses a document boundary.
- Dynamic masking (RoBERTa Sec. 4.1): a sequence is masked anew each time it is drawn,
  instead of BERT's 10 static copies written to disk.
- Random replacements are drawn from the non-special tokens only.
- No special token is masked, [UNK] included (BERT's script masks [UNK] like a word): the label
  [UNK] stands for any word the vocabulary lacks, so predicting it teaches nothing of the text.
"""
import hashlib
import json
import math
import os
import re
import shutil
import sys
import zlib

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tqdm import tqdm

from checkpoint import atomic, read_json, remove_stale, temporary, write_json
import corpus
from corpus import check_text_file, splitmix64

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VAL_TOKENS = 500_000  # held out by prepare_corpus: 100 evaluation batches of 32 x 128 read ~400k
BYTES_PER_TOKEN = 4  # of English text with a WordPiece vocab (3.9 on the built-in corpus with 8192 tokens)


# ----------------------------------------------------------------------------- tokenizer

def _bert_tokenizer(vocab: dict | None, lowercase: bool) -> Tokenizer:
    """BERT's uncased/cased WordPiece pipeline. No post-processor: [CLS]/[SEP] are added by MLMBatches."""
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)  # strip accents iff lowercase, as BERT
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def load_tokenizer(vocab_path: str, lowercase: bool = True) -> Tokenizer:
    if not os.path.isfile(vocab_path):
        raise ValueError(f"{vocab_path}: no such vocab file (one WordPiece token per line, as BERT's vocab.txt)")
    check_text_file(vocab_path)  # a binary or empty file is one line here, not a tokenizers error
    vocab = models.WordPiece.read_file(vocab_path)
    missing = [t for t in SPECIALS if t not in vocab]
    if missing:
        raise ValueError(f"{vocab_path}: not a BERT vocab, it lacks the special tokens {' '.join(missing)}")
    tokenizer = _bert_tokenizer(vocab, lowercase)
    tokenizer.add_special_tokens(SPECIALS)  # already in the vocab: keeps their ids, and decode can skip them
    return tokenizer


def checkpoint_tokenizer(folder: str, pairs: bool = False) -> tuple[Tokenizer, str, bool]:
    """The tokenizer of a checkpoint folder: its vocab.txt, lower-cased unless its
    tokenizer_config.json says "do_lower_case": false (as for bert-base-cased).
    pairs=True adds BERT's `[CLS] A [SEP] B [SEP]` template (fine-tuning); pre-training adds them itself.
    Returns (tokenizer, vocab path, lowercase)."""
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: no such checkpoint folder")
    vocab, lowercase = os.path.join(folder, "vocab.txt"), True
    tok_cfg = os.path.join(folder, "tokenizer_config.json")
    if os.path.exists(tok_cfg):
        lowercase = bool(read_json(tok_cfg, "tokenizer config").get("do_lower_case", True))
    tokenizer = load_tokenizer(vocab, lowercase)
    if pairs:
        cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tokenizer, vocab, lowercase


def train_tokenizer(files: list[str], out_dir: str, vocab_size: int = 8192, lowercase: bool = True) -> str:
    """Trains a WordPiece vocab on `files` into out_dir/vocab.txt and returns its path.
    The special tokens come first, in SPECIALS order, so [PAD] = 0 as in BERT's vocab.
    Not bit-reproducible: `tokenizers` breaks ties between equally frequent pairs differently
    from run to run (a few tokens of 8192 differ); keep the vocab.txt to repeat a run exactly."""
    os.makedirs(out_dir, exist_ok=True)
    tokenizer = _bert_tokenizer(None, lowercase)
    # limit_alphabet=1000 as BertWordPieceTokenizer: rare characters become [UNK] rather than eat the vocab.
    tokenizer.train(files, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                     limit_alphabet=1000, show_progress=True))
    vocab = tokenizer.get_vocab()
    assert [vocab[t] for t in SPECIALS] == list(range(len(SPECIALS)))
    vocab_path = os.path.join(out_dir, "vocab.txt")
    with atomic(vocab_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(sorted(vocab, key=vocab.get)) + "\n")
    return vocab_path


# ----------------------------------------------------------------------------- prepare

def _names(files: list[str]) -> str:
    """The user's files, for a message."""
    return ", ".join(files[:3]) + (f" (+{len(files) - 3} more)" if len(files) > 3 else "")


def corpus_key(files: list[str], vocab: str, vocab_size: int, lowercase: bool, val_tokens: int, seed: int) -> str:
    """The cache folder's name, e.g. `builtin-1a2b3c4d`: the first file's name, and a hash of all
    the prepared data depends on (each file's path, size and mtime; the vocab file's content, or
    the size of the vocab to train; lowercasing; the held-out size), so different inputs never
    share or overwrite a cache, and a changed file is prepared anew."""
    record = {"files": [(os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files],
              "vocab": hashlib.sha256(open(vocab, "rb").read()).hexdigest() if vocab else vocab_size,
              "lowercase": lowercase, "val_tokens": val_tokens, "seed": seed}
    label = re.sub(r"[^A-Za-z0-9_.]+", "_", os.path.splitext(os.path.basename(files[0]))[0])[:32]
    return f"{label}-{hashlib.sha256(json.dumps(record).encode()).hexdigest()[:8]}"


def corpus_meta(data_dir: str) -> dict:
    """A prepared corpus's meta.json. A vocabulary trained into the folder is taken where the folder is now:
    meta holds the absolute path it had when prepared, which a moved folder no longer has."""
    meta = read_json(os.path.join(data_dir, "meta.json"), "corpus meta")
    own = os.path.join(os.path.abspath(data_dir), "vocab", "vocab.txt")
    return {**meta, "vocab_path": own} if os.path.exists(own) else meta


def prepare_corpus(files: list[str], cache_root: str, vocab: str = "", vocab_size: int = 8192,
                   lowercase: bool = True, val_tokens: int = VAL_TOKENS, seed: int = 0) -> tuple[str, dict]:
    """Text files -> (data_dir, meta): a prepared corpus in cache_root/<corpus_key>/, which
    `MLMBatches(data_dir, ...)` reads. meta (also data_dir/meta.json) holds vocab_path,
    lowercase, train_tokens, val_tokens, files, ...

    Every file and the vocab are checked before anything is written; without `vocab`, a
    WordPiece vocabulary of vocab_size tokens is trained on the files into data_dir/vocab/.
    About val_tokens tokens of whole documents are held out (at most 20% of the corpus), enough
    for a stable held-out accuracy. A finished cache is reused without work. The folder is built
    under a temporary name (with the host and process id) and renamed into place when complete,
    so a crash leaves nothing that passes for a cache (the next preparation removes what a killed
    one left), and of two processes preparing the same corpus at once, the second to finish uses
    the first one's folder."""
    if not files:
        raise ValueError("prepare_corpus: no text files given")
    for f in files:
        if not os.path.isfile(f):
            raise ValueError(f"{f}: no such text file")
    tokenizer = load_tokenizer(vocab, lowercase) if vocab else None  # checks the vocab before any work
    data_dir = os.path.join(cache_root, corpus_key(files, vocab, vocab_size, lowercase, val_tokens, seed))
    meta_path = os.path.join(data_dir, "meta.json")
    if os.path.exists(meta_path):
        print(f"reusing the prepared corpus in {data_dir}", file=sys.stderr)
        return data_dir, corpus_meta(data_dir)
    with tqdm(total=sum(os.path.getsize(f) for f in files), unit="B", unit_scale=True, desc="checking",
              leave=False) as bar:
        for f in files:
            check_text_file(f, bar)
    remove_stale(data_dir)  # what killed processes left
    tmp = temporary(data_dir)
    shutil.rmtree(tmp, ignore_errors=True)  # left by a crashed process that had our pid
    try:
        if tokenizer is None:
            print(f"training a WordPiece vocabulary of {vocab_size} tokens on {_names(files)}", file=sys.stderr)
            tokenizer = load_tokenizer(train_tokenizer(files, os.path.join(tmp, "vocab"), vocab_size, lowercase),
                                       lowercase)
            if tokenizer.get_vocab_size() < vocab_size // 2:  # the trainer ran out of pairs to merge
                raise ValueError(f"{_names(files)}: too little text to train a vocabulary of {vocab_size} tokens "
                                 f"(it gave {tokenizer.get_vocab_size()}); give more text, a smaller "
                                 f"vocab size or a vocab file")
        val_fraction = min(0.2, val_tokens * BYTES_PER_TOKEN / sum(os.path.getsize(f) for f in files))
        meta = corpus.prepare(files, tokenizer, tmp, val_fraction, seed)
        if meta["train_docs"] == 0 or meta["val_docs"] == 0:
            raise ValueError(f"{_names(files)}: too little text: {meta['train_docs'] + meta['val_docs']} "
                             f"document(s), but one to train on and one to hold out are needed")
        trained = os.path.join(os.path.abspath(data_dir), "vocab", "vocab.txt")
        meta.update(vocab_path=os.path.abspath(vocab) if vocab else trained, lowercase=lowercase)
        write_json(meta, os.path.join(tmp, "meta.json"))
        os.rename(tmp, data_dir)  # fails if data_dir exists: another process finished first
    except OSError:  # without this, the second of two runs preparing one corpus at once stops with an error
        if not os.path.exists(meta_path):
            raise
        print(f"another process prepared the same corpus: using {data_dir}", file=sys.stderr)
        meta = read_json(meta_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return data_dir, meta


# ----------------------------------------------------------------------------- masking

def n_predictions(max_len: int, mask_prob: float = 0.15) -> int:
    """The most predicted positions a sequence of max_len tokens can have: mask_prob of the max_len - 2
    between [CLS] and [SEP] (no special token is masked, so a row with [UNK] or padding has fewer).
    The round() keeps float error (0.15 * 20 = 3.0000000000000004) from adding one."""
    return math.ceil(round(mask_prob * (max_len - 2), 6))


def mask_tokens(ids: np.ndarray, special_ids, random_ids: np.ndarray, mask_id: int, max_predictions: int,
                mask_prob: float, rng: np.random.Generator):
    """BERT's masked-LM corruption (Devlin et al. 2019, Sec. 3.1), for a whole batch at once.

    ids (B, T) clean sequences. In each row exactly max(1, round(mask_prob * n)) of its n non-special
    tokens are chosen uniformly without replacement (at most max_predictions); of the chosen, 80%
    become [MASK], 10% a token drawn from random_ids, 10% stay as they are.
    Returns input_ids (B, T), positions (B, P) and labels (B, P): P = max_predictions, unused slots
    point at position 0 with label -100."""
    B, T = ids.shape
    eligible = ~np.isin(ids, special_ids)  # (B, T)
    n = eligible.sum(1)
    # np.round rounds halves to even, as Python 3's round in BERT's script.
    k = np.where(n > 0, np.clip(np.round(mask_prob * n), 1, max_predictions), 0).astype(np.int64)  # (B,)
    # A random key per token, +inf where not eligible: the k smallest keys are a uniform k-subset.
    keys = np.where(eligible, rng.random((B, T)), np.inf)
    chosen = np.argsort(keys, axis=1)[:, :max_predictions]  # (B, P)
    used = np.arange(max_predictions) < k[:, None]  # (B, P)
    positions = np.sort(np.where(used, chosen, T), axis=1)  # in reading order, unused slots last
    positions[~used] = 0
    rows = np.arange(B)[:, None]
    labels = np.where(used, ids[rows, positions], -100)

    action = rng.random((B, max_predictions))
    replacement = np.where(action < 0.8, mask_id, random_ids[rng.integers(0, len(random_ids), (B, max_predictions))])
    replace = used & (action < 0.9)  # the remaining 10% keep their token, but are still predicted
    input_ids = ids.copy()
    input_ids[rows.repeat(max_predictions, 1)[replace], positions[replace]] = replacement[replace]
    return input_ids, positions, labels


# ----------------------------------------------------------------------------- batches

def chunk_index(doc_offsets: np.ndarray, chunk_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cuts every document into consecutive chunks of at most chunk_len tokens.
    doc_offsets (D + 1,) document starts and the end -> chunk starts (N,) and lengths (N,)."""
    doc_starts, doc_lengths = doc_offsets[:-1], np.diff(doc_offsets)
    n_chunks = -(-doc_lengths // chunk_len)  # ceil; 0 for an empty document
    doc = np.repeat(np.arange(len(doc_starts)), n_chunks)  # (N,) the document of each chunk
    k = np.arange(len(doc)) - np.repeat(np.cumsum(n_chunks) - n_chunks, n_chunks)  # chunk number inside its doc
    starts = doc_starts[doc] + k * chunk_len
    return starts, np.minimum(chunk_len, doc_starts[doc] + doc_lengths[doc] - starts)


def _rng(purpose: str, *key: int) -> np.random.Generator:
    """A generator for one purpose and key. The purpose keeps shuffling, masking and evaluation
    apart: numpy's SeedSequence gives [a, b] and [a, b, 0] the same stream."""
    return np.random.default_rng([zlib.crc32(purpose.encode()), *key])


class RowRandom:
    """Random numbers for a batch in which row i depends only on (purpose, key, samples[i]),
    never on which batch or which process the sample lands in. So one process reading a
    batch of 2B masks every sample exactly as two DDP ranks reading B each do.
    Offers the two methods of np.random.Generator that mask_tokens uses."""

    def __init__(self, purpose: str, samples: np.ndarray, *key: int):
        state = np.full(len(samples), zlib.crc32(purpose.encode()), dtype=np.uint64)
        for k in (*key, None):
            state = splitmix64(state ^ (np.asarray(samples, np.uint64) if k is None else np.uint64(k)))
        self.state, self.calls = state, 0

    def random(self, shape: tuple) -> np.ndarray:
        """Uniform [0, 1) of shape (B, n); each call draws fresh numbers."""
        self.calls += 1
        with np.errstate(over="ignore"):
            x = splitmix64(self.state ^ splitmix64(np.full(1, self.calls, np.uint64)))
            x = splitmix64(x[:, None] + np.arange(shape[1], dtype=np.uint64) * np.uint64(0x632BE59BD9B4E019))
        return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def integers(self, low: int, high: int, shape: tuple) -> np.ndarray:
        return low + (self.random(shape) * (high - low)).astype(np.int64)


class MLMBatches:
    """Masked batches from a prepared split, infinite (one epoch after another) and resumable.

    Each document is cut into consecutive chunks of at most max_len - 2 tokens; a chunk is one
    sample, `[CLS] chunk [SEP]` padded to max_len. Every epoch shuffles the samples (seeded by
    seed, epoch); rank r of world_size takes every world_size-th one, so the ranks see disjoint
    samples and the same number of batches. Masking is seeded per sample by (seed, epoch, sample id)
    (RowRandom), so `load_state_dict` continues with exactly the batches an uninterrupted run would
    have seen, and two ranks mask their halves as one process masks the whole batch."""

    def __init__(self, data_dir: str, split: str, batch_size: int, max_len: int, vocab_size: int,
                 special_ids: dict, seed: int = 0, rank: int = 0, world_size: int = 1, mask_prob: float = 0.15,
                 pin_memory: bool = False):
        assert split in ("train", "val") and 0 <= rank < world_size and max_len > 2
        paths = [os.path.join(data_dir, f) for f in ("meta.json", f"{split}.bin", f"{split}_docs.npy")]
        for path in paths:
            if not os.path.exists(path):
                raise ValueError(f"{path}: missing; prepare your text files with data.prepare_corpus first")
        meta = read_json(paths[0], "prepared corpus description")
        if vocab_size <= meta["max_token_id"]:
            raise ValueError(f"{paths[0]}: the data holds token id {meta['max_token_id']}, but vocab_size is "
                             f"{vocab_size}; prepare the data with the model's tokenizer")
        dtype = np.dtype(meta["dtype"])
        # Memory-mapped: memory does not grow with the corpus, the OS pages tokens in as batches need them.
        self.tokens = np.memmap(paths[1], dtype, mode="r") if os.path.getsize(paths[1]) else np.zeros(0, dtype)
        self.starts, self.lengths = chunk_index(np.load(paths[2]), max_len - 2)  # (N,), (N,)
        self.batch_size, self.max_len, self.seed = batch_size, max_len, seed
        self.rank, self.world_size, self.mask_prob, self.pin_memory = rank, world_size, mask_prob, pin_memory
        self.max_predictions = n_predictions(max_len, mask_prob)
        self.pad_id, self.cls_id, self.sep_id, self.mask_id = (special_ids[t]
                                                               for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]"))
        self.special_ids = np.array(sorted(special_ids.values()))
        self.random_ids = np.setdiff1d(np.arange(vocab_size), self.special_ids)
        self.batches_per_epoch = len(self.starts) // world_size // batch_size
        if len(self.starts) == 0 or (split == "train" and self.batches_per_epoch == 0):  # val may have less
            raise ValueError(f"{paths[1]}: {len(self.starts)} sequences of {max_len} tokens, too few for a batch of "
                             f"{batch_size} on each of {world_size} process(es); use more text or a smaller batch")
        self.epoch, self.index, self._order = 0, 0, None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The sample ids this rank reads in `epoch`, in order; the remainder that would make the
        ranks unequal is dropped."""
        order = _rng("shuffle", self.seed, epoch).permutation(len(self.starts))
        per_rank = len(order) // self.world_size
        return order[:per_rank * self.world_size][self.rank::self.world_size]

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        assert self.batches_per_epoch > 0, "fewer sequences than one batch: use eval_batches"
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, self.epoch_order(self.epoch))
        samples = self._order[1][self.index * self.batch_size:(self.index + 1) * self.batch_size]
        batch = self.batch(samples, RowRandom("mask", samples, self.seed, self.epoch))
        self.index += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict):
        self.epoch, self.index = state["epoch"], state["index"]

    def eval_batches(self, n_batches: int) -> list[dict]:
        """Up to n_batches batches with fixed samples and fixed masking (seeded by seed only), so
        held-out losses compare across steps and runs. The last batch may be smaller."""
        order = _rng("eval order", self.seed).permutation(len(self.starts))[:n_batches * self.batch_size]
        groups = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return [self.batch(samples, RowRandom("eval mask", samples, self.seed)) for samples in groups]

    def sequences(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Clean `[CLS] chunk [SEP] [PAD]...` rows (B, T) int64 for sample ids, and their real lengths (B,)."""
        starts, lengths = self.starts[samples], self.lengths[samples]
        B, C = len(samples), self.max_len - 2
        inside = np.arange(C) < lengths[:, None]  # (B, C)
        chunk = self.tokens[np.where(inside, starts[:, None] + np.arange(C), 0)]  # (B, C), one gather
        ids = np.full((B, self.max_len), self.pad_id, dtype=np.int64)
        ids[:, 0] = self.cls_id
        ids[:, 1:-1] = np.where(inside, chunk, self.pad_id)
        ids[np.arange(B), lengths + 1] = self.sep_id
        return ids, lengths + 2

    def batch(self, samples: np.ndarray, rng) -> dict:
        ids, lengths = self.sequences(samples)
        input_ids, positions, labels = mask_tokens(ids, self.special_ids, self.random_ids, self.mask_id,
                                                   self.max_predictions, self.mask_prob, rng)
        # No mask when no row is padded: attention then takes the fast path (flash attention needs no mask).
        padded = bool((lengths < self.max_len).any())
        attention_mask = torch.from_numpy(np.arange(self.max_len) < lengths[:, None]) if padded else None
        batch = {"input_ids": torch.from_numpy(input_ids), "token_type_ids": torch.zeros(ids.shape, dtype=torch.long),
                 "attention_mask": attention_mask, "mlm_positions": torch.from_numpy(positions),
                 "mlm_labels": torch.from_numpy(labels)}
        if self.pin_memory:  # page-locked memory lets the copy to the GPU run asynchronously
            batch = {k: (v.pin_memory() if v is not None else None) for k, v in batch.items()}
        return batch
