"""Rewards for RL on verifiable answers: named functions of (completion text, example, task).

`REWARDS` maps names to functions returning a float; a stage's config weighs them by name
(`rewards: {correct: 1.0, format: 0.1}`). Register your own by adding to `REWARDS`. `score`
runs them with a time limit each: a reward that raises, or runs past `timeout_s`, scores 0 for
that completion and is counted, so one bad verifier call never ends a long run.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch

from srlm.data.deadline import TimeLimitExceeded, time_limit

_FORMAT = re.compile(r"^\s*<think>.+?</think>\s*\S", re.DOTALL)


def reward_correct(text: str, example, task) -> float:
    """1 when the task's verifier accepts the extracted answer."""
    return float(bool(task.is_correct(task.extract(text), example)))


def reward_format(text: str, example, task) -> float:
    """1 when the completion is `<think>...</think>` followed by an answer."""
    return float(bool(_FORMAT.match(text)))


REWARDS: dict[str, Callable[[str, Any, Any], float]] = {"correct": reward_correct, "format": reward_format}


def score(
    texts: list[str],
    examples: list,
    task,
    rewards: dict[str, float],
    timeout_s: float = 5.0,
    functions: dict[str, Callable] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, int]]:
    """(weighted reward per completion, each named reward per completion, {errors, timeouts})."""
    functions = functions or REWARDS
    per: dict[str, torch.Tensor] = {}
    counts = {"errors": 0, "timeouts": 0}
    for name in rewards:
        fn = functions[name]
        vals = []
        for text, ex in zip(texts, examples):
            try:
                with time_limit(timeout_s):
                    vals.append(float(fn(text, ex, task)))
            except TimeLimitExceeded:
                counts["timeouts"] += 1
                vals.append(0.0)
            except Exception:  # a user reward function's bug must not end a long run: count it, score 0
                counts["errors"] += 1
                vals.append(0.0)
        per[name] = torch.tensor(vals, dtype=torch.float32)
    total = sum(w * per[n] for n, w in rewards.items())
    return total, per, counts
