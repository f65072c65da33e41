"""Reasoning-time controls on top of the engine: self-consistency and answer-complete stops.

- `self_consistency(engine, prompt, k, extract)`: k sampled completions, a majority vote over
  their extracted answers (Wang et al. 2022, arXiv 2203.11171); the extractor is pluggable
  (default: srlm.data.answers.extract_number, "The answer is N" else the last number).
- `ANSWER_COMPLETE`: a regex for `Engine.generate(stop_condition=...)` that ends a row as soon
  as the synthetic tasks' final line "The answer is N." is written.
The thinking budget itself lives in the engine (`thinking_budget=`), since it steers decoding.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from srlm.data.answers import extract_number, majority
from srlm.errors import SrlmError
from srlm.infer.engine import Completion, Engine

ANSWER_COMPLETE = re.compile(r"[Tt]he answer is:?\s*\$?-?[\d,]*\d(?:\.\d+)?\.(?:\s|$)")


@dataclass
class Vote:
    answer: str | None
    #: votes per answer, most common first
    counts: list[tuple[str, int]]
    completions: list[Completion]
    answers: list[str | None]


def self_consistency(
    engine: Engine,
    prompt: str | list[dict] | list[int],
    k: int = 8,
    extract: Callable[[str], str | None] | None = None,
    temperature: float = 0.7,
    **generate_kwargs,
) -> Vote:
    """Sample `k` completions of one prompt (sharing one prefill) and vote over their answers."""
    if engine.tokenizer is None:
        raise SrlmError("self-consistency extracts answers from text: create the Engine with a tokenizer")
    if temperature == 0 and k > 1:
        raise SrlmError("self-consistency with temperature 0 draws the same completion k times: use temperature > 0")
    extract = extract or extract_number
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        group = engine.generate([prompt], n=k, temperature=temperature, **generate_kwargs)[0]
    else:
        group = engine.generate_text([prompt], n=k, temperature=temperature, **generate_kwargs)[0]
    answers = [extract(c.text or "") for c in group]
    answer, counts = majority(answers)
    return Vote(answer, counts, group, answers)
