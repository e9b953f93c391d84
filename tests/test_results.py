"""results.py: the equal-time read-off, the mean ± std tables and the reading, on literal inputs."""
import results


# ----------------------------------------------------------------------------- the read-off

LOG = [  # a full run's log.jsonl: evaluations (val_*) and training records (elapsed_s) every 10 steps
    {"step": 0, "val_loss": 9.0, "val_acc": 0.0},
    {"step": 10, "loss": 8.5, "elapsed_s": 10.0},
    {"step": 15, "val_loss": 8.0, "val_acc": 0.1},  # between log records: at 20 s (interpolated)
    {"step": 20, "loss": 7.5, "elapsed_s": 30.0},
    {"step": 20, "val_loss": 7.0, "val_acc": 0.2},
    {"step": 30, "loss": 6.5, "elapsed_s": 40.0},
    {"step": 30, "val_loss": 6.0, "val_acc": 0.3},
]


def test_equal_time_read_off_takes_the_last_evaluation_within_the_budget():
    assert results.equal_time_point(LOG, 25.0) == {"steps": 15, "train_seconds": 20.0, "val_loss": 8.0,
                                                     "val_acc": 0.1}
    assert results.equal_time_point(LOG, 30.0)["steps"] == 20  # reached exactly at the budget
    assert results.equal_time_point(LOG, 19.9)["steps"] == 0  # step 15 came at 20 s: too late
    assert results.equal_time_point(LOG, 1e9)["val_loss"] == 6.0


def test_equal_time_read_off_counts_a_step_redone_after_resume_once():
    resumed = LOG[:4] + [{"step": 20, "loss": 7.5, "elapsed_s": 50.0}, {"step": 20, "val_loss": 7.1, "val_acc": 0.2}]
    point = results.equal_time_point(resumed, 45.0)  # step 20 now came at 50 s: the later record counts
    assert point["steps"] == 15 and point["train_seconds"] == 30.0  # 10 s + half of 10 -> 50 s


# ----------------------------------------------------------------------------- the table

def numbers(steps, seconds, loss, acc):
    return {"steps": steps, "train_seconds": seconds, "val_loss": loss, "val_acc": acc}


PER_SEED = {"0": {"full": numbers(300, 100.0, 5.0, 0.20), "earlybert": {**numbers(300, 70.0, 5.1, 0.19),
                                                                      "bound_steps": 0.70, "bound_flops": 0.60},
                  "random": numbers(300, 68.0, 5.4, 0.15), "full_equal_time": numbers(200, 66.0, 5.3, 0.17)},
            "1": {"full": numbers(300, 110.0, 5.2, 0.22), "earlybert": {**numbers(300, 80.0, 5.3, 0.23),
                                                                      "bound_steps": 0.74, "bound_flops": 0.62},
                  "random": numbers(300, 78.0, 5.6, 0.17), "full_equal_time": numbers(220, 74.0, 5.5, 0.19)}}


def test_pretrain_table_gives_mean_and_sample_std_over_seeds():
    lines = results.pretrain_table(PER_SEED)
    assert lines[0].startswith("| run (2 seeds) |") and len(lines) == 2 + 4
    # full: seconds 105 ± 7.07, loss 5.100 ± 0.141 (n - 1 in the std); EarlyBERT: 75 s, 75 / 105 = 0.71 of full
    assert lines[2] == "| full | 300 ± 0 | 105 ± 7 | 1.00 | - | 5.100 ± 0.141 | 0.210 ± 0.014 |"
    # beside the measured 0.71, its bounds (mean over seeds): from the measured step ratio, and from the FLOPs
    assert lines[3] == ("| EarlyBERT (search + efficient) | 300 ± 0 | 75 ± 7 | 0.71 | 0.72; 0.61 | 5.200 ± 0.141 | "
                        "0.210 ± 0.028 |")
    assert lines[5].startswith("| full at EarlyBERT's time (read off its curve) | 210 ± 14 | 70 ± 6 | 0.67 |")


