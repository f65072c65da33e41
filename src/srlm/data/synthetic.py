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

import ast
import hashlib
import json
import re
from fractions import Fraction
from pathlib import Path
from random import Random
from typing import Any, Callable, Iterable, Iterator

from srlm.data.tasks import Example, Task, register
from srlm.errors import SrlmError

FAMILIES = ("gsm", "countdown", "arith")
#: share of the hash space that belongs to the test split (per mille)
TEST_PER_MILLE = 100
# Draws per problem before accepting a repeat (tiny problem spaces, e.g. 1-digit sums in test).
_MAX_FRESH_TRIES = 200
_MAX_BUCKET_TRIES = 20000

# ---------------------------------------------------------------------------------------------
# Split by hash


def problem_hash(family: str, text: str) -> str:
    return hashlib.sha1(f"{family}\x00{text}".encode()).hexdigest()


def split_of(family: str, text: str) -> str:
    """The split ("train" or "test") a problem belongs to, fixed by the hash of its text."""
    return "test" if int(problem_hash(family, text)[:8], 16) % 1000 < TEST_PER_MILLE else "train"


# ---------------------------------------------------------------------------------------------
# Answers: extraction and numeric verification

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
    return region[starts[-1]:].split("\n", 1)[0].strip(), region


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


# ---------------------------------------------------------------------------------------------
# Countdown expressions: safe parsing and checking

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


# ---------------------------------------------------------------------------------------------
# Family: synth-gsm (dependency graph of named quantities)

NAMES = (
    "Ann", "Bob", "Cid", "Dan", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim", "Lou", "Max",
    "Ned", "Oli", "Pam", "Ray", "Sam", "Tom", "Uma", "Val", "Wes", "Yan", "Zoe",
)
ITEMS = (
    "apples", "pens", "books", "cards", "coins", "shells", "stamps", "marbles", "cookies", "balls",
    "eggs", "cups", "hats", "keys", "toys", "rocks",
)


