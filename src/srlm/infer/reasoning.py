"""Reasoning-time controls on top of the engine: self-consistency and answer-complete stops.

- `self_consistency(engine, prompt, k, extract)`: k sampled completions, a majority vote over
  their extracted answers (Wang et al. 2022, arXiv 2203.11171); the extractor is pluggable
  (default: srlm.data.synthetic.extract_number, "The answer is N" else the last number).
- `ANSWER_COMPLETE`: a regex for `Engine.generate(stop_condition=...)` that ends a row as soon
  as the synthetic tasks' final line "The answer is N." is written.
The thinking budget itself lives in the engine (`thinking_budget=`), since it steers decoding.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from srlm.errors import SrlmError
from srlm.infer.engine import Completion, Engine

ANSWER_COMPLETE = re.compile(r"[Tt]he answer is:?\s*\$?-?[\d,]*\d(?:\.\d+)?\.(?:\s|$)")


def _default_extract(text: str) -> str | None:
    from srlm.data.synthetic import extract_number

    return extract_number(text)


@dataclass
class Vote:
    answer: str | None
    #: votes per answer, most common first
    counts: list[tuple[str, int]]
    completions: list[Completion]
    answers: list[str | None]


def majority(answers: list[str | None]) -> tuple[str | None, list[tuple[str, int]]]:
    """Most frequent non-None answer (whitespace-stripped); ties go to the one seen first."""
    counts = Counter(a.strip() for a in answers if a is not None)
    if not counts:
        return None, []
    order = {}
    for a in answers:
        if a is not None:
            order.setdefault(a.strip(), len(order))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], order[kv[0]]))
    return ranked[0][0], ranked


def self_consistency(engine: Engine, prompt: str | list[dict] | list[int], k: int = 8,
                     extract: Callable[[str], str | None] | None = None, temperature: float = 0.7,
                     **generate_kwargs) -> Vote:
    """Sample `k` completions of one prompt (sharing one prefill) and vote over their answers."""
    if engine.tokenizer is None:
        raise SrlmError("self-consistency extracts answers from text: create the Engine with a tokenizer")
    if temperature == 0 and k > 1:
        raise SrlmError("self-consistency with temperature 0 draws the same completion k times: use temperature > 0")
    extract = extract or _default_extract
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        group = engine.generate([prompt], n=k, temperature=temperature, **generate_kwargs)[0]
    else:
        group = engine.generate_text([prompt], n=k, temperature=temperature, **generate_kwargs)[0]
    answers = [extract(c.text or "") for c in group]
    answer, counts = majority(answers)
    return Vote(answer, counts, group, answers)