def test_the_reading_gives_paired_differences_per_seed():
    """A seed sets the initialisation, data order, masking and held-out sample (the held-out documents
    are the same), so runs are compared within a seed: EarlyBERT is behind the full model on seed 0
    and ahead on seed 1 (no difference shown), ahead of random on both."""
    downstream = {"none": [{"accuracy": 0.5}, {"accuracy": 0.6}], "full": [{"accuracy": 0.75}, {"accuracy": 0.78}],
                  "earlybert": [{"accuracy": 0.76}, {"accuracy": 0.77}], "random": [{"accuracy": 0.70}, {"accuracy": 0.79}]}
    text = results.reading(PER_SEED, downstream)
    assert "EarlyBERT minus full -0.010 / +0.010, minus the full model at its time +0.020 / +0.040;" in text
    assert "random minus EarlyBERT -0.040 / -0.060;" in text
    assert "fine-tuned, EarlyBERT minus full +0.010 / -0.010, random minus EarlyBERT -0.060 / +0.020." in text
    assert "a seed sets the initialisation, data order, masking and held-out sample" in text


def test_claim_c_table_gives_each_seed_and_where_the_search_drew():
    def tuned(acc, seconds, steps=0, drawn_by=None, search=0.0):
        return {"accuracy": acc, "seconds": seconds, "search_seconds": 0.0, "parameters": 22_000_000,
                "search_steps": steps, "longest_search": 60 if drawn_by else None, "drawn_by": drawn_by,
                "time": {"search": search, "reload": 0.5 * bool(search), "rebuild": 0.1, "training": seconds - search,
                         "first steps": 2.0}}
    claims = {"wordnet": {"plain": [tuned(0.70, 100), tuned(0.72, 102)],
                           "earlybert": [tuned(0.69, 80, 30, "earlybird", 10), tuned(0.71, 90, 60, "last-step", 20)],
                           "random": [tuned(0.65, 70), tuned(0.66, 71)]}}
    lines = results.markdown(claims).splitlines()
    assert "| plain | 0.710 ± 0.014 | 0.700 / 0.720 | 101 ± 1 | 0.0 + 0.0 + 0.1 + 101.0 (2.0) | - |" in lines
    assert ("| earlybert | 0.700 ± 0.014 | 0.690 / 0.710 | 85 ± 7 | 15.0 + 0.5 + 0.1 + 70.0 (2.0) | 30 (60) earlybird, "
            "60 (60) last-step |") in lines
    assert "### (c) Fine-tuning all-MiniLM-L6-v2 on WordNet noun classes (8 classes, 150 training glosses each)" in lines
    bigger = results.markdown({"wordnet-1500": claims["wordnet"]}).splitlines()
    assert "### (c) Fine-tuning all-MiniLM-L6-v2 on WordNet noun classes (8 classes, 1500 training glosses each)" in bigger


# ----------------------------------------------------------------------------- --part long

def test_the_long_parts_downstream_runs_are_paired_per_seed_under_the_rule():
    run = lambda *accs: [{"accuracy": a, "parameters": 4e6, "seconds": 60.0} for a in accs]
    downstream = {"seeds": [0, 1, 2], "train": 700, "dev": 300, "classes": ["python", "torch", "numpy"],
                  "runs": {"full": run(0.80, 0.78, 0.79), "earlybert": run(0.79, 0.77, 0.78),
                           "random": run(0.80, 0.76, 0.78), "random-per-layer": run(0.78, 0.76, 0.77)}}
    table = results.markdown({"long": {}, "recipe": {"max_steps": 9600}, "downstream": downstream})
    assert "### (c) Fine-tuned on which library a sentence is from" in table  # the long part's (c), not (b)
    assert "| EarlyBERT − random ticket | -0.010 / +0.010 / +0.000 | no difference found |" in table
    assert "| EarlyBERT − random ticket of the drawn per-layer sizes | +0.010 / +0.010 / +0.010 | a difference |" in table
    assert "| EarlyBERT − full | -0.010 / -0.010 / -0.010 | a difference |" in table
    assert "paired per seed" not in results.markdown({"downstream": downstream})  # the short recipe's: as before
    del downstream["runs"]["full"]  # seed 1's full run not finished: the tickets paired without it
    table = results.markdown({"long": {}, "recipe": {"max_steps": 9600}, "downstream": downstream})
    assert "| EarlyBERT − random ticket |" in table and "EarlyBERT − full" not in table


