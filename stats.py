"""Numbers over seeds: mean ± std, the per-seed differences of paired runs, and the rule, declared before
the long schedule's runs, for what counts as a difference (verdict) and when a lead has washed out.

A seed sets a run's initialisation, data order and masking, so two runs of one seed differ only in what
is compared: their difference, seed by seed, cancels what the seed moves. It counts as signal only if it
has the same sign on every seed (three at least) and its mean is larger than the differences' standard
deviation (a t-statistic above the square root of the number of seeds).
"""
import numpy as np


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) over seeds; 0 for a single seed."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def pm(values, digits: int) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def each(values) -> str:
    """Every seed's value, in the seeds' order."""
    return " / ".join(f"{v:.3f}" for v in values)


def signed(diffs: list[float]) -> str:
    """Per-seed differences, signed."""
    return " / ".join(f"{d:+.3f}" for d in diffs)


def paired(a: list, b: list) -> str:
    """Per-seed differences a - b."""
    return signed([x - y for x, y in zip(a, b)])


def verdict(diffs: list[float]) -> str:
    """The declared rule for a paired difference over seeds: signal if it has the same sign on every
    seed (three at least) and its mean is larger than the differences' standard deviation."""
    (mean, std), same = mean_std(diffs), all(d > 0 for d in diffs) or all(d < 0 for d in diffs)
    return (f"{len(diffs)} seed(s): too few to say" if len(diffs) < 3 else
            "a difference" if same and abs(mean) > std else "no difference found")


def washed_out(along: list[tuple[int, list[float]]]) -> str:
    """(e)'s reading of a paired difference along training, [(step, per-seed differences)]: the first
    evaluation from which it no longer counts as a difference (verdict) to the end."""
    if len(along[0][1]) < 3:
        return f"{len(along[0][1])} seed(s), too few to say"
    differences = [step for step, diffs in along if verdict(diffs) == "a difference"]
    if not differences:
        return "never a difference"
    after = [step for step, _ in along if step > differences[-1]]
    if not after:
        return "still a difference at the last evaluation"
    return f"a difference until step {differences[-1]}, washed out from step {after[0]} on"
