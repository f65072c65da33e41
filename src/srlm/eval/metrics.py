"""Evaluation metrics: sampling metrics (pass@k, maj@k), the GLUE score, and re-exports.

All metrics are fractions in [0, 1] (the official SQuAD and GLUE tables print percent).
The per-task statistics (Matthews correlation, F1, Pearson, Spearman) and the SQuAD
answer scores live in `srlm.data` because tasks aggregate their own metrics and the
data room never imports this one; they are re-exported here as the one place to look.
(So do GSM8K's lm-evaluation-harness filters and exact_match, in `srlm.data.gsm8k`, and
MATH's answer equivalence, in `srlm.data.math`; each task's `protocol()` says what its
metrics mean.)

- pass@k: the unbiased estimator of Chen et al. 2021 (Codex), 1 - C(n-c, k) / C(n, k),
  computed as a product so it never forms huge binomials.
- maj@k: the most frequent extracted answer among the first k samples; samples with no
  answer do not vote; a tie goes to the answer that appeared first.
- GLUE score: each task's GLUE metrics averaged within the task, MNLI matched and
  mismatched averaged into one MNLI task (as the GLUE leaderboard lists MNLI-m/mm as
  one task), then the mean over the tasks present.
"""

from __future__ import annotations

import math

import numpy as np

from srlm.data.answers import majority_vote  # noqa: F401  (one of the metrics this module gathers)
from srlm.data.squad import exact_match, f1_v1, f1_v2, normalize_answer, score_one
from srlm.data.stats import accuracy, f1_binary, matthews_corrcoef, pearson, rankdata, spearman

__all__ = [
    "accuracy",
    "f1_binary",
    "matthews_corrcoef",
    "pearson",
    "spearman",
    "rankdata",
    "normalize_answer",
    "exact_match",
    "f1_v1",
    "f1_v2",
    "score_one",
    "pass_at_k",
    "majority_vote",
    "glue_score",
    "GLUE_METRICS",
]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


#: task -> the metrics the GLUE benchmark averages for it
GLUE_METRICS: dict[str, tuple[str, ...]] = {
    "glue-cola": ("mcc",),
    "glue-sst2": ("accuracy",),
    "glue-mrpc": ("f1", "accuracy"),
    "glue-qqp": ("f1", "accuracy"),
    "glue-stsb": ("pearson", "spearman"),
    "glue-mnli": ("accuracy",),
    "glue-mnli-mm": ("accuracy",),
    "glue-qnli": ("accuracy",),
    "glue-rte": ("accuracy",),
    "glue-wnli": ("accuracy",),
}


def glue_score(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """{"score": mean over tasks, "tasks": number of tasks averaged, and each task's score}.
    `results` maps task names (glue-*) to their metrics; other names are ignored."""
    per_task: dict[str, float] = {}
    for name, metrics in results.items():
        if name not in GLUE_METRICS:
            continue
        vals = [float(metrics[m]) for m in GLUE_METRICS[name]]
        per_task[name] = sum(vals) / len(vals)
    mnli = [per_task.pop(t) for t in ("glue-mnli", "glue-mnli-mm") if t in per_task]
    if mnli:
        per_task["glue-mnli"] = sum(mnli) / len(mnli)
    if not per_task:
        return {}
    out = {f"{t}_score": v for t, v in per_task.items()}
    vals = list(per_task.values())
    out["score"] = sum(vals) / len(vals) if not any(math.isnan(v) for v in vals) else float("nan")
    out["tasks"] = len(vals)
    return out
