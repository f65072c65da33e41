"""Corpus statistics behind the official benchmark metrics, in numpy.

They live in `srlm.data` because tasks aggregate their own metrics (`Task.metrics`) and
the data room must not import `srlm.eval`; `srlm.eval.metrics` re-exports them. Each
follows scikit-learn / scipy exactly (tested against them): multiclass Matthews
correlation as `sklearn.metrics.matthews_corrcoef`, F1 of one positive label with
zero when undefined, Spearman as Pearson of average ranks (ties share their mean rank).
Undefined correlations (a constant input) are NaN, as in scipy.
"""

from __future__ import annotations

import numpy as np


def accuracy(y_true, y_pred) -> float:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    return float((t == p).mean()) if t.size else 0.0


def f1_binary(y_true, y_pred, positive=1) -> float:
    t, p = np.asarray(y_true) == positive, np.asarray(y_pred) == positive
    tp = np.sum(t & p)
    denom = 2 * tp + np.sum(~t & p) + np.sum(t & ~p)
    return float(2 * tp / denom) if denom else 0.0


def matthews_corrcoef(y_true, y_pred) -> float:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if not t.size:
        return 0.0
    labels, idx = np.unique(np.concatenate([t, p]), return_inverse=True)
    ti, pi = idx[: t.size], idx[t.size :]
    k = len(labels)
    c = np.bincount(ti * k + pi, minlength=k * k).reshape(k, k).astype(np.float64)
    t_sum, p_sum = c.sum(axis=1), c.sum(axis=0)
    n, correct = c.sum(), np.trace(c)
    cov_tp = correct * n - t_sum @ p_sum
    cov_pp = n * n - p_sum @ p_sum
    cov_tt = n * n - t_sum @ t_sum
    if cov_pp * cov_tt == 0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_tt * cov_pp))


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2:
        return float("nan")
    xm, ym = x - x.mean(), y - y.mean()
    denom = np.sqrt((xm @ xm) * (ym @ ym))
    if denom == 0:
        return float("nan")
    return float(np.clip((xm @ ym) / denom, -1.0, 1.0))


def rankdata(a) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank (scipy.stats.rankdata, method='average')."""
    a = np.asarray(a, dtype=np.float64)
    sorter = np.argsort(a, kind="mergesort")
    inv = np.empty(sorter.size, dtype=np.intp)
    inv[sorter] = np.arange(sorter.size)
    s = a[sorter]
    first = np.r_[True, s[1:] != s[:-1]]
    dense = first.cumsum()[inv]
    count = np.r_[np.nonzero(first)[0], first.size]
    return 0.5 * (count[dense] + count[dense - 1] + 1)


def spearman(x, y) -> float:
    return pearson(rankdata(x), rankdata(y))
