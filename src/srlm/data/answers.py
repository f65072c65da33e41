"""Reading final answers out of model text, comparing numbers, and majority votes.

Generic helpers that the tasks (synthetic suites), inference (self-consistency) and evaluation
(maj@k) share:
- `extract_number(output)`: the answer after the last `</think>` if present, else after the last
  "The answer is", else the last number in the text;
- `parse_number` / `numbers_equal`: exact comparison of numbers written as text ("1,000", "$7.");
- `majority(answers, key)`: the most frequent answer (grouped by `key`, default the stripped
  text), ties to the first seen, with the votes per answer; `majority_vote` returns the winner only.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from fractions import Fraction

_ANSWER_LINE = re.compile(r"[Tt]he answer is\s*:?")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _answer_span(output: str) -> tuple[str | None, str]:
    """(text after the last 'The answer is', or None; the region searched)."""
    region = output
    if "</think>" in output:
        region = output.rsplit("</think>", 1)[1]
    starts = [m.end() for m in _ANSWER_LINE.finditer(region)]
    if not starts:
        return None, region
    return region[starts[-1] :].split("\n", 1)[0].strip(), region


def extract_number(output: str) -> str | None:
    """Answer after ``</think>`` if present, else the last 'The answer is N', else the last number."""
    span, region = _answer_span(output)
    for text in ([span] if span is not None else []) + [region]:
        nums = _NUMBER.findall(text)
        if nums:
            # After 'The answer is' the answer is the first number; in free text, the last one.
            return (nums[0] if text is span else nums[-1]).rstrip(".,")
    return None


def parse_number(text: str | None) -> Fraction | None:
    """'42', '42.0', '1,000', '$1,000', ' 7. ' -> exact value; anything else -> None."""
    if text is None:
        return None
    s = text.strip().rstrip(".").strip().lstrip("$").strip()
    if "," in s:
        if not re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
            return None
        s = s.replace(",", "")
    if not re.fullmatch(r"-?(\d+(\.\d*)?|\.\d+)", s):
        return None
    return Fraction(s)


def numbers_equal(prediction: str | None, gold: str) -> bool:
    p, g = parse_number(prediction), parse_number(gold)
    return p is not None and g is not None and p == g


def majority(
    answers: Iterable[str | None], key: Callable[[str], Hashable] | None = None
) -> tuple[str | None, list[tuple[str, int]]]:
    """(winner, votes): the most frequent non-None answer, grouped by `key` (default: the stripped text),
    ties to the group seen first; each group is spelled as its first member (stripped); votes are
    (spelling, count), most common first. (None, []) when nothing voted."""
    key = key or (lambda a: a.strip())
    counts: Counter = Counter()
    first: dict = {}
    for a in answers:
        if a is None:
            continue
        k = key(a)
        counts[k] += 1
        first.setdefault(k, a.strip())
    if not counts:
        return None, []
    order = {k: i for i, k in enumerate(first)}
    ranked = sorted(counts, key=lambda k: (-counts[k], order[k]))
    return first[ranked[0]], [(first[k], counts[k]) for k in ranked]


def majority_vote(answers: Iterable[str | None], key: Callable[[str], Hashable] | None = None) -> str | None:
    """The winner of `majority`, or None if nothing voted."""
    return majority(answers, key)[0]
