"""reproduce.py: the pure parts (the library task, which runs are skipped or resumed) on literal
inputs, and the whole script at tiny sizes (--quick). WordNet is faked by a few lines in data.noun's
format, so no Debian package is needed."""
import importlib.util
import json
import os
import re
import runpy
import signal
import subprocess
import sys
import time

import pytest

import corpus
import reproduce
import results
import train


# ----------------------------------------------------------------------------- the library task

def library_documents(n: int = 20) -> dict:
    """Each library's documents: n sentences of its own (two per document), and one all three share."""
    docs = {}
    for name in ("python", "torch", "numpy"):
        own = [f"this is {name} sentence number {chr(97 + i)} of the docs." for i in range(n)]
        docs[name] = [" ".join(own[i:i + 2]) for i in range(0, n, 2)] + ["A sentence that every library has, word for word."]
    return docs


def test_library_task_is_balanced_labelled_by_library_and_leaves_shared_sentences_out():
    rows = corpus.library_rows(library_documents(), 6, 4, seed=0)
    for split, n in (("train", 6), ("dev", 4)):
        labels = [label for _, label in rows[split]]
        assert sorted(labels) == sorted(["python", "torch", "numpy"] * n)
        assert all(sentence.startswith(f"this is {label} sentence") for sentence, label in rows[split])
    train, dev = ({s for s, _ in rows[k]} for k in ("train", "dev"))
    assert len(train) == 18 and len(dev) == 12 and not train & dev  # each sentence once, in one split
    assert corpus.library_rows(library_documents(), 6, 4, seed=0) == rows
    assert corpus.library_rows(library_documents(), 6, 4, seed=1) != rows


def test_library_task_needs_enough_sentences_of_each_library():
    docs = library_documents()
    docs["numpy"] = docs["numpy"][:3]  # 6 sentences of its own
    with pytest.raises(ValueError, match="6 texts of class 'numpy', too few"):
        corpus.library_rows(docs, 6, 4)


def test_prose_sentences_keep_prose_only():
    docs = ["Returns the number of items, in order. Call f(x) = y for this one here today.\nToo short here.",
            "Every word of this sentence is a word. Returns the number of items, in order."]
    assert corpus.prose_sentences(docs) == ["returns the number of items in order", "every word of this sentence is a word"]


# ----------------------------------------------------------------------------- runs

def test_a_finished_run_is_read_and_an_interrupted_one_resumed(tmp_path):
    job = {"script": os.path.join(reproduce.HERE, "train.py"), "args": ["--phase", "full"],
           "result": str(tmp_path / "full" / "summary.json")}
    assert reproduce.command(job)[-2:] == ["--phase", "full"]  # not started: a fresh run
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "ckpt.pt").write_bytes(b"")
    assert reproduce.command(job)[-1] == "--resume"
    (tmp_path / "full" / "summary.json").write_text("{}")
    assert reproduce.command(job) is None  # finished: read, not run
    assert reproduce.command(job, force=True)[-1] == "--force"


def test_train_defaults_are_read_from_train_py():
    defaults = reproduce.train_defaults()
    assert isinstance(defaults["max_steps"], int) and defaults["phase"] == "search"
    assert "head_ratio" not in defaults or isinstance(defaults["head_ratio"], float)


def test_a_folder_never_mixes_two_recipes(tmp_path):
    path = str(tmp_path / "out" / "recipe.json")
    reproduce.check_recipe(path, {"max_steps": 2400, "lr": 7e-4}, force=False)  # written
    reproduce.check_recipe(path, {"max_steps": 2400, "lr": 7e-4}, force=False)  # the same: goes on
    with pytest.raises(ValueError, match=r"recipe\.json: these runs used another recipe \(max_steps 2400 there, "
                                         r"1200 now\)") as e:
        reproduce.check_recipe(path, {"max_steps": 1200, "lr": 7e-4}, force=False)
    assert "\n" not in str(e.value)
    reproduce.check_recipe(path, {"max_steps": 1200, "lr": 7e-4}, force=True)  # --force: all rerun, so allowed
    assert json.load(open(path))["max_steps"] == 1200  # the recipe the forced runs will have


def test_a_folder_from_before_a_new_setting_is_another_recipe(tmp_path):
    """recipe.json from before train.py had --mask-prob: refused, naming the setting; --force makes it again."""
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"max_steps": 2400}))
    with pytest.raises(ValueError, match=r"mask_prob unset there, 0\.4 now"):
        reproduce.check_recipe(str(path), {"max_steps": 2400, "mask_prob": 0.4}, force=False)
    reproduce.check_recipe(str(path), {"max_steps": 2400, "mask_prob": 0.4}, force=True)
    assert json.load(open(path)) == {"max_steps": 2400, "mask_prob": 0.4}


