"""synth-countdown: reach a target from given numbers with + - * / (exact division).
Difficulty = number of operations in the reference solution (d + 1 numbers). Expressions are
checked by an `ast` whitelist evaluated with exact fractions: never `eval`."""

from __future__ import annotations

import ast
import re
from fractions import Fraction
from random import Random
from typing import Any, Callable, Iterable

from srlm.data.answers import _answer_span
from srlm.data.synthetic.base import Family, SyntheticTask, check_number_range, register_family
from srlm.data.tasks import Example, register
from srlm.errors import SrlmError

_OPS: dict[type, Callable[[Fraction, Fraction], Fraction | None]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    # Countdown allows division only when it is exact.
    ast.Div: lambda a, b: a / b if b != 0 and (a / b).denominator == 1 else None,
}
_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_MAX_EXPR_CHARS = 200


def _clean_expression(expr: str) -> str:
    s = expr.strip().replace("×", "*").replace("÷", "/").replace("−", "-")
    s = s.rstrip(".").strip()
    return s


def countdown_value(expr: str, numbers: Iterable[int], ops: str = "+-*/") -> int | None:
    """Value of `expr` if it is a valid countdown expression over `numbers`, else None.

    Valid: integers, + - * /, parentheses only; each given number used at most once (as many times
    as it is given); only operators in `ops`; every division exact. A trailing '= N' is ignored
    (the caller checks the target). Intermediate negatives are allowed; the result must be an integer.
    """
    s = _clean_expression(expr)
    if "=" in s:
        s = s.split("=", 1)[0].strip()
    if not s or len(s) > _MAX_EXPR_CHARS or not re.fullmatch(r"[\d\s+\-*/()]+", s):
        return None
    try:
        tree = ast.parse(s, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    # Check the numbers before computing anything, so no arithmetic runs on numbers not given.
    pool = list(numbers)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            if type(node.value) is not int or node.value not in pool:
                return None
            pool.remove(node.value)

    def walk(node: ast.AST) -> Fraction | None:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and _SYMBOL.get(type(node.op), "?") in ops:
            a, b = walk(node.left), walk(node.right)
            if a is None or b is None:
                return None
            return _OPS[type(node.op)](a, b)
        return None  # unary minus, power, names, calls, ...: not allowed

    try:
        value = walk(tree.body)
    except RecursionError:
        return None
    if value is None or value.denominator != 1:
        return None
    return int(value)


def check_countdown(expr: str | None, numbers: Iterable[int], target: int, ops: str = "+-*/") -> bool:
    return expr is not None and countdown_value(expr, numbers, ops) == target


def extract_expression(output: str) -> str | None:
    """Countdown: the expression after the last 'The answer is' (after ``</think>`` if present);
    with ``</think>`` but no answer line, the text after it."""
    span, region = _answer_span(output)
    if span is not None:
        return _clean_expression(span) or None
    if "</think>" in output:
        tail = region.strip().splitlines()
        return _clean_expression(tail[0]) if tail and tail[0].strip() else None
    return None


_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def _join(a: tuple[str, str | None], op: str, b: tuple[str, str | None]) -> str:
    """Minimal parentheses: wrap a child of lower precedence, or a right child of equal precedence
    under a non-commutative operator."""
    (sa, oa), (sb, ob) = a, b
    if oa is not None and _PREC[oa] < _PREC[op]:
        sa = f"({sa})"
    if ob is not None and (_PREC[ob] < _PREC[op] or (_PREC[ob] == _PREC[op] and op in "-/")):
        sb = f"({sb})"
    return f"{sa} {op} {sb}"


def _countdown_problem(rng: Random, d: int, o: dict[str, Any]) -> tuple[str, list[str], str, dict]:
    lo, hi, top, ops = 1, o["max_number"], o["max_value"], o["ops"]
    for _ in range(1000):
        numbers = [rng.randint(lo, hi) for _ in range(d + 1)]
        pool: list[tuple[int, str, str | None]] = [(n, str(n), None) for n in numbers]  # value, expr, top op
        steps = []
        while len(pool) > 1:
            i, j = rng.sample(range(len(pool)), 2)
            (a, ea, oa), (b, eb, ob) = pool[i], pool[j]
            if a < b:
                (a, ea, oa), (b, eb, ob) = (b, eb, ob), (a, ea, oa)
            choices = []
            if "+" in ops and a + b < top:
                choices.append("+")
            if "-" in ops and a - b >= 1:
                choices.append("-")
            if "*" in ops and a > 1 and b > 1 and a * b < top:
                choices.append("*")
            if "/" in ops and b > 1 and a % b == 0 and a != b:
                choices.append("/")
            if not choices:
                break
            op = rng.choice(choices)
            r = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]
            steps.append(f"{a} {op} {b} = {r}.")
            expr = _join((ea, oa), op, (eb, ob))
            pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [(r, expr, op)]
        if len(pool) == 1 and pool[0][0] not in numbers:
            target, expr = pool[0][0], pool[0][1]
            numbers.sort()
            prompt = (
                f"Make {target} from the numbers {' '.join(map(str, numbers))} "
                f"using {' '.join(ops)} and each number at most once."
            )
            return prompt, steps, expr, {"numbers": numbers, "target": target, "ops": ops}
    raise SrlmError(
        f"synth-countdown: could not build a difficulty-{d} problem with ops {ops!r}, "
        f"max_number={hi}, max_value={top}; raise max_value or allow more ops."
    )


register_family(
    Family(
        "countdown",
        {"difficulties": (1, 2, 3), "max_number": 25, "max_value": 1000, "ops": "+-*/"},
        "+-*/",
        _countdown_problem,
        lambda o: check_number_range("countdown", o),
    )
)


@register
class SynthCountdown(SyntheticTask):
    """Reach the target from the given numbers; any valid expression is accepted."""

    name = "synth-countdown"
    family = "countdown"
    max_new_tokens = 128

    def extract(self, output: str) -> str | None:
        return extract_expression(output)

    def is_correct(self, prediction: str | None, example: Example) -> bool:
        m = example.meta
        return check_countdown(prediction, m["numbers"], m["target"], m.get("ops", "+-*/"))
