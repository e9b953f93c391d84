"""Smoke test of reproduce.py at tiny sizes: every step of the reproduction runs and its
tables come out. The fine-tuning part needs all-MiniLM-L6-v2; WordNet is faked by a few
lines in data.noun's format, so the test does not need the Debian package."""
import json

import pytest

import reproduce


def fake_wordnet(path):
    """Twenty glosses per class, in data.noun's layout: offset lex_filenum ss_type w_cnt word lex_id ... | gloss."""
    lines = ["  1 This software and database is being provided to you, the LICENSEE, by Princeton University"]
    for lex, name in reproduce.CLASSES.items():
        for i in range(20):
            lines.append(f"{lex:08d}{i} {lex:02d} n 01 word{i} 0 000 | a {name} thing number {i} of its kind; "
                         f'"an example"  ')
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_wordnet_task_is_balanced_and_labelled_by_lexicographer_class(tmp_path):
    folder = reproduce.wordnet_task(str(tmp_path / "task"), 3, 2, source=fake_wordnet(tmp_path / "data.noun"))
    train = [line.split("\t") for line in open(f"{folder}/train.tsv").read().splitlines()]
    dev = [line.split("\t") for line in open(f"{folder}/dev.tsv").read().splitlines()]
    assert train[0] == dev[0] == ["sentence", "label"]
    assert len(train) == 1 + 3 * 8 and len(dev) == 1 + 2 * 8
    assert all(f"a {label} thing number" in sentence for sentence, label in train[1:] + dev[1:])
    assert not {s for s, _ in train[1:]} & {s for s, _ in dev[1:]}  # no gloss in both splits
    assert all('"' not in s for s, _ in train[1:])  # the definition only, not the example


def test_the_quick_reproduction_runs_end_to_end(tmp_path, minilm_dir):
    results = reproduce.main(["--quick", "--out", str(tmp_path), "--seeds", "0",
                              "--wordnet", fake_wordnet(tmp_path / "data.noun")])
    runs = results["pretrain"]["runs"]
    assert runs["search"]["drawn_at"] == 20 and runs["earlybert"]["steps"] == runs["full"]["steps"] == 40
    assert runs["earlybert"]["first_step"] == runs["search"]["drawn_at"]
    assert runs["full_equal_time"]["steps"] >= 1
    assert {v: len(r) for v, r in results["finetune"].items()} == {"plain": 1, "earlybert": 1, "random": 1}
    table = open(tmp_path / "results.md").read()
    assert "### (a)" in table and "### (b)" in table and "### (c)" in table
    assert json.load(open(tmp_path / "results.json"))["pretrain"]["earlybert_seconds"] > 0
