"""95% intervals for accuracies and paired stage-to-stage changes, against scipy."""

import math
import random

import pytest
from scipy import stats

from srlm.eval.intervals import paired_difference, wilson


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (50, 100), (170, 170), (817, 1500)])
def test_wilson_matches_scipy(k, n):
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(ci.low, abs=1e-9) and hi == pytest.approx(ci.high, abs=1e-9)


def test_paired_difference_is_the_normal_interval_of_the_paired_means():
    rng = random.Random(0)
    a = {str(i): rng.random() < 0.5 for i in range(600)}
    b = {i: (v or rng.random() < 0.2) for i, v in a.items()}  # b solves what a solved, and some more
    b["extra"] = True  # ids only one side has are left out
    d = paired_difference(a, b)
    diffs = [float(b[i]) - float(a[i]) for i in a]
    mean = sum(diffs) / len(diffs)
    sem = stats.sem(diffs)
    assert d["n"] == 600 and d["diff"] == pytest.approx(mean)
    assert d["low"] == pytest.approx(mean - 1.959963984540054 * sem) and d["high"] == pytest.approx(
        mean + 1.96 * sem, abs=1e-4
    )
    assert d["low"] > 0  # a real gain of ~10 points on 600 problems is resolved
    same = paired_difference(a, a)
    assert same["diff"] == 0 and same["low"] == 0 and same["high"] == 0
    assert math.isnan(paired_difference({"x": True}, {"y": True})["diff"])
