"""finetune.py: fine-tuning on GLUE and SQuAD, plainly and the EarlyBERT way.

Data sets are written into tmp_path with conftest.py's writers (glue_folder, squad); a tiny
random BERT (with a vocabulary of the words used there) runs the pipelines end to end in a
second, and the real all-MiniLM-L6-v2 learns a small sentiment task plainly and with
--earlybert (slow; skipped when not installed).
"""
import importlib.util
import json
import os
import random
import subprocess
import sys
from contextlib import nullcontext
from dataclasses import fields
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from checkpoint import load_pretrained, save_pretrained
from data import checkpoint_tokenizer
from finetune import Config, compare, finetune, main, parse_args, predict, underfit_hint
from model import BertClassifier, BertConfig, BertMLM, flops_per_sequence
from helpers import BF16_EPS, relative_error
from runtime import Precision, field_help
from tasks import GLUE, load_task, read_squad, squad_dev_scores, squad_features, squad_scores

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = SimpleNamespace(device=torch.device("cpu"), autocast=nullcontext(), dtype=torch.float32, rank=0, world=1,
                      precision=Precision(torch.float32))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, write_vocab):
    """A random 2-layer BERT checkpoint whose vocabulary holds the test data's words (others become [UNK])."""
    folder = write_vocab(tmp_path_factory.mktemp("tiny_bert"))
    torch.manual_seed(0)
    save_pretrained(BertMLM(tiny_config(folder)), folder)
    return folder


def tiny_config(folder, **kw):
    n_vocab = len(open(os.path.join(folder, "vocab.txt")).read().split())
    return BertConfig(vocab_size=n_vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64, **kw)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return checkpoint_tokenizer(tiny_model, pairs=True)[0]


def run(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path / "out"), batch_size=4, max_len=32, max_steps=2, epochs=1, device="cpu")
    return finetune(Config(**{**base, **kw}))


# ----------------------------------------------------------------------------- GLUE

@pytest.mark.parametrize("task", list(GLUE))
def test_each_glue_task_fine_tunes_and_is_scored_with_its_metric(tmp_path, tiny_model, glue_folder, task):
    glue_folder(tmp_path / "data", task)
    results = run(tmp_path, task=task, data=str(tmp_path / "data"), model=tiny_model)
    names = {"cola": {"mcc"}, "mrpc": {"f1", "accuracy"}, "qqp": {"f1", "accuracy"},
             "sts-b": {"pearson", "spearman"}}.get(task, {"accuracy"})
    dev = {"dev_matched", "dev_mismatched"} if task == "mnli" else {"dev"}
    assert set(results["metrics"]) == dev  # MNLI: both dev sets evaluated
    assert all(set(m) == names for m in results["metrics"].values())
    out = tmp_path / "out" / f"{task}-full"
    assert json.loads((out / "results.json").read_text())["metrics"] == results["metrics"]
    predictions = json.loads((out / "predictions.json").read_text())
    assert set(predictions) == dev and all(len(p) == 8 for p in predictions.values())


def test_a_two_label_classifier_fine_tunes_on_three_label_mnli_with_a_fresh_head(tmp_path, capsys, write_vocab,
                                                                                   glue_folder):
    folder = write_vocab(tmp_path / "two_labels")
    torch.manual_seed(0)
    save_pretrained(BertClassifier(tiny_config(folder, num_labels=2)), folder)  # an SST-2 model, say
    glue_folder(tmp_path / "data", "mnli")
    results = run(tmp_path, task="mnli", data=str(tmp_path / "data"), model=folder)
    assert "initialised it afresh" in capsys.readouterr().err  # the 2-label head is not used
    out = tmp_path / "out" / "mnli-full"
    assert json.loads((out / "results.json").read_text())["metrics"] == results["metrics"]
    assert set(results["metrics"]) == {"dev_matched", "dev_mismatched"}
    assert load_pretrained(BertClassifier, str(out / "model"), verbose=False).config.num_labels == 3