def test_the_long_tables_pair_the_tickets_over_every_seed_and_the_full_run_where_it_finished():
    """Seed 1's full run has not finished: the tickets are compared over seeds 0 1 2, the full run over 0 and 2."""
    def run(loss, acc, curve):
        return {"val_loss": loss, "val_acc": acc, "curve": [{"steps": s, "val_loss": v} for s, v in curve]}
    r = {}
    for seed, lead, later in (("0", 0.03, 0.01), ("1", 0.02, -0.01), ("2", 0.04, 0.0)):
        r[seed] = {"search": {"drawn_at": 600, "fraction": 0.0625, "rule": "earlybird"}, "runs": {
            "earlybert": run(3.0, 0.47, [(600, 5.0 - lead), (1200, 4.0)]),
            "random": run(3.01, 0.46, [(600, 5.0), (1200, 4.0 + later)]),
            "random-per-layer": run(3.02, 0.46, [(600, 5.0), (1200, 4.0 - lead)])}}
        if seed != "1":
            r[seed]["runs"]["full"] = run(2.9, 0.48, [])
            r[seed]["full_equal_time"] = {"val_loss": 3.2, "val_acc": 0.44}
    table = "\n".join(results.long_markdown(r, 9600))
    assert "(c) at step 9600, seeds 0, 1, 2" in table and "| 1 | 600 (6.2%, earlybird) | not yet run |" in table
    assert "| full (seeds 0, 2) | 2.900 ± 0.000 | 0.480 ± 0.000 | 2.900 / 2.900 | 0.480 / 0.480 |" in table
    assert "| EarlyBERT − random ticket | -0.010 / -0.010 / -0.010 | a difference | +0.010 / +0.010 / +0.010 |" in table
    assert "| EarlyBERT − full (seeds 0, 2) | +0.100 / +0.100 | 2 seed(s): too few to say |" in table
    assert "| EarlyBERT − full at EarlyBERT's time (seeds 0, 2) | -0.200 / -0.200 |" in table
    assert "| 600 | -0.030 / -0.020 / -0.040 | a difference |" in table
    assert "Drawn − random per-layer: still a difference at the last evaluation." in table
    assert "Drawn − random: a difference until step 600, washed out from step 1200 on." in table
    del r["0"]["full_equal_time"]  # seed 0's full run ran on other threads than its EarlyBERT: not read off
    table = "\n".join(results.long_markdown(r, 9600))
    assert "| full (seeds 0, 2) |" in table and "| full at EarlyBERT's time (read off its curve) (seed 2) |" in table
    assert "| EarlyBERT − full at EarlyBERT's time (seed 2) | -0.200 |" in table


def test_the_full_run_at_earlyberts_time_is_interpolated_between_its_evaluations():
    curve = [{"steps": 0, "train_seconds": 0.0, "val_loss": 9.0, "val_acc": 0.0},
             {"steps": 100, "train_seconds": 10.0, "val_loss": 7.0, "val_acc": 0.2},
             {"steps": 200, "train_seconds": 30.0, "val_loss": 6.0, "val_acc": 0.3}]
    assert results.interpolated(curve, 20.0) == {"steps": 150.0, "val_loss": 6.5, "val_acc": 0.25,
                                                  "train_seconds": 20.0}


def test_earlyberts_time_is_its_search_masks_rebuild_and_efficient_steps():
    search = {"time": {"steps": 30.0, "masks_and_draw": 1.5, "model": 0.1, "first_steps": 2.0}}
    efficient = {"time": {"steps": 50.0, "masks_and_draw": 0.0, "model": 2.5, "first_steps": 1.0}}
    t = results.accounted(search, efficient)
    assert t["total"] == 30.0 + 1.5 + 2.5 + 50.0 and t["first steps"] == 1.0