def _gsm_problem(rng: Random, d: int, o: dict[str, Any]) -> tuple[str, list[str], str]:
    """One word problem needing exactly `d` operations. Returns (prompt, reasoning lines, answer)."""
    lo, hi, top = 2, o["max_number"], o["max_value"]
    ops, max_factor, two = o["ops"], o["max_factor"], o["two_operand"]
    need = 1 + 2 * d + o["distractors"]
    if need > len(NAMES):
        raise SrlmError(f"synth-gsm: difficulty {d} with {o['distractors']} distractors needs up to {need} "
                        f"names but only {len(NAMES)} exist; lower `difficulties` or `distractors`.")
    names = rng.sample(NAMES, need)
    item = rng.choice(ITEMS)
    value: dict[str, int] = {}
    facts: list[tuple[str, list[str]]] = []  # (sentence, names it depends on)
    steps: list[str] = []

    def new_base(v: int) -> str:
        name = names.pop()
        value[name] = v
        facts.append((f"{name} has {v} {item}.", []))
        return name

    cur = new_base(rng.randint(lo, hi))
    for _ in range(d):
        x = value[cur]
        others = [n for n in value if n != cur]
        choices = []
        if "+" in ops and x + lo < top:
            choices.append("+k")
            if two:
                choices.append("+q")
        if "-" in ops and x - lo >= 1:
            choices.append("-k")
            if two:
                choices.append("-q")
        if "*" in ops and x * 2 < top:
            choices.append("*k")
        if not choices:  # the allowed ops cannot keep values in range: fall back to a safe one
            choices.append("-k" if x - lo >= 1 else "+k")
        kind = rng.choice(choices)
        name = names.pop()
        if kind == "+k":
            k = rng.randint(lo, min(hi, top - 1 - x))
            v, text, step = x + k, f"{name} has {k} more {item} than {cur}.", f"{cur} + {k} = {x} + {k}"
            deps = [cur]
        elif kind == "-k":
            k = rng.randint(lo, min(hi, x - 1))
            v, text, step = x - k, f"{name} has {k} fewer {item} than {cur}.", f"{cur} - {k} = {x} - {k}"
            deps = [cur]
        elif kind == "*k":
            k = rng.randint(2, min(max_factor, (top - 1) // x))
            v, text, step = k * x, f"{name} has {k} times as many {item} as {cur}.", f"{k} * {cur} = {k} * {x}"
            deps = [cur]
        else:
            # Second operand: an earlier quantity if one fits, else a new base quantity.
            fits = [n for n in others if (value[n] + x < top if kind == "+q" else 1 <= x - value[n])]
            if fits and rng.random() < 0.5:
                other = rng.choice(fits)
            else:
                other = new_base(rng.randint(lo, min(hi, top - 1 - x) if kind == "+q" else min(hi, x - 1)))
            y = value[other]
            if kind == "+q":
                v, text = x + y, f"{name} has as many {item} as {cur} and {other} together."
                step = f"{cur} + {other} = {x} + {y}"
            else:
                v, text = x - y, f"{name} has as many {item} as {cur} has more than {other}."
                step = f"{cur} - {other} = {x} - {y}"
            deps = [cur, other]
        value[name] = v
        facts.append((text, deps))
        if o["scratchpad"]:
            a, op, b = step.rsplit(" = ", 1)[1].split()
            steps.append(f"{name} = {step}.")
            steps += calc_steps(int(a), op, int(b))
            steps.append(f"{name} = {v}.")
        else:
            steps.append(f"{name} = {step} = {v}.")
        cur = name

    # Distractors: facts that the question does not need (new people, or derived from anyone).
    for _ in range(o["distractors"]):
        name = names.pop()
        src = rng.choice(list(value))
        if rng.random() < 0.5 or value[src] + lo >= top:
            text, deps = f"{name} has {rng.randint(lo, hi)} {item}.", []
        else:
            text, deps = f"{name} has {rng.randint(lo, min(hi, top - 1 - value[src]))} more {item} than {src}.", [src]
        # Insert after its source's fact so the story stays in dependency order.
        after = next((i for i, (t, _) in enumerate(facts) if deps and t.startswith(deps[0] + " ")), -1)
        facts.insert(rng.randint(after + 1, len(facts)), (text, deps))
    sentences = [t for t, _ in facts]
    if o["shuffle"]:
        rng.shuffle(sentences)
    prompt = " ".join(sentences) + f" How many {item} does {cur} have?"
    return prompt, steps, str(value[cur])


# ---------------------------------------------------------------------------------------------
# Family: synth-countdown

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
            prompt = (f"Make {target} from the numbers {' '.join(map(str, numbers))} "
                      f"using {' '.join(ops)} and each number at most once.")
            return prompt, steps, expr, {"numbers": numbers, "target": target, "ops": ops}
    raise SrlmError(f"synth-countdown: could not build a difficulty-{d} problem with ops {ops!r}, "
                    f"max_number={hi}, max_value={top}; raise max_value or allow more ops.")


# ---------------------------------------------------------------------------------------------
# Family: synth-arith (scratchpad arithmetic)


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


# ---------------------------------------------------------------------------------------------
# Generation


DEFAULTS: dict[str, dict[str, Any]] = {
    "gsm": {"difficulties": (1, 2, 3, 4), "max_number": 50, "max_value": 1000, "ops": "+-*",
            "max_factor": 5, "two_operand": True, "distractors": 0, "shuffle": False, "scratchpad": False},
    "countdown": {"difficulties": (1, 2, 3), "max_number": 25, "max_value": 1000, "ops": "+-*/"},
    "arith": {"difficulties": (1, 2, 3), "ops": "+*"},
}
_ALLOWED_OPS = {"gsm": "+-*", "countdown": "+-*/", "arith": "+-*"}


def _options(family: str, options: dict[str, Any]) -> dict[str, Any]:
    if family not in DEFAULTS:
        raise SrlmError(f"unknown synthetic family {family!r}; choose one of {', '.join(FAMILIES)}")
    o = dict(DEFAULTS[family])
    unknown = set(options) - set(o)
    if unknown:
        raise SrlmError(f"synth-{family}: unknown option(s) {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(sorted(o))}")
    o.update({k: v for k, v in options.items() if v is not None})
    o["difficulties"] = tuple(int(x) for x in o["difficulties"])
    if not o["difficulties"] or min(o["difficulties"]) < 1:
        raise SrlmError(f"synth-{family}: difficulties must be a non-empty list of integers >= 1, "
                        f"got {list(o['difficulties'])}")
    bad = set(o["ops"]) - set(_ALLOWED_OPS[family])
    if not o["ops"] or bad:
        raise SrlmError(f"synth-{family}: ops={o['ops']!r}; use a non-empty subset of {_ALLOWED_OPS[family]!r}")
    if family != "arith":
        if o["max_number"] < 2 or o["max_value"] <= o["max_number"] + 2:
            raise SrlmError(f"synth-{family}: need max_number >= 2 and max_value > max_number + 2, "
                            f"got max_number={o['max_number']}, max_value={o['max_value']}")
    if family == "gsm" and (o["max_factor"] < 2 or o["distractors"] < 0):
        raise SrlmError(f"synth-gsm: need max_factor >= 2 and distractors >= 0, "
                        f"got max_factor={o['max_factor']}, distractors={o['distractors']}")
    if family == "arith" and max(o["difficulties"]) > 12:
        raise SrlmError("synth-arith: difficulty is the number of digits; keep it <= 12")
    return o


def _make(family: str, rng: Random, d: int, o: dict[str, Any]) -> Example:
    meta: dict[str, Any] = {}
    if family == "gsm":
        prompt, steps, answer = _gsm_problem(rng, d, o)
    elif family == "countdown":
        prompt, steps, answer, meta = _countdown_problem(rng, d, o)
    else:
        prompt, steps, answer = _arith_problem(rng, d, o)
    reasoning = "\n".join(steps)
    final = f"The answer is {answer}."
    meta.update(family=family, difficulty=d, reasoning=reasoning, final=final)
    return Example(id=f"synth-{family}-{problem_hash(family, prompt)[:12]}", prompt=prompt, answer=answer,
                   solution=f"{reasoning}\n{final}", meta=meta)


def generate_problems(family: str, n: int, seed: int = 0, split: str = "train",
                      difficulties: Iterable[int] | None = None, **options: Any) -> list[Example]:
    """`n` problems of `family` ("gsm", "countdown", "arith") for `split` ("train" or "test").

    Difficulties cycle in the order given (problem i has difficulties[i % len]), so every level
    gets an equal share. Problems are distinct within a draw unless the split's share of the
    problem space is smaller than asked (e.g. 1-digit sums), in which case repeats are allowed.
    Options per family are in `DEFAULTS`.
    """
    if split not in ("train", "test"):
        raise SrlmError(f"split must be 'train' or 'test', got {split!r}")
    if difficulties is not None:
        options["difficulties"] = difficulties
    o = _options(family, options)
    rng = Random(f"srlm-synthetic/{family}/{split}/{seed}")
    seen: set[str] = set()
    exhausted: set[int] = set()  # levels whose fresh problems ran out: accept repeats at once
    out: list[Example] = []
    for i in range(n):
        d = o["difficulties"][i % len(o["difficulties"])]
        repeat = None
        for tries in range(_MAX_BUCKET_TRIES):
            ex = _make(family, rng, d, o)
            if split_of(family, ex.prompt) != split:
                continue
            if ex.prompt not in seen or d in exhausted:
                break
            repeat = repeat or ex
            if tries >= _MAX_FRESH_TRIES:
                ex = repeat
                exhausted.add(d)
                break
        else:
            raise SrlmError(f"synth-{family}: no {split} problem of difficulty {d} found; "
                            f"the problem space is too small, widen the options")
        seen.add(ex.prompt)
        ex.meta["split"] = split
        out.append(ex)
    return out


def corpus_lines(n: int, seed: int = 0, families: Iterable[str] = FAMILIES, **options: Any) -> Iterator[str]:
    """Plain text for tokenizer training: `n` train problems per family, each as
    'question\\nreasoning\\nThe answer is X.' (no chat markup). `options` maps a family to its
    generator options, e.g. ``corpus_lines(1000, gsm={"scratchpad": True})``."""
    for family in families:
        for ex in generate_problems(family, n, seed=seed, split="train", **options.get(family, {})):
            yield f"{ex.prompt}\n{ex.solution}"


def save_jsonl(examples: Iterable[Example], path: str | Path) -> None:
    """One JSON object per example, written atomically (a run that reuses the file never sees half)."""
    from srlm.data.io import write_text_atomic

    write_text_atomic(path, "".join(json.dumps({"id": ex.id, "prompt": ex.prompt, "answer": ex.answer,
                                                "solution": ex.solution, "meta": ex.meta}) + "\n"
                                    for ex in examples))


def load_jsonl(path: str | Path) -> list[Example]:
    out = []
    p = Path(path)
    if not p.is_file():
        raise SrlmError(f"{p}: no such file; pass a JSONL written by srlm.data.synthetic.save_jsonl, "
                        f"or no data to generate problems")
    for lineno, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            out.append(Example(id=r["id"], prompt=r["prompt"], answer=str(r["answer"]),
                               solution=r.get("solution"), meta=r.get("meta", {})))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SrlmError(f"{p}:{lineno}: not a synthetic problem record ({e}); each line needs "
                            f"id, prompt, answer (and optionally solution, meta)") from None
    return out


# ---------------------------------------------------------------------------------------------
# Tasks


class SyntheticTask(Task):
    """Shared behaviour: generation on `load`, numeric verification, per-difficulty metrics.

    Options: seed, difficulties (both splits), test_difficulties (overrides for test, e.g. a
    held-out level), n_train, n_test, plus the family's generator options (see `DEFAULTS`).
    """

    family: str = ""

    def __init__(self, seed: int = 0, difficulties: Iterable[int] | None = None,
                 test_difficulties: Iterable[int] | None = None, n_train: int = 10000,
                 n_test: int | None = None, **options: Any):
        self.seed = seed
        self.options = options
        self.difficulties = tuple(difficulties or DEFAULTS[self.family]["difficulties"])
        self.test_difficulties = tuple(test_difficulties or self.difficulties)
        self.n_train = n_train
        self.n_test = n_test if n_test is not None else 250 * len(self.test_difficulties)
        _options(self.family, {**options, "difficulties": self.difficulties})  # fail early on bad options
        self._difficulty_by_id: dict[str, int] = {}
        if options.get("scratchpad"):  # digit-by-digit traces are ~4x longer
            self.max_new_tokens = 4 * type(self).max_new_tokens

    def source(self, split: str, data: str | None) -> Path | None:
        """The jsonl given as data (every split reads it), or None: problems generated for `split`."""
        return Path(data) if data is not None else None

    def load(self, split: str = "test", data: str | None = None, limit: int | None = None) -> list[Example]:
        if data is not None:
            examples = load_jsonl(data)[:limit]
        else:
            n = limit if limit is not None else (self.n_train if split == "train" else self.n_test)
            diffs = self.test_difficulties if split == "test" else self.difficulties
            examples = generate_problems(self.family, n, seed=self.seed, split=split, difficulties=diffs,
                                         **self.options)
        for ex in examples:
            if "difficulty" in ex.meta:
                self._difficulty_by_id[ex.id] = ex.meta["difficulty"]
        return examples

    def extract(self, output: str) -> str | None:
        return extract_number(output)

    def is_correct(self, prediction: str | None, example: Example) -> bool:
        return numbers_equal(prediction, example.answer)

    def _difficulty(self, r: dict[str, Any]) -> int | None:
        if "difficulty" in r:
            return r["difficulty"]
        meta = r.get("meta") or getattr(r.get("example"), "meta", None) or {}
        if "difficulty" in meta:
            return meta["difficulty"]
        return self._difficulty_by_id.get(r.get("id"))

    def metrics(self, records: list[dict[str, Any]]) -> dict[str, float]:
        """accuracy and n overall, and accuracy@dK / n@dK per difficulty K.

        A record's difficulty is read from `difficulty`, `meta["difficulty"]`, `example.meta`, or
        looked up by `id` among the problems this task loaded."""
        out = super().metrics(records)
        by: dict[int, list[bool]] = {}
        for r in records:
            d = self._difficulty(r)
            if d is not None:
                by.setdefault(int(d), []).append(bool(r["correct"]))
        for d in sorted(by):
            out[f"accuracy@d{d}"] = sum(by[d]) / len(by[d])
            out[f"n@d{d}"] = len(by[d])
        return out

    def protocol(self):
        return {"metrics": {"accuracy": "fraction of examples whose final number equals the answer (as numbers)",
                            "accuracy@dK": "the same over the problems of difficulty K"}, "references": {}}


@register
class SynthGSM(SyntheticTask):
    """Multi-step word problems over named quantities; difficulty = operations needed."""

    name = "synth-gsm"
    family = "gsm"
    max_new_tokens = 256


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


@register
class SynthArith(SyntheticTask):
    """Multi-digit addition and multiplication with a digit-by-digit scratchpad; difficulty = digits."""

    name = "synth-arith"
    family = "arith"
    max_new_tokens = 1024