def test_fine_tuning_in_bf16_follows_fp32_and_says_so(tmp_path, tiny_model, glue_folder):
    """--precision bf16: autocast for the matmuls, fp32 weights and loss; the same few steps end at
    nearly the same loss, and results.json records the precision and the probe's ratio."""
    glue_folder(tmp_path / "data", "sst-2")
    runs = {p: run(tmp_path / p, task="sst-2", data=str(tmp_path / "data"), model=tiny_model, precision=p, max_steps=4)
            for p in ("fp32", "bf16")}
    assert runs["bf16"]["precision"] == "bf16" and runs["bf16"]["bf16_speedup"] == 1.0  # conftest's probe
    assert runs["fp32"]["precision"] == "fp32" and runs["fp32"]["bf16_speedup"] is None  # fp32: no probe
    # fp32 weights, optimizer and loss; only the matmuls' outputs round to bf16: within one bf16 rounding
    assert relative_error(runs["bf16"]["history"][-1]["loss"], runs["fp32"]["history"][-1]["loss"]) <= BF16_EPS


def test_unknown_task_lists_the_tasks(tmp_path):
    with pytest.raises(ValueError, match=r"unknown task 'nope'; the tasks are cola, sst-2, .*, wnli, text, squad"):
        load_task("nope", str(tmp_path), None)


def test_a_folder_without_dev_tsv_names_the_missing_file(tmp_path, tokenizer, glue_folder):
    glue_folder(tmp_path, "rte")
    (tmp_path / "dev.tsv").unlink()
    with pytest.raises(ValueError, match=r"dev\.tsv: missing"):
        load_task("rte", str(tmp_path), tokenizer)
    glue_folder(tmp_path, "mnli")
    (tmp_path / "dev_mismatched.tsv").unlink()
    with pytest.raises(ValueError, match=r"dev_mismatched\.tsv: missing"):
        load_task("MNLI", str(tmp_path), tokenizer)


@pytest.mark.slow  # a fresh Python process importing torch
def test_bad_input_on_the_command_line_is_one_line(tmp_path, tiny_model):
    cmd = [sys.executable, "finetune.py", "--task", "nope", "--data", str(tmp_path), "--model", tiny_model]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and p.stderr.startswith("error: unknown task 'nope'")
    with pytest.raises(ValueError, match=r"^--ticket random is the control of --earlybert: give both$"):
        finetune(parse_args(["--ticket", "random"]))
    with pytest.raises(ValueError, match=r"^--model: no such checkpoint folder; give one with --model$"):
        finetune(Config(task="rte", data=str(tmp_path), out_dir=str(tmp_path / "out")))
    with pytest.raises(ValueError, match=r"^--eb-k 1: the early-bird rule compares"):
        finetune(Config(task="rte", earlybert=True, eb_k=1, out_dir=str(tmp_path / "out")))


@pytest.mark.parametrize("change, named", [
    (dict(lr=0.0), "--lr 0.0: "), (dict(search_lr=-1e-5), "--search-lr -1e-05: "), (dict(epochs=0), "--epochs 0: "),
    (dict(batch_size=-1), "--batch-size -1: "), (dict(max_steps=-1), "--max-steps -1: "), (dict(eb_k=1), "--eb-k 1: "),
    (dict(head_ratio=1.0), "--head-ratio 1.0: "), (dict(ffn_ratio=-0.1), "--ffn-ratio -0.1: "),
    (dict(warmup=1.5), "--warmup 1.5: "), (dict(ticket_every=-2), "--ticket-every -2: ")])
def test_settings_that_cannot_work_are_refused_before_anything_else(tmp_path, tiny_model, change, named):
    """One line naming the flag, before the data, the model or an earlier run's results are looked at."""
    (tmp_path / "out" / "rte-earlybert").mkdir(parents=True)
    (tmp_path / "out" / "rte-earlybert" / "results.json").write_text("{}")  # a finished run: not what is reported
    cfg = Config(task="rte", data=str(tmp_path / "missing"), model=tiny_model, out_dir=str(tmp_path / "out"),
                 earlybert=True, **change)
    with pytest.raises(ValueError) as e:
        finetune(cfg)
    assert str(e.value).startswith(named) and "\n" not in str(e.value), str(e.value)


def test_help_gives_every_flag_its_meaning_and_default(capsys):
    assert set(field_help(Config)) == {f.name for f in fields(Config)}  # every field has a trailing comment
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--eb-k EB_K the early-bird rule compares the newest mask with the k - 1 before it [default: 5]" in text
    assert "(one of: earlybird, random) [default: earlybird]" in text
    assert "cola, sst-2, mrpc, qqp, sts-b, mnli, qnli, rte, wnli, text" in text and "--compare" in text