def test_mask_prob_reaches_the_recipe_and_every_pretraining_command(tmp_path, monkeypatch, capsys):
    def stop(job, force, vocab=None):
        raise KeyboardInterrupt  # after the plan and the recipe, before the first run
    monkeypatch.setattr(reproduce, "run", stop)
    with pytest.raises(KeyboardInterrupt):
        reproduce.main(["--out", str(tmp_path), "--part", "pretrain", "--mask-prob", "0.15"])  # BERT's, not train.py's
    assert json.load(open(tmp_path / "recipe.json"))["mask_prob"] == 0.15
    assert json.load(open(tmp_path / "recipe.json"))["auto_ffn_multiple"] == {"cuda": 64, "cpu": 8}
    printed = capsys.readouterr().err
    assert f"{reproduce.VOCAB} is the vocabulary seed 0's search trains" in printed
    plan = [line for line in printed.splitlines() if "train.py" in line]
    assert len(plan) == 12 and all("--mask-prob 0.15" in line for line in plan)
    with pytest.raises(ValueError, match=r"^--mask-prob 1\.5: give a fraction"):
        reproduce.parse_args(["--mask-prob", "1.5"])


def test_the_printed_estimate_is_of_what_is_left(tmp_path, monkeypatch, capsys):
    """A resumed reproduction estimates the runs it has yet to do, not the finished ones."""
    def stop(job, force, vocab=None):
        raise KeyboardInterrupt  # after the plan is printed
    monkeypatch.setattr(reproduce, "run", stop)

    def left() -> float:  # the printed estimate, in hours
        with pytest.raises(KeyboardInterrupt):
            reproduce.main(["--out", str(tmp_path), "--part", "pretrain"])
        took = re.search(r"what is left about ([\d.]+) (hours|minutes)", capsys.readouterr().err)
        return float(took[1]) / (1 if took[2] == "hours" else 60)
    everything = left()
    recipe = reproduce.train_defaults()
    pretrain = reproduce.pretrain_jobs(str(tmp_path), [0, 1, 2], {}, "", recipe["max_steps"] // reproduce.EVALUATIONS)
    downstream = reproduce.downstream_jobs(str(tmp_path), [0, 1, 2], False)
    for job in [*pretrain.values(), *downstream.values()]:
        if job is not pretrain[2, "full"]:  # all finished but one full run
            os.makedirs(os.path.dirname(job["result"]), exist_ok=True)
            open(job["result"], "w").write("{}")
    one_full_run = left()
    assert 0.1 * everything < one_full_run < 0.3 * everything  # of 3 seeds' 4 runs and the fine-tuning
    os.makedirs(os.path.dirname(pretrain[2, "full"]["result"]), exist_ok=True)
    open(pretrain[2, "full"]["result"], "w").write("{}")
    assert left() == 0


def test_a_bad_data_path_stops_before_any_run(tmp_path):
    with pytest.raises(ValueError, match="nope.txt: no such file"):
        reproduce.main(["--out", str(tmp_path / "out"), "--data", str(tmp_path / "nope.txt")])
    assert not (tmp_path / "out").exists()  # nothing written


def test_another_length_or_masking_gets_a_folder_of_its_own():
    assert reproduce.parse_args([]).out == "runs/reproduce"
    assert reproduce.parse_args(["--max-steps", "1200"]).out == "runs/reproduce-1200"
    assert reproduce.parse_args(["--mask-prob", "0.15"]).out == "runs/reproduce-mask15"
    assert reproduce.parse_args(["--max-steps", "600", "--mask-prob", "0.25"]).out == "runs/reproduce-600-mask25"
    assert reproduce.parse_args(["--mask-prob", "0.4", "--out", "elsewhere"]).out == "elsewhere"
    with pytest.raises(ValueError, match="--max-steps"):
        reproduce.parse_args(["--quick", "--max-steps", "10"])


# ----------------------------------------------------------------------------- the whole script

def in_process(cmd: list[str], folder: str) -> int:
    """reproduce.execute for `python script.py args`, run in this process: the same code as the
    command line, without a new Python importing torch for each run (that was half the time)."""
    argv = sys.argv
    sys.argv = cmd[1:]
    try:
        runpy.run_path(cmd[1], run_name="__main__")
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv


@pytest.mark.slow
def test_the_quick_reproduction_runs_and_resumes(tmp_path, small_corpus, monkeypatch):
    monkeypatch.setattr(reproduce, "execute", in_process)
    out = tmp_path / "out"
    results = reproduce.main(["--quick", "--out", str(out), "--part", "pretrain", "--data", small_corpus,
                              "--seeds", "0"])  # one seed (test_later_seeds_... checks the others' commands)
    assert list(results["pretrain"]) == ["0"]
    for seed, r in results["pretrain"].items():
        assert r["search"]["drawn_at"] == 6 and r["earlybert"]["steps"] == r["full"]["steps"] == 12
        c = r["search"]["coefficients"]  # |c| at the draw, 10% and 90%: from 1.0, moved by 6 steps of training
        assert all(0 < lo <= hi < 1.1 and lo != 1.0 for lo, hi in c.values()) and set(c) == {"head", "ffn"}
        assert r["earlybert"]["train_seconds"] > r["search"]["train_seconds"]  # search + efficient
        assert r["full_equal_time"]["train_seconds"] <= r["earlybert"]["train_seconds"]
        assert r["full_equal_time"]["steps"] <= r["full"]["steps"]
        e = r["earlybert"]  # its bounds: the draw at 6 of 12 steps, then pruned steps (their FLOPs: fewer)
        assert e["bound_steps"] == 0.5 + 0.5 * e["step_ratio"] and 0.5 < e["bound_flops"] < 1
    assert set(results["downstream"]["runs"]) == {"none", "full", "earlybert", "random"}
    assert all(len(rs) == 1 and 0 <= rs[0]["accuracy"] <= 1 for rs in results["downstream"]["runs"].values())
    dev = open(out / "downstream" / "library" / "dev.tsv").read().splitlines()[1:]  # from the libraries' own folders
    assert sorted(line.split("\t")[1] for line in dev) == sorted(["python", "torch", "numpy"] * 6)
    table = open(out / "results.md").read()
    assert "### (a)" in table and "### (b) Pre-training" in table and "### (b) Fine-tuned" in table
    assert "Numbers for the reading" in table
    if importlib.util.find_spec("matplotlib"):  # the figure is optional, as matplotlib is
        assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"

    def no_run(*args, **kwargs):
        raise AssertionError("a finished run was started again")
    monkeypatch.setattr(reproduce, "execute", no_run)
    again = reproduce.main(["--quick", "--out", str(out), "--part", "pretrain", "--data", small_corpus,
                            "--seeds", "0"])
    assert again["pretrain"] == results["pretrain"] and again["downstream"] == results["downstream"]


@pytest.mark.slow
def test_the_quick_controls_run_and_resume(tmp_path, small_corpus, monkeypatch):
    """--part controls at tiny sizes, 2 seeds: searches drawn by the rule and at 25/50/75% of the
    schedule, each scored with every ticket; the tickets compared; efficient training of the drawn
    ticket and both random controls from three draws. Run again, nothing runs."""
    monkeypatch.setattr(reproduce, "execute", in_process)
    out = tmp_path / "out"
    r = reproduce.main(["--quick", "--out", str(out), "--part", "controls", "--data", small_corpus])["controls"]
    assert list(r["at_draw"]) == ["rule", "step3", "step6", "step9"]  # --quick draws at 6 (its --draw-step)
    assert [r["at_draw"][d]["0"]["step"] for d in r["at_draw"]] == [6, 3, 6, 9]
    scores = r["at_draw"]["step6"]["1"]["scores"]
    assert {"searched", "drawn", "anti", "random 4", "random-per-layer 4"} <= set(scores)
    assert r["at_draw"]["rule"]["1"]["scores"]["drawn"] == scores["drawn"]  # the same search to step 6
    assert set(r["alike"]) == set(r["at_draw"]) and r["alike"]["rule"]["pairs"] == 1
    assert r["reordered"]["0"]["distance"]["ffn"] > 0  # another data order: another ticket
    for draw, start in (("rule", 6), ("step3", 3), ("step6", 6)):
        for seed in ("0", "1"):
            runs = r["trained"][draw][seed]
            assert set(runs) == {"earlybird", "random", "random-per-layer"}, (draw, seed)
            assert all(run["from_step"] == start and 0 <= run["val_acc"] <= 1 for run in runs.values())
    table = open(out / "results.md").read()
    assert "### Does the ticket matter?" in table and "| step3 | 3 ± 0 |" in table
    assert "same initial weights, another data order" in table and "| rule | 2 |" in table
    assert set(r["coef_search"]) == {"sgd", "l1x10", "sgd-l1x10"}  # the coefficients' optimizer, at --quick's draw
    for variant, per_seed in r["coef_search"].items():
        assert per_seed["0"]["step"] == 6 and per_seed["0"]["scores"]["drawn"] != scores["drawn"], variant
        assert f"| {variant} | 2 | 6 (fixed-step) / 6 (fixed-step) |" in table

    def no_run(*args, **kwargs):
        raise AssertionError("a finished run was run again")
    monkeypatch.setattr(reproduce, "execute", no_run)
    assert reproduce.main(["--quick", "--out", str(out), "--part", "controls", "--data", small_corpus])["controls"] == r


def fake_wordnet(path):
    """Twenty glosses per class, in data.noun's layout: offset lex_filenum ss_type w_cnt word lex_id ... | gloss."""
    lines = ["  1 This software and database is being provided to you, the LICENSEE, by Princeton University"]
    for lex, name in corpus.CLASSES.items():
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


def test_wordnet_part_is_skipped_with_a_reason_without_wordnet(tmp_path, capsys):
    results = reproduce.main(["--part", "wordnet", "--out", str(tmp_path), "--wordnet", str(tmp_path / "none")])
    assert "wordnet-base" in results["wordnet"]["skipped"]
    assert reproduce.VOCAB not in capsys.readouterr().err  # no pre-training run, no vocabulary to speak of
    assert "Skipped:" in open(tmp_path / "results.md").read()


def test_another_wordnet_size_goes_to_a_folder_and_results_of_its_own(tmp_path):
    """--wordnet-per-class 1500: OUT/wordnet-1500 and results["wordnet-1500"]; the 150-gloss runs stay."""
    jobs = reproduce.wordnet_jobs(str(tmp_path), [0], "minilm", False, "wordnet-1500")
    assert all(os.path.join(str(tmp_path), "wordnet-1500", "seed0") in j["result"] for j in jobs.values())
    assert os.path.join(str(tmp_path), "wordnet-1500", "task") in jobs[0, "earlybert"]["args"]
    (tmp_path / "results.json").write_text(json.dumps({"wordnet": {"skipped": "an earlier run"}}))
    results = reproduce.main(["--part", "wordnet", "--out", str(tmp_path), "--wordnet", str(tmp_path / "none"),
                              "--wordnet-per-class", "1500"])
    assert "wordnet-base" in results["wordnet-1500"]["skipped"] and results["wordnet"] == {"skipped": "an earlier run"}
    with pytest.raises(ValueError, match="--wordnet-per-class 2000: "):
        reproduce.parse_args(["--wordnet-per-class", "2000"])


def test_later_seeds_train_on_the_first_seeds_vocabulary(tmp_path):
    jobs = reproduce.pretrain_jobs(str(tmp_path), [0, 1, 2], {}, "", eval_every=10)
    assert {seed for seed, _ in jobs} == {0, 1, 2} and len(jobs) == 12
    for (seed, name), job in jobs.items():
        assert ("--vocab" in job["args"]) == (seed != 0)
        if seed != 0:  # filled in with seed 0's trained vocabulary when its search is done
            assert job["args"][job["args"].index("--vocab") + 1] == reproduce.VOCAB
        assert job["args"][job["args"].index("--seed") + 1] == str(seed)


FAKE_RUN = """import os, signal, sys, time
pressed = []
signal.signal(signal.SIGINT, lambda *_: pressed.append(1))
folder = os.path.dirname(sys.argv[1])
open(os.path.join(folder, "started"), "w").close()
while not pressed:
    time.sleep(0.02)
time.sleep(1.0)  # a step ends and the checkpoint is written: longer than subprocess.run's 0.25 s of grace
open(os.path.join(folder, "ckpt.pt"), "w").close()
sys.exit(130)
"""


def test_ctrl_c_reaches_the_run_which_saves_its_checkpoint_before_reproduce_stops(tmp_path):
    """Ctrl-C to reproduce.py (only: its run has a process group of its own) is passed on to the run,
    and reproduce.py waits for it to save its checkpoint; the next `python reproduce.py` resumes it."""
    script, run_dir = tmp_path / "fake_train.py", tmp_path / "run"
    script.write_text(FAKE_RUN)
    run_dir.mkdir()
    job = {"script": str(script), "args": [str(run_dir / "summary.json")], "result": str(run_dir / "summary.json")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (f"import sys; sys.path[:0] = [{root!r}]; import reproduce\ntry:\n    reproduce.run({job!r})\n"
            "except KeyboardInterrupt as e:\n    print(e, file=sys.stderr); sys.exit(130)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    for _ in range(1500):  # until the run is up (its handler set)
        if (run_dir / "started").exists():
            break
        time.sleep(0.02)
    parent.send_signal(signal.SIGINT)
    _, err = parent.communicate(timeout=60)
    assert parent.returncode == 130 and (run_dir / "ckpt.pt").exists()
    assert f"{run_dir}: stopped (Ctrl-C) after its checkpoint" in err


def test_the_long_part_is_the_recipe_four_times_as_long_in_a_folder_of_its_own():
    assert reproduce.parse_args(["--part", "long"]).out == "runs/reproduce-long"
    assert reproduce.parse_args(["--part", "long"]).max_steps == 4 * reproduce.train_defaults()["max_steps"]
    assert reproduce.parse_args(["--part", "long", "--max-steps", "600"]).out == "runs/reproduce-long-600"
    assert reproduce.parse_args(["--part", "long", "--max-steps", "600"]).max_steps == 2400


@pytest.mark.slow
def test_the_long_parts_runs_account_for_earlyberts_time_against_its_bounds(tmp_path, small_corpus):
    """--part long's runs (tiny, in this process): every seed's search first, then the full run and the three
    tickets' efficient runs, with held-out curves; EarlyBERT's time is accounted part by part and set
    against its bounds, and the full run is read off at that time."""
    jobs = reproduce.pretrain_jobs(str(tmp_path), [0], {**reproduce.QUICK, "max_steps": 24}, small_corpus, 4, long=True)
    assert [run for _, run in jobs] == ["search", "full", "earlybert", "random", "random-per-layer"]
    for job in jobs.values():
        train.train(train.parse_args(job["args"]))
    r = results.long_results(jobs, [0], 24)["0"]
    assert (r["search"]["drawn_at"], r["search"]["fraction"]) == (6, 0.25)
    for run, x in r["runs"].items():
        assert x["time"]["steps"] == x["train_seconds"] and min(x["time"].values()) >= 0, run
        assert [e["steps"] for e in x["curve"]] == ([0, 4] if run == "full" else [6]) + list(range(8, 25, 4)), run
    search = json.load(open(tmp_path / "pretrain" / "seed0" / "search" / "summary.json"))["time"]
    assert search["masks_and_draw"] > 0 and r["runs"]["earlybert"]["time"]["model"] > 0  # the draw, the rebuild
    t = r["time"]
    assert t["ratio"] == t["earlybert"]["total"] / r["runs"]["full"]["time"]["steps"]
    assert t["bound_steps"] == 0.25 + 0.75 * t["step_ratio"] and 0.5 < t["flop_ratio"] < 1
    assert r["full_equal_time"]["train_seconds"] == t["earlybert"]["total"]
    table = "\n".join(results.long_markdown({"0": r}, 24))
    assert "(a) the draw and (b) EarlyBERT's time" in table and "1 seed(s): too few to say" in table
    threads = json.load(open(jobs[0, "full"]["result"]))["threads"]  # the test process's, for every run
    assert t["threads"] == {"search": threads, "earlybert": threads, "full": threads}
    assert f"| {threads} / {threads} / {threads} |" in table
    # the full run on other threads than EarlyBERT's efficient run: its seconds do not compare, so it is not
    # read off at EarlyBERT's time (the time ratio is still printed, with the threads beside it)
    full = json.load(open(jobs[0, "full"]["result"]))
    with open(jobs[0, "full"]["result"], "w") as f:
        json.dump({**full, "threads": threads + 1}, f)
    r = results.long_results(jobs, [0], 24)["0"]
    assert "full_equal_time" not in r and r["time"]["threads"]["full"] == threads + 1
    with open(jobs[0, "full"]["result"], "w") as f:
        json.dump(full, f)
    # the full run's corpus tokenized with a vocabulary trained again (a few tokens differ): refused, by name
    full = json.load(open(jobs[0, "full"]["result"]))
    other = tmp_path / "other-corpus"
    other.mkdir()
    meta = json.load(open(os.path.join(full["data_dir"], "meta.json")))
    (other / "meta.json").write_text(json.dumps({**meta, "tokenizer_sha256": "0" * 64}))
    with open(jobs[0, "full"]["result"], "w") as f:
        json.dump({**full, "data_dir": str(other)}, f)
    with pytest.raises(ValueError, match=r"pretrain/seed0/full: trained on another vocabulary than its search"):
        results.long_results(jobs, [0], 24)
