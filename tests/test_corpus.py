"""Tests for corpus.py: what --data names, the built-in corpus's extraction rules, checking
a user's files, and reading them into documents."""
import json
import os
from pydoc_data.topics import topics

import pytest

import corpus


def write(path, content) -> str:
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return str(path)


# ----------------------------------------------------------------------------- --data

def test_resolve_files_takes_files_and_the_txt_files_of_folders(tmp_path):
    a, b = write(tmp_path / "a.txt", "x"), write(tmp_path / "b.md", "x")
    folder = tmp_path / "folder"
    folder.mkdir()
    inside = [write(folder / n, "x") for n in ("2.txt", "1.txt")]
    write(folder / "notes.md", "x")
    assert corpus.resolve_files(f"{a},{b}, {folder}", str(tmp_path)) == [a, b, *sorted(inside)]


def test_resolve_files_names_what_is_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty" / "notes.md", "x")
    with pytest.raises(ValueError, match=r"nope.txt: no such file"):
        corpus.resolve_files(str(tmp_path / "nope.txt"), str(tmp_path))
    with pytest.raises(ValueError, match=r"empty: folder has no .txt files"):
        corpus.resolve_files(f"{write(tmp_path / 'a.txt', 'x')},{tmp_path / 'empty'}", str(tmp_path))


# ----------------------------------------------------------------------------- the built-in corpus

def test_docstring_documents_skip_short_repeated_and_unparsable(tmp_path):
    long = "Return the sum of the numbers, as the paper's Eq. (1) writes it, in a long sentence."
    write(tmp_path / "b.py", f'"""{long}"""\nclass C:\n    """Short."""\n'
                             f'    def f(self):\n        """{long} Twice."""\n')
    write(tmp_path / "a.py", f'def g():\n    """{long}"""\n')
    write(tmp_path / "bad.py", 'def f(:\n    """never read"""\n')
    (tmp_path / "tests").mkdir()
    write(tmp_path / "tests" / "test_x.py", f'"""{long} A test."""\n')
    paths = corpus.python_sources(str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["a.py", "b.py", "bad.py"]  # sorted, tests left out
    docs = corpus.docstring_documents(paths, set())
    assert docs == [long, f"{long} Twice."]  # b.py's module docstring was met in a.py; 'Short.' is too short


def test_keep_docstring_keeps_sentences_not_one_liners():
    assert not corpus.keep_docstring("Return self.")
    assert corpus.keep_docstring("Computes the mask distance between two tickets: the normalised Hamming distance.")


def test_doctest_examples_are_left_out_of_docstrings():
    doc = "Adds two tensors.\n\n>>> a = add(x,\n...         y)\n>>> a\ntensor([2, 3])\n\nThe sum is elementwise."
    assert corpus.clean_docstring(doc) == "Adds two tensors.\n\n\nThe sum is elementwise."


def test_builtin_corpus_is_built_once_from_the_installed_sources(tmp_path, monkeypatch):
    """The whole build reads ~3,000 files (a minute): here it reads the json package's, through
    the same function, and checks the file, its documents and that a second call reuses it."""
    json_files = corpus.python_sources(os.path.dirname(json.__file__))
    monkeypatch.setattr(corpus, "python_sources", lambda root: json_files)
    path = corpus.builtin_corpus(str(tmp_path))[0]
    text = open(path, encoding="utf-8").read()
    assert "JSON" in text and "\n\n\n" not in text and text.count("\n\n") > 10  # help topics + modules
    assert "Serialize ``obj`` as a JSON formatted stream" in text  # json.dump's docstring
    mtime = os.stat(path).st_mtime_ns
    assert corpus.builtin_corpus(str(tmp_path)) == [path] and os.stat(path).st_mtime_ns == mtime


def test_builtin_documents_are_grouped_by_library_each_docstring_once(tmp_path):
    shared = "A docstring that two libraries carry, long enough to be kept by the extraction rule."
    own = {name: f"The {name} library's own docstring, which is long enough to be kept by the extraction rule."
           for name in ("python", "torch")}
    for name, doc in own.items():
        (tmp_path / name).mkdir()
        write(tmp_path / name / "m.py", f'"""{doc}"""\ndef f():\n    """{shared}"""\n')
    docs = corpus.builtin_documents({name: str(tmp_path / name) for name in own})
    assert list(docs) == ["python", "torch"] and docs["python"][:len(topics)] == [topics[k] for k in sorted(topics)]
    assert docs["python"][len(topics):] == [f"{own['python']}\n{shared}"]
    assert docs["torch"] == [own["torch"]]  # the shared docstring was met in the standard library


# ----------------------------------------------------------------------------- a user's text files

@pytest.mark.parametrize("name, content, message", [
    ("binary.bin", bytes(range(256)) * 4, r"binary.bin: not text \(a NUL byte at offset 0"),
    ("latin1.txt", "Un café, s'il vous plaît.\n".encode("latin-1"),
     r"latin1.txt: not UTF-8 text \(byte 0xe9 at offset 6\)"),
    ("cut.txt", "ends in the middle of é".encode()[:-1], r"cut.txt: not UTF-8 text \(it ends inside a character"),
    ("empty.txt", b"", r"empty.txt: the file is empty"),
    ("blank.txt", b"\n  \n\n", r"blank.txt: has no text, only blank lines"),
], ids=["binary", "latin-1", "cut", "empty", "blank"])
def test_check_text_file_names_the_file_and_what_is_wrong(tmp_path, name, content, message):
    with pytest.raises(ValueError, match=message):
        corpus.check_text_file(write(tmp_path / name, content))


def test_check_text_file_finds_a_bad_byte_far_into_a_file_and_accepts_utf8(tmp_path):
    text = "a" * ((1 << 22) - 1) + "é, 東京 and ß: plain UTF-8 text.\n"  # the first 4 MiB block ends inside é
    corpus.check_text_file(write(tmp_path / "good.txt", text))
    raw = text.encode() + b"caf\xe9\n"
    with pytest.raises(ValueError, match=rf"bad.txt: not UTF-8 text \(byte 0xe9 at offset {len(raw) - 2}\)"):
        corpus.check_text_file(write(tmp_path / "bad.txt", raw))


def test_read_documents_splits_on_blank_lines_or_else_lines(tmp_path):
    cases = {"one line\nand two\n\n\nsecond doc\n  \nthird\ndoc\n": ["one line\nand two", "second doc", "third\ndoc"],
             "first doc\nsecond doc\n\nthird doc\nfourth\n": ["first doc\nsecond doc", "third doc\nfourth"],
             "a\nb c\nd\n\n\n": ["a", "b c", "d"]}  # blank lines only at the end: one document a line
    for i, (text, docs) in enumerate(cases.items()):
        path = write(tmp_path / f"{i}.txt", text)
        read = list(corpus.read_documents(path))
        assert [d for d, _ in read] == docs
        assert sum(n for _, n in read) == len(text.rstrip("\n ")) + 1  # bytes up to the last line of text
