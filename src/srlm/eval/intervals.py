"""Uncertainty of accuracies: 95% intervals for one accuracy and for the change between two.

- `wilson(k, n)`: the Wilson score interval of a proportion k/n (well-behaved near 0 and 1,
  unlike the normal approximation).
- `paired_difference(a, b)`: the change b - a between two evaluations of the same problems
  (per-problem 0/1 outcomes, matched by id), with the normal interval of the mean of the paired
  differences. Pairing removes the problems' own difficulty from the noise, so a stage-to-stage
  change is resolved better than by comparing two independent intervals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson interval (low, high) of the proportion k/n; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference(a: Mapping[str, bool], b: Mapping[str, bool], z: float = Z95) -> dict[str, float]:
    """The change from `a` to `b` (id -> correct) over the ids both have.

    Returns {"diff", "low", "high", "n"}: the mean of b - a and its 95% interval.
    """
    ids = [i for i in a if i in b]
    n = len(ids)
    if n == 0:
        return {"diff": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    d = [float(bool(b[i])) - float(bool(a[i])) for i in ids]
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    half = z * math.sqrt(var / n)
    return {"diff": mean, "low": mean - half, "high": mean + half, "n": n}
