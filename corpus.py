"""
Where the text comes from: the built-in corpus, and a user's text files read as documents and
tokenized once into token files on disk.

- `resolve_files`: what `--data` names -> the text files ("" = the built-in corpus).
- `builtin_corpus`: real English text that every machine running this code already has, so
  a run needs no download: CPython's help topics and the docstrings of the standard library,
  torch and numpy (about 9 MB; it varies a little with their versions); `builtin_documents`
  gives its documents by library (reproduce.py's downstream task asks which one a sentence is from).
- `check_text_file`: a file is checked before anything is made from it (UTF-8 text, not
  binary, not empty), so bad input is one line naming the file, never a traceback later.
- `read_documents`: a text file -> documents (separated by blank lines, or one per line).
- `prepare`: documents -> token files, whole documents held out (data.prepare_corpus caches them).
- `library_rows`, `wordnet_task`: the fine-tuning tasks reproduce.py builds without the network,
  which library a sentence is from and WordNet's noun classes (`finetune.py --task text`).

EarlyBERT pre-trains on English Wikipedia + BookCorpus, as BERT does; the built-in corpus
stands in for them at laptop scale, and `--data` takes the real thing.
"""
import ast
import hashlib
import importlib.util
import os
import platform
import random
import re
import sys
import sysconfig
import warnings
from collections import Counter

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from checkpoint import atomic, write_json

SKIP_FOLDERS = {"site-packages", "test", "tests", "testing", "idle_test"}  # test code, not documentation


def resolve_files(spec: str, cache_root: str) -> list[str]:
    """--data -> text files: "" is the built-in corpus (built once into cache_root); otherwise
    comma-separated files, or folders whose .txt files are taken in sorted order."""
    if not spec:
        return builtin_corpus(cache_root)
    files = []
    for item in (s.strip() for s in spec.split(",")):
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if f.endswith(".txt") and os.path.isfile(os.path.join(item, f)))
            if not found:
                raise ValueError(f"{item}: folder has no .txt files")
            files += found
        elif os.path.isfile(item):
            files.append(item)
        elif item:
            raise ValueError(f"{item}: no such file or folder")
    if not files:
        raise ValueError(f"{spec}: names no text files")
    return files


# ----------------------------------------------------------------------------- the built-in corpus

def clean_docstring(doc: str) -> str:
    """A docstring without its doctest examples: a `>>>` line, its `...` continuations and its
    output up to the next blank line are code, not English (they were a tenth of torch's text)."""
    kept, in_example = [], False
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.startswith(">>>"):
            in_example = True
        elif not stripped:
            in_example = False
        if not in_example:
            kept.append(line)
    return "\n".join(kept).strip()


def keep_docstring(doc: str) -> bool:
    """The extraction rule, in one place: which docstrings become text. One-liners such as
    'Return self.' teach nothing but `return` and `self`, so a docstring needs 80 characters."""
    return len(doc) >= 80


def module_docstrings(tree: ast.Module):
    """Docstrings of a module, its classes and their methods, in reading order."""
    stack = [tree]
    while stack:
        node = stack.pop(0)
        doc = clean_docstring(ast.get_docstring(node) or "")
        if keep_docstring(doc):
            yield doc
        stack += [n for n in node.body if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]


def python_sources(root: str) -> list[str]:
    """The .py files under root in a fixed order (sorted at every level), test folders left out."""
    paths = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in SKIP_FOLDERS)
        paths += [os.path.join(folder, n) for n in sorted(names) if n.endswith(".py")]
    return paths


def docstring_documents(paths: list[str], seen: set) -> list[str]:
    """One document per module: its docstrings not met before (torch repeats many), joined.
    A file that does not parse (newer syntax than this Python) is skipped."""
    docs = []
    for path in tqdm(paths, desc="reading docstrings", unit="file", leave=False):
        with open(path, encoding="utf-8", errors="replace") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes in old modules' strings
            try:
                tree = ast.parse(f.read())
            except (SyntaxError, ValueError):
                continue
        new = [d for d in module_docstrings(tree) if d not in seen]
        seen.update(new)
        docs.append("\n".join(new))
    return docs


def library_roots() -> dict[str, str]:
    """Where the built-in corpus's libraries live: the standard library's folder, torch's, numpy's."""
    return {"python": sysconfig.get_paths()["stdlib"],
            **{p: os.path.dirname(importlib.util.find_spec(p).origin) for p in ("torch", "numpy")}}