def test_a_data_file_that_is_not_utf8_is_one_error_naming_it(tmp_path, tokenizer, glue_folder):
    glue_folder(tmp_path, "rte")
    latin1 = "index\tsentence1\tsentence2\tlabel\n0\tna\xefve\tb\tentailment\n".encode("latin-1")
    (tmp_path / "dev.tsv").write_bytes(latin1)
    with pytest.raises(ValueError, match=r"dev\.tsv, line 2: not UTF-8 text"):
        load_task("rte", str(tmp_path), tokenizer)


def test_a_finished_run_is_kept_unless_forced(tmp_path, tiny_model, glue_folder):
    glue_folder(tmp_path / "data", "sst-2")
    run(tmp_path, task="sst-2", data=str(tmp_path / "data"), model=tiny_model)
    results = tmp_path / "out" / "sst-2-full" / "results.json"
    before = results.read_bytes()
    with pytest.raises(ValueError, match=r"sst-2-full/results\.json: a finished run is there; pass --force"):
        run(tmp_path, task="SST2", data=str(tmp_path / "data"), model=tiny_model, lr=1e-3)
    assert results.read_bytes() == before
    assert run(tmp_path, task="sst-2", data=str(tmp_path / "data"), model=tiny_model, lr=1e-3, force=True)
    assert json.loads(results.read_text())["config"]["lr"] == 1e-3


# ----------------------------------------------------------------------------- SQuAD

class PointAt(torch.nn.Module):
    """A stand-in QA model whose start and end logits peak at two token ids."""

    def __init__(self, start_id, end_id):
        super().__init__()
        self.start_id, self.end_id = start_id, end_id

    def forward(self, input_ids, token_type_ids=None, attention_mask=None):
        return ((input_ids == self.start_id).float() * 10, (input_ids == self.end_id).float() * 10), None


def test_evaluation_decodes_the_models_logits_into_answers(tokenizer, squad):
    examples = [squad.example("q")]
    features, windows = squad_features([{**examples[0], "answers": []}], tokenizer, 16, 4)
    model = PointAt(tokenizer.token_to_id("word8"), tokenizer.token_to_id("word11"))
    outputs = predict(model, features, Config(batch_size=4), CPU, "dev")
    metrics, predictions = squad_dev_scores(examples, windows, outputs)
    assert predictions == {"q": squad.answer}
    assert metrics == {"dev-v1.1": {"exact_match": 100.0, "f1": 100.0}}


