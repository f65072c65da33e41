"""synth-arith: multi-digit addition, subtraction (opt-in) and multiplication with a digit-by-digit
scratchpad. Difficulty = number of digits of each operand."""

from __future__ import annotations

from random import Random
from typing import Any

from srlm.data.synthetic.base import Family, SyntheticTask, register_family
from srlm.data.tasks import register
from srlm.errors import SrlmError


def add_steps(a: int, b: int) -> list[str]:
    """Digit-by-digit addition from the right, one line per column: 'x + y + carry = s, digit, carry'."""
    if a < 10 and b < 10:
        return [f"{a} + {b} = {a + b}."]
    da, db = str(a)[::-1], str(b)[::-1]
    lines, carry = [f"{a} + {b}:"], 0
    for k in range(max(len(da), len(db))):
        x = int(da[k]) if k < len(da) else 0
        y = int(db[k]) if k < len(db) else 0
        s = x + y + carry
        lines.append(f"{x} + {y} + {carry} = {s}, digit {s % 10}, carry {s // 10}.")
        carry = s // 10
    lines.append(f"{a} + {b} = {a + b}.")
    return lines


def sub_steps(a: int, b: int) -> list[str]:
    """Digit-by-digit subtraction (a >= b) from the right; a column that needs a borrow is written
    with its 10 added ('13 - 5 - 0 = 8, digit 8, borrow 1') so no step goes negative."""
    if a < 10:
        return [f"{a} - {b} = {a - b}."]
    da, db = str(a)[::-1], str(b)[::-1]
    lines, borrow = [f"{a} - {b}:"], 0
    for k in range(len(da)):
        x, y = int(da[k]), int(db[k]) if k < len(db) else 0
        nxt = 1 if x < y + borrow else 0
        r = x + 10 * nxt - y - borrow
        lines.append(f"{x + 10 * nxt} - {y} - {borrow} = {r}, digit {r}, borrow {nxt}.")
        borrow = nxt
    lines.append(f"{a} - {b} = {a - b}.")
    return lines


def calc_steps(a: int, op: str, b: int) -> list[str]:
    """Scratchpad lines for one operation ('*' multiplies a by the digits of b)."""
    if op == "+":
        return add_steps(a, b)
    if op == "-":
        return sub_steps(a, b)
    return mul_steps(b, a) if a < b else mul_steps(a, b)


def mul_digit_steps(a: int, digit: int) -> list[str]:
    """Multi-digit times one digit, one line per digit of `a`: 'x * digit + carry = p, digit, carry'."""
    if a < 10:
        return [f"{a} * {digit} = {a * digit}."]
    lines, carry = [f"{a} * {digit}:"], 0
    for ch in str(a)[::-1]:
        p = int(ch) * digit + carry
        lines.append(f"{ch} * {digit} + {carry} = {p}, digit {p % 10}, carry {p // 10}.")
        carry = p // 10
    lines.append(f"{a} * {digit} = {a * digit}.")
    return lines


def mul_steps(a: int, b: int) -> list[str]:
    """Long multiplication: a times each digit of b (right to left), shifted, then a running sum."""
    lines: list[str] = []
    acc = None
    for k, ch in enumerate(str(b)[::-1]):
        part = mul_digit_steps(a, int(ch))
        lines += part
        p = a * int(ch) * 10**k
        if k:
            lines.append(f"{a} * {ch}{'0' * k} = {p}.")
        if acc is None:
            acc = p
        else:
            lines += add_steps(acc, p)
            acc += p
    if b >= 10:
        lines.append(f"{a} * {b} = {a * b}.")
    return lines


_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _arith_problem(rng: Random, d: int, o: dict[str, Any]) -> tuple[str, list[str], str]:
    op = rng.choice(o["ops"])
    lo = 10 ** (d - 1) if d > 1 else 1
    a, b = rng.randint(lo, 10**d - 1), rng.randint(lo, 10**d - 1)
    if op == "-" and a < b:  # no negatives
        a, b = b, a
    return f"What is {a} {op} {b}?", calc_steps(a, op, b), str(_APPLY[op](a, b))


def _check(o: dict[str, Any]) -> None:
    if max(o["difficulties"]) > 12:
        raise SrlmError("synth-arith: difficulty is the number of digits; keep it <= 12")


register_family(
    Family(
        "arith",
        {"difficulties": (1, 2, 3), "ops": "+*"},
        "+-*",
        lambda rng, d, o: (*_arith_problem(rng, d, o), {}),
        _check,
    )
)


@register
class SynthArith(SyntheticTask):
    """Multi-digit addition and multiplication with a digit-by-digit scratchpad; difficulty = digits."""

    name = "synth-arith"
    family = "arith"
    max_new_tokens = 1024