def builtin_documents(roots: dict[str, str] | None = None) -> dict[str, list[str]]:
    """The built-in corpus's documents by library, in the corpus's order: Python's help topics
    (`pydoc_data`, the language reference) and each module's new docstrings under each root."""
    from pydoc_data.topics import topics
    docs, seen = {}, set()
    for name, root in (roots or library_roots()).items():
        docs[name] = ([topics[k] for k in sorted(topics)] if name == "python" else []) + \
            docstring_documents(python_sources(root), seen)
    return docs


def builtin_corpus(cache_root: str) -> list[str]:
    """The built-in corpus, built once into cache_root (the file's name holds the versions it
    was made from, so an upgrade builds it anew): the help topics of `pydoc_data` (the language
    reference), then the docstrings of the standard library, torch and numpy, one document per
    topic and per module, separated by blank lines."""
    import numpy
    import torch
    versions = f"py{platform.python_version()}-torch{torch.__version__}-numpy{numpy.__version__}"
    path = os.path.join(cache_root, f"builtin-text-{versions}", "builtin.txt")
    if os.path.exists(path):
        return [path]
    print(f"building the built-in corpus (docstrings of Python {platform.python_version()}'s standard library, "
          f"torch {torch.__version__}, numpy {numpy.__version__}) -> {path}", file=sys.stderr)
    docs = [d for library in builtin_documents().values() for d in library]
    # Blank lines separate documents in the file, so the blank lines inside one are dropped.
    docs = ["\n".join(line.rstrip() for line in d.splitlines() if line.strip()) for d in docs]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic(path) as tmp, open(tmp, "w", encoding="utf-8") as f:  # two processes at once: a file each
        f.write("\n\n".join(d for d in docs if d) + "\n")
    return [path]


# ----------------------------------------------------------------------------- a user's text files