def test_squad_fine_tunes_end_to_end(tmp_path, tiny_model, squad):
    data = tmp_path / "squad"
    data.mkdir()
    as_file = lambda examples: {"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": e["context"], "qas": [{"id": e["id"], "question": e["question"], "answers": e["answers"]}]}
        for e in examples]}]}
    train = [squad.example(f"t{i}", f"word{i} word{i + 1}") for i in range(12)] + [squad.example("bad", start=1)]
    (data / "train-v1.1.json").write_text(json.dumps(as_file(train)))
    (data / "dev-v1.1.json").write_text(json.dumps(as_file([squad.example("d1"), squad.example("d2", "word30")])))
    assert [e["id"] for e in read_squad(str(data / "dev-v1.1.json"))] == ["d1", "d2"]
    with pytest.warns(UserWarning, match="skipped 1 answers"):
        results = run(tmp_path, task="squad", data=str(data), model=tiny_model, max_len=16, doc_stride=4)
    scores = results["metrics"]["dev-v1.1"]
    predictions = json.loads((tmp_path / "out" / "squad-full" / "predictions.json").read_text())
    assert set(predictions) == {"d1", "d2"} and all(p in squad.context for p in predictions.values())
    # the scores are the official EM and F1 of the answers it wrote
    assert set(scores) == {"exact_match", "f1"}
    assert scores == squad_scores(predictions, read_squad(str(data / "dev-v1.1.json")))
    (data / "dev-v1.1.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"dev-v1\.1\.json: not a SQuAD v1\.1 file"):
        run(tmp_path, task="squad", data=str(data), model=tiny_model, force=True)


# ----------------------------------------------------------------------------- EarlyBERT (tiny)

def search(tmp_path, model, capsys, **kw):
    """An EarlyBERT run on 100 RTE pairs (25 steps of 4 per epoch), at most 10 steps a stage; its
    results and what it printed."""
    base = dict(task="rte", data=str(tmp_path / "data"), model=model, earlybert=True, max_steps=10, epochs=1)
    results = run(tmp_path, **{**base, **kw})
    return results, " ".join(capsys.readouterr().err.split())


@pytest.fixture
def rte_100(tmp_path, glue_folder):
    glue_folder(tmp_path / "data", "rte", rows=100)


@pytest.fixture
def no_plot(monkeypatch):
    """The mask-distance picture takes a second to draw; tests that do not look at it skip it."""
    monkeypatch.setattr("figures.plot_distances", lambda *args, **kwargs: None)


def test_the_early_bird_rule_fires_before_the_longest_search_with_masks_spaced_to_fit_it(tmp_path, tiny_model,
                                                                                        rte_100, capsys):
    # A longest search of 0.4 epoch is 10 steps: masks every 10 // (2 k) = 1 step. At search lr 1e-10
    # (a step too small to move a float32 1.0) the coefficients stay at 1, the masks agree, and the
    # rule fires at its k = 5th mask.
    results, out = search(tmp_path, tiny_model, capsys, search_lr=1e-10, search_fraction=0.4)
    s, t = results["search"], results["ticket"]
    assert (s["longest"], s["every"], s["fired"], s["steps"]) == (10, 1, True, 5)
    assert (t["rule"], t["drawn_at"], results["search_steps"]) == ("earlybird", 5, 5)
    # 77 of 128 FFN neurons kept, each layer's rounded up to a multiple of 8 on the CPU: 80
    assert (t["kept_heads"], t["total_heads"], t["kept_ffn"], t["total_ffn"]) == (6, 8, 80, 128)
    assert "search: 5 steps" in out and "the early-bird rule fired at step 5 of at most 10" in out
    folder = tmp_path / "out" / "rte-earlybert"
    distances = json.loads((folder / "mask_distances.json").read_text())
    assert distances["steps"] == [1, 2, 3, 4, 5] and distances["head_distance"] == [[0.0] * 5] * 5
    assert (folder / "mask_distances.png").exists() == (importlib.util.find_spec("matplotlib") is not None)
    ticket = json.loads((folder / "ticket.json").read_text())
    assert [h["step"] for h in ticket["history"]] == [1, 2, 3, 4, 5]


def test_a_search_the_rule_cannot_finish_draws_at_the_longest_and_says_so(tmp_path, tiny_model, rte_100, capsys,
                                                                           no_plot):
    results, out = search(tmp_path, tiny_model, capsys, search_lr=1e-10, search_fraction=0.4, ticket_every=3)
    assert (results["search"]["every"], results["search"]["fired"]) == (3, False)
    assert (results["ticket"]["rule"], results["ticket"]["drawn_at"]) == ("last-step", 10)
    assert "the early-bird rule did not fire by step 10, the longest search: ticket drawn there" in out
    assert "too short for the rule: its 5 masks take 15 steps" in out
    steps = json.loads((tmp_path / "out" / "rte-earlybert" / "mask_distances.json").read_text())["steps"]
    assert steps == [3, 6, 9]


def test_the_search_has_no_warm_up_and_decays_over_three_epochs_of_its_own(tmp_path, tiny_model, rte_100, capsys,
                                                                           no_plot):
    # 25 steps per epoch: the search's schedule is 75 steps long; its 10th step (count 9) runs
    # at (75 - 9) / 75 of the search lr, where the whole run's warm-up would have it still rising.
    results, _ = search(tmp_path, tiny_model, capsys, search_lr=1e-3, search_fraction=0.4, eb_epsilon=0.0)
    (record,) = results["search"]["history"]
    assert (record["step"], results["ticket"]["rule"]) == (10, "last-step")  # epsilon 0: the rule never fires
    assert record["lr"] == pytest.approx(1e-3 * 66 / 75)


def test_a_random_ticket_needs_no_search(tmp_path, tiny_model, glue_folder):
    glue_folder(tmp_path / "data", "sst-2")
    results = run(tmp_path, task="sst-2", data=str(tmp_path / "data"), model=tiny_model, earlybert=True,
                  ticket="random", ffn_multiple=16)
    assert results["ticket"]["rule"] == "random" and results["ticket"]["drawn_at"] is None
    assert results["search"] is None and results["search_steps"] == 0
    model = load_pretrained(BertClassifier, str(tmp_path / "out" / "sst-2-random" / "model"), verbose=False)
    assert sum(model.config.heads_per_layer) == results["ticket"]["kept_heads"] == 6
    # 77 of 128 FFN neurons kept unrounded; --ffn-multiple 16 keeps each layer's in multiples of 16
    assert all(w % 16 == 0 for w in model.config.ffn_per_layer) and sum(model.config.ffn_per_layer) > 77


def test_the_three_variants_report_the_same_budget_fields_in_one_table(tmp_path, tiny_model, glue_folder, capsys,
                                                                        no_plot):
    glue_folder(tmp_path / "data", "sst-2", rows=40)
    base = dict(task="sst-2", data=str(tmp_path / "data"), model=tiny_model, max_steps=0, epochs=1,
                search_fraction=0.4)
    runs = {kind: run(tmp_path, **base, **flags) for kind, flags in
            (("full", {}), ("earlybert", {"earlybert": True}), ("random", {"earlybert": True, "ticket": "random"}))}
    assert len({frozenset(r) for r in runs.values()}) == 1  # the same fields
    full, eb, rnd = runs.values()
    assert eb["parameters"] == rnd["parameters"] < full["parameters"]
    assert eb["flops_per_example"] == rnd["flops_per_example"] < full["flops_per_example"]
    tokenizer = checkpoint_tokenizer(tiny_model, pairs=True)[0]
    lengths = [len(f["input_ids"]) for f in load_task("sst-2", base["data"], tokenizer).train]
    config = load_pretrained(BertClassifier, tiny_model, verbose=False).config
    assert full["flops_per_example"] == pytest.approx(np.mean([flops_per_sequence(config, T, 0) for T in lengths]))
    assert (full["search_steps"], eb["search_steps"], rnd["search_steps"]) == (0, 4, 0)  # 0.4 of 10 steps
    assert all(r["total_seconds"] == pytest.approx(r["search_seconds"] + r["train_seconds"]) for r in runs.values())
    # where EarlyBERT's seconds went: the search (its masks and draw within it), reloading, rebuilding, training
    t = eb["time"]
    assert eb["search_seconds"] == pytest.approx(t["search"] + t["reload"] + t["rebuild"]) and t["reload"] > 0
    assert 0 < t["search masks and draw"] < t["search"] and t["training"] == eb["train_seconds"]
    assert 0 < t["first steps"] < t["training"] and t["evaluation"] > 0
    assert (full["time"]["search"], full["time"]["reload"], full["time"]["rebuild"]) == (0, 0, 0)
    assert rnd["time"]["rebuild"] > 0 and rnd["time"]["search"] == 0

    folders = [str(tmp_path / "out" / f"sst-2-{kind}") for kind in runs]
    capsys.readouterr()
    main(["--compare", *folders])
    table = capsys.readouterr().out.strip().splitlines()
    assert table == compare(folders).splitlines() and len(table) == 2 + 3
    assert table[0].startswith("| run | dev | search s | training s | total s | vs plain |")
    row = [c.strip() for c in table[3].split("|")[1:-1]]  # the EarlyBERT run
    assert row[0] == "sst-2-earlybert" and row[1] == f"dev accuracy {eb['metrics']['dev']['accuracy']:.4g}"
    assert row[5] == f"{eb['total_seconds'] / full['total_seconds']:.2f}" and row[6] == f"4 + {eb['steps']}"
    assert table[2].split("|")[6].strip() == "1.00"  # the plain run against itself

    os.remove(os.path.join(folders[2], "results.json"))
    with pytest.raises(ValueError, match=r"sst-2-random/results\.json: no such file"):
        compare(folders)
    with pytest.raises(ValueError, match=r"sst-2-nope: no such run folder or results file"):
        compare([str(tmp_path / "out" / "sst-2-nope")])
    (tmp_path / "bad.json").write_text(json.dumps({**eb, "steps": "many"}))
    with pytest.raises(ValueError, match=r"bad\.json: not a finetune\.py results file \(missing or bad: steps\)"):
        compare([str(tmp_path / "bad.json")])


def test_fine_tuning_flops_count_the_projections_and_attention_without_an_mlm_head(tmp_path, write_vocab):
    """finetune.py's FLOPs per example: the model's count at the example's length, no predicted positions."""
    config = tiny_config(write_vocab(tmp_path))  # H 32, 4 heads of 8, FFN 64, 2 layers
    T, H, f = 3, 32, 64
    one = 2 * T * H * (4 * 32 + 2 * f) + 4 * T * T * 32  # one layer's forward
    assert flops_per_sequence(config, T, 0) == 3 * 2 * one
    pruned = BertConfig(**{**config.__dict__, "heads_per_layer": [2, 1], "ffn_per_layer": [10, 20]})
    expected = sum(2 * T * H * (4 * w + 2 * f) + 4 * T * T * w for w, f in ((16, 10), (8, 20)))
    assert flops_per_sequence(pruned, T, 0) == 3 * expected


def test_a_training_loss_still_high_at_the_end_gets_a_learning_rate_hint():
    hint = underfit_hint(0.69, 0.43, 2e-5)  # all-MiniLM-L6-v2 at BERT-base's lr on a binary task
    assert hint.startswith("hint: the training loss is still 0.430, 62% of the 0.690") and "5e-5 to 1e-4" in hint
    assert underfit_hint(0.69, 0.2, 2e-5) is None
    assert underfit_hint(5.9, 1.1, 3e-5) is None  # SQuAD's loss starts near ln(384)


# ----------------------------------------------------------------------------- a real BERT

POSITIVE = "wonderful great excellent delightful superb brilliant lovely fantastic charming moving".split()
NEGATIVE = "terrible awful dreadful boring horrible dull painful weak disappointing clumsy".split()


def sentiment_folder(folder, n_train=128, n_dev=40):
    """SST-2 layout: 'the film was superb and lovely' -> 1, '... dull and clumsy' -> 0."""
    rng = random.Random(0)
    folder.mkdir()
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = ["sentence\tlabel"]
        for i in range(n):
            words = POSITIVE if i % 2 else NEGATIVE
            noun = rng.choice(["movie", "film", "story", "plot", "script", "cast"])
            rows.append(f"the {noun} was {rng.choice(words)} and {rng.choice(words)}\t{i % 2}")
        (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return str(folder)


@pytest.mark.slow
def test_minilm_learns_a_sentiment_task(tmp_path, minilm_dir):
    data = sentiment_folder(tmp_path / "sst")
    results = run(tmp_path, task="sst-2", data=data, model=minilm_dir, batch_size=16, max_len=32, lr=1e-4,
                  epochs=2, max_steps=0)
    assert results["steps"] == 16 and len(results["history"]) == 2  # dev scores after every epoch
    assert results["metrics"]["dev"]["accuracy"] >= 0.8


@pytest.mark.slow
def test_minilm_learns_it_the_earlybert_way_with_fewer_heads_and_neurons(tmp_path, minilm_dir):
    data = sentiment_folder(tmp_path / "sst")
    results = run(tmp_path, task="sst-2", data=data, model=minilm_dir, batch_size=16, max_len=32, lr=1e-4,
                  epochs=2, max_steps=0, earlybert=True, search_lr=1e-4, ticket_every=2, search_fraction=0.5,
                  ffn_multiple=1)  # unrounded: the paper's 40% exactly
    t = results["ticket"]
    assert (t["drawn_at"], t["rule"]) == (4, "last-step")  # half an epoch: too short for 5 masks 2 steps apart
    assert (t["kept_heads"], t["total_heads"]) == (48, 72)  # 8 of 12 heads in each of 6 layers
    assert (t["kept_ffn"], t["total_ffn"]) == (5530, 9216)  # 40% of all FFN neurons pruned
    assert results["parameters"] < t["parameters_before"]
    assert results["search_seconds"] > 0 and results["train_seconds"] > 0
    assert results["total_seconds"] == pytest.approx(results["search_seconds"] + results["train_seconds"])
    assert results["metrics"]["dev"]["accuracy"] >= 0.8
    model = load_pretrained(BertClassifier, str(tmp_path / "out" / "sst-2-earlybert" / "model"), verbose=False)
    assert sum(model.config.heads_per_layer) == 48 and sum(model.config.ffn_per_layer) == 5530


def test_the_text_task_takes_its_classes_from_train_tsv(tmp_path, tokenizer):
    assert "train.tsv: missing" in str(pytest.raises(ValueError, load_task, "text", str(tmp_path), tokenizer).value)
    rows = [("a small animal", "animal"), ("a tall plant", "plant"), ("a red animal", "animal"), ("a tool", "artifact")]
    for split in ("train", "dev"):
        (tmp_path / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    task = load_task("text", str(tmp_path), tokenizer)
    assert task.overrides == {"num_labels": 3}  # artifact, animal, plant
    assert [f["labels"] for f in task.train] == [0, 2, 0, 1]  # sorted: animal, artifact, plant
