"""Synthetic reasoning suites: generated problems with exact worked solutions and verifiers.

Three families, each a registered task:

- ``synth-gsm``        multi-step word problems over a dependency graph of named quantities
                       (iGSM-like). Difficulty = number of operations needed for the asked quantity.
- ``synth-countdown``  reach a target from given numbers with + - * / (exact division).
                       Difficulty = number of operations in the reference solution (d + 1 numbers).
- ``synth-arith``      multi-digit addition / multiplication (and subtraction, opt-in) with a
                       digit-by-digit scratchpad.
                       Difficulty = number of digits of each operand.

Contract:
- Generation is pure: same (family, seed, split, difficulties, options) -> same problems, from a
  private ``random.Random``; asking for n problems gives a prefix of asking for more.
- Train and test never overlap: a problem's split is a fixed function of the hash of its canonical
  text (``split_of``); a draw keeps only problems whose hash falls in its split's bucket.
- Every ``Example`` has ``solution`` = reasoning + final line ``The answer is X.``, with
  ``meta["reasoning"]`` (the bare reasoning) and ``meta["final"]`` (the answer line) so a trainer can
  build ``<think>{reasoning}</think> {final}``; ``meta["difficulty"]`` and ``meta["family"]`` too.
- ``extract`` reads the answer after the last ``</think>`` when present, else from the last
  ``The answer is X``; failing that, numeric families take the last number in the text (countdown
  takes the text after ``</think>`` as the expression, and otherwise gives up).
- Verifiers never call ``eval``: numbers are parsed as text, countdown expressions by an ``ast``
  whitelist evaluated with exact fractions.

Numbers are written plainly ("123") since the tokenizer splits digits one per token.
"""

from __future__ import annotations

from srlm.data.answers import extract_number, numbers_equal, parse_number
from srlm.data.synthetic.base import (
    REGISTRY,
    TEST_PER_MILLE,
    Family,
    SyntheticTask,
    corpus_lines,
    family_options,
    generate_problems,
    load_jsonl,
    problem_hash,
    register_family,
    save_jsonl,
    split_of,
)

from srlm.data.synthetic.gsm import ITEMS, NAMES, SynthGSM  # isort: skip  (the registration order is the families')
from srlm.data.synthetic.countdown import SynthCountdown, check_countdown, countdown_value, extract_expression  # isort: skip
from srlm.data.synthetic.arith import SynthArith, add_steps, calc_steps, mul_digit_steps, mul_steps, sub_steps  # isort: skip

#: the families, in the order their modules register them
FAMILIES = tuple(REGISTRY)

__all__ = [
    "FAMILIES",
    "ITEMS",
    "NAMES",
    "REGISTRY",
    "TEST_PER_MILLE",
    "Family",
    "SynthArith",
    "SynthCountdown",
    "SynthGSM",
    "SyntheticTask",
    "add_steps",
    "calc_steps",
    "check_countdown",
    "corpus_lines",
    "countdown_value",
    "extract_expression",
    "extract_number",
    "family_options",
    "generate_problems",
    "load_jsonl",
    "mul_digit_steps",
    "mul_steps",
    "numbers_equal",
    "parse_number",
    "problem_hash",
    "register_family",
    "save_jsonl",
    "split_of",
    "sub_steps",
]
