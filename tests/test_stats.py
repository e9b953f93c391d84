"""stats.py: mean ± std over seeds, per-seed differences, and the declared rule for what counts as a
difference and when a lead has washed out, on literal numbers."""
import stats


def test_mean_and_sample_standard_deviation_over_seeds():
    assert stats.mean_std([0.5]) == (0.5, 0.0)  # one seed: no spread to speak of
    assert stats.pm([0.1, 0.2, 0.3], 3) == "0.200 ± 0.100"  # n - 1
    assert stats.paired([0.5, 0.4], [0.3, 0.45]) == "+0.200 / -0.050" and stats.each([0.5, 0.25]) == "0.500 / 0.250"


def test_the_declared_rule_needs_one_sign_on_every_seed_and_a_mean_beyond_the_spread():
    assert stats.verdict([-0.027, -0.031, -0.041]) == "a difference"  # comparison 1 at the recipe's draw
    assert stats.verdict([0.01, -0.02, 0.03]) == "no difference found"  # signs differ
    assert stats.verdict([0.01, 0.02, 0.5]) == "no difference found"  # one sign, but mean 0.18 < std 0.28
    assert stats.verdict([0.01, 0.02]) == "2 seed(s): too few to say"


def test_a_lead_washes_out_at_the_first_evaluation_after_its_last_difference():
    lead, none = [-0.03, -0.02, -0.04], [0.01, -0.02, 0.0]
    along = lambda *rows: list(zip((660, 960, 1440, 1920), rows))
    assert stats.washed_out(along(lead, none, lead, none)) == ("a difference until step 1440, washed out from "
                                                               "step 1920 on")  # a difference again counts
    assert stats.washed_out(along(lead, none, none, lead)) == "still a difference at the last evaluation"
    assert stats.washed_out(along(none, none, none, none)) == "never a difference"
    assert stats.washed_out([(660, [-0.03, -0.02])]) == "2 seed(s), too few to say"