def check_text_file(path: str, bar=None):
    """Raises a one-line ValueError naming `path` unless it is a non-empty UTF-8 text file.
    Reads it once in blocks (any size); `bar` (a tqdm bar) counts the bytes."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    offset, carry, has_text = 0, b"", False  # offset: where `carry` starts in the file
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            if bar is not None:
                bar.update(len(block))
            block, carry = carry + block, b""
            if (nul := block.find(b"\0")) >= 0:
                raise ValueError(f"{path}: not text (a NUL byte at offset {offset + nul}: a binary file?)")
            try:
                block.decode("utf-8")
            except UnicodeDecodeError as e:
                if e.reason != "unexpected end of data":  # a character cut by the block's end is read on
                    raise ValueError(f"{path}: not UTF-8 text (byte 0x{block[e.start]:02x} at offset "
                                     f"{offset + e.start}); convert it to UTF-8 first") from None
                block, carry = block[:e.start], block[e.start:]
            has_text = has_text or bool(block.strip())
            offset += len(block)
    if carry:
        raise ValueError(f"{path}: not UTF-8 text (it ends inside a character, at offset {offset})")
    if offset == 0:
        raise ValueError(f"{path}: the file is empty")
    if not has_text:
        raise ValueError(f"{path}: has no text, only blank lines")


def _has_blank_line_between_text(path: str) -> bool:
    """True when a blank line separates two lines of text: then blank lines separate documents,
    otherwise every line is a document. Reads until the answer is known."""
    seen_text = seen_blank = False
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                seen_blank = seen_text
            elif seen_blank:
                return True
            else:
                seen_text = True
    return False


def read_documents(path: str):
    """Yields (document text, bytes of the file it used)."""
    by_blank_lines = _has_blank_line_between_text(path)
    lines, n_bytes = [], 0
    with open(path, "rb") as f:
        for raw in f:
            n_bytes += len(raw)
            line = raw.decode("utf-8", errors="replace").strip()
            if line:
                lines.append(line)
            if lines and (not line or not by_blank_lines):
                yield "\n".join(lines), n_bytes
                lines, n_bytes = [], 0
    if lines:
        yield "\n".join(lines), n_bytes


# ----------------------------------------------------------------------------- tokenized once

def splitmix64(x: np.ndarray) -> np.ndarray:
    """A 64-bit mixing hash (splitmix64): stateless random numbers keyed on ids (the held-out split
    here, the masking in data.py)."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps around on purpose
        x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _uniform_hash(index: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) for every document index: the split of a document depends
    only on its index and the seed, never on how the stream was chunked."""
    x = splitmix64(index.astype(np.uint64) ^ splitmix64(np.full(1, seed, np.uint64)))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def prepare(files: list[str], tokenizer: Tokenizer, out_dir: str, val_fraction: float = 0.02, seed: int = 0) -> dict:
    """Tokenizes text files into out_dir/{train,val}.bin (flat token ids) and {train,val}_docs.npy
    (int64 start offsets of the documents, plus the end). Documents are separated by blank lines,
    or are single lines in a file without blank lines. Whole documents are held out for validation:
    each with probability val_fraction, by a hash of its index. meta.json is written last, so only
    a finished prepare has one. `data.prepare_corpus` checks the files first and caches the result."""
    if not files:
        raise ValueError("prepare: no text files given")
    vocab_size = tokenizer.get_vocab_size()
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.exists(meta_path):
        os.remove(meta_path)  # it describes files that are about to be replaced
    os.makedirs(out_dir, exist_ok=True)
    sizes = [os.path.getsize(f) for f in files]

    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
    bins = {s: open(os.path.join(out_dir, f"{s}.bin.tmp"), "w+b") for s in ("train", "val")}
    offsets = {"train": [np.zeros(1, np.int64)], "val": [np.zeros(1, np.int64)]}  # doc starts, then the end
    n_tokens, n_docs, max_id = {"train": 0, "val": 0}, 0, 0

    def write(docs: list[str]):
        nonlocal n_docs, max_id
        ids = [e.ids for e in tokenizer.encode_batch(docs, add_special_tokens=False)]
        lengths = np.array([len(x) for x in ids], dtype=np.int64)
        flat = np.fromiter((t for x in ids for t in x), dtype=np.int64, count=int(lengths.sum()))
        max_id = max(max_id, int(flat.max(initial=0)))
        is_val = _uniform_hash(np.arange(n_docs, n_docs + len(docs)), seed) < val_fraction
        n_docs += len(docs)
        for split, keep in (("train", ~is_val & (lengths > 0)), ("val", is_val & (lengths > 0))):
            bins[split].write(flat[np.repeat(keep, lengths)].astype(dtype).tobytes())
            offsets[split].append(n_tokens[split] + np.cumsum(lengths[keep]))
            n_tokens[split] += int(lengths[keep].sum())

    with tqdm(total=sum(sizes), unit="B", unit_scale=True, desc="tokenizing") as bar:
        for path in files:
            docs, n_bytes, n_file_docs = [], 0, 0
            for text, used in read_documents(path):
                docs.append(text)
                n_bytes, n_file_docs = n_bytes + used, n_file_docs + 1
                if len(docs) == 1000 or n_bytes > 1e6:  # bounded: an Encoding costs ~100 bytes a token
                    write(docs)
                    bar.update(n_bytes)
                    docs, n_bytes = [], 0
            if n_file_docs == 0:
                raise ValueError(f"{path}: has no text, only blank lines")
            write(docs)
            bar.update(n_bytes)

    docs = {s: np.concatenate(offsets[s]) for s in offsets}
    if val_fraction > 0 and len(docs["val"]) == 1 and len(docs["train"]) > 2:
        # A tiny corpus can draw no held-out document at all: move the last training one.
        start = int(docs["train"][-2])
        bins["train"].seek(start * np.dtype(dtype).itemsize)
        bins["val"].write(bins["train"].read())
        bins["train"].truncate(start * np.dtype(dtype).itemsize)
        docs = {"train": docs["train"][:-1], "val": np.array([0, docs["train"][-1] - start], np.int64)}
    for split in ("train", "val"):
        bins[split].close()
        os.replace(bins[split].name, os.path.join(out_dir, f"{split}.bin"))
        with atomic(os.path.join(out_dir, f"{split}_docs.npy")) as tmp, open(tmp, "wb") as f:
            np.save(f, docs[split])
    meta = {"files": [os.path.abspath(f) for f in files], "val_fraction": val_fraction, "seed": seed,
            "tokenizer_sha256": hashlib.sha256(tokenizer.to_str().encode()).hexdigest(),
            "dtype": np.dtype(dtype).name, "vocab_size": vocab_size, "max_token_id": max_id,
            "train_tokens": int(docs["train"][-1]), "val_tokens": int(docs["val"][-1]),
            "train_docs": len(docs["train"]) - 1, "val_docs": len(docs["val"]) - 1}
    write_json(meta, meta_path)  # last: only a finished prepare has a meta.json
    return meta


# ----------------------------------------------------------------------------- tasks built without the network
# reproduce.py's downstream tasks (finetune.py --task text), from text every machine has (or a Debian package).

WORDNET = "/usr/share/wordnet/data.noun"
# WordNet's lexicographer files (lexnames(5WN)): the classes of the WordNet task.
CLASSES = {5: "animal", 6: "artifact", 8: "body", 13: "food", 15: "location", 18: "person", 20: "plant",
           27: "substance"}


def prose_sentences(documents, min_words: int = 6, max_words: int = 24) -> list[str]:
    """The prose sentences of documents, lower-cased, commas and the final full stop removed,
    kept only when every word is letters (docstrings hold code and lists too), once each, in order."""
    found = {}
    for doc in documents:
        for s in re.split(r"(?<=[.!?])\s+", doc.replace("\n", " ")):
            words = s[:-1].replace(",", "").lower().split() if s.endswith(".") else []
            if min_words <= len(words) <= max_words and all(w.isalpha() and w.isascii() for w in words):
                found.setdefault(" ".join(words), None)
    return list(found)


def balanced_rows(by_class: dict[str, list[str]], per_class_train: int, per_class_dev: int, seed: int,
                  source: str) -> dict:
    """{"train": [(text, class)], "dev": [...]}: per_class_train and per_class_dev texts of each
    class, drawn at random, each text in one split once; too few texts of a class is an error."""
    rng, rows = random.Random(seed), {"train": [], "dev": []}
    for name, texts in by_class.items():
        if len(texts) < per_class_train + per_class_dev:
            raise ValueError(f"{source}: {len(texts)} texts of class {name!r}, too few for {per_class_train} "
                             f"training and {per_class_dev} dev texts of each class")
        texts = list(texts)
        rng.shuffle(texts)
        rows["train"] += [(t, name) for t in texts[:per_class_train]]
        rows["dev"] += [(t, name) for t in texts[per_class_train:per_class_train + per_class_dev]]
    for items in rows.values():
        rng.shuffle(items)
    return rows


def library_rows(documents: dict[str, list[str]], per_class_train: int, per_class_dev: int, seed: int = 0) -> dict:
    """"Which library's documentation is this sentence from?": the prose sentences of each
    library's documents (builtin_documents: python, torch, numpy), balanced; a sentence
    found in two libraries is left out. Words such as "tensor" or "array" give some away; many
    a sentence could come from any of them, and only how it is put says which."""
    sentences = {name: prose_sentences(docs) for name, docs in documents.items()}
    found = Counter(s for group in sentences.values() for s in group)
    return balanced_rows({name: [s for s in group if found[s] == 1] for name, group in sentences.items()},
                         per_class_train, per_class_dev, seed, "the built-in corpus's libraries")


def write_task(rows: dict, folder: str) -> str:
    """train.tsv and dev.tsv with a `sentence<TAB>label` header (finetune.py --task text)."""
    os.makedirs(folder, exist_ok=True)
    for split, items in rows.items():
        with atomic(os.path.join(folder, f"{split}.tsv")) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write("sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in items))
    return folder


def wordnet_task(out_dir: str, per_class_train: int, per_class_dev: int, seed: int = 0, source: str = WORDNET) -> str:
    """Noun glosses labelled with their lexicographer class, balanced, in GLUE's single-sentence
    layout (train.tsv / dev.tsv with a `sentence<TAB>label` header)."""
    if not os.path.exists(source):
        raise ValueError(f"{source}: missing; install WordNet with `apt-get install wordnet-base`")
    by_class = {name: [] for name in CLASSES.values()}
    with open(source, encoding="utf-8") as f:
        for line in f:
            if line.startswith("  ") or " | " not in line:
                continue  # the licence header
            fields, gloss = line.split(" | ", 1)
            lex, definition = int(fields.split()[1]), gloss.split(";")[0].strip().replace("\t", " ")
            if lex in CLASSES and len(definition.split()) >= 3:
                by_class[CLASSES[lex]].append(definition)
    return write_task(balanced_rows(by_class, per_class_train, per_class_dev, seed, source), out_dir)
