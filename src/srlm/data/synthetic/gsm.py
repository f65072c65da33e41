"""synth-gsm: multi-step word problems over a dependency graph of named quantities (iGSM-like).
Difficulty = number of operations needed for the asked quantity."""

from __future__ import annotations

from random import Random
from typing import Any

from srlm.data.synthetic.base import Family, SyntheticTask, check_number_range, register_family
from srlm.data.tasks import register
from srlm.errors import SrlmError

NAMES = (
    "Ann",
    "Bob",
    "Cid",
    "Dan",
    "Eve",
    "Fay",
    "Gus",
    "Hal",
    "Ivy",
    "Jon",
    "Kim",
    "Lou",
    "Max",
    "Ned",
    "Oli",
    "Pam",
    "Ray",
    "Sam",
    "Tom",
    "Uma",
    "Val",
    "Wes",
    "Yan",
    "Zoe",
)
ITEMS = (
    "apples",
    "pens",
    "books",
    "cards",
    "coins",
    "shells",
    "stamps",
    "marbles",
    "cookies",
    "balls",
    "eggs",
    "cups",
    "hats",
    "keys",
    "toys",
    "rocks",
)


def _gsm_problem(rng: Random, d: int, o: dict[str, Any]) -> tuple[str, list[str], str]:
    """One word problem needing exactly `d` operations. Returns (prompt, reasoning lines, answer)."""
    from srlm.data.synthetic.arith import calc_steps  # scratchpad lines; imported late so families register in order

    lo, hi, top = 2, o["max_number"], o["max_value"]
    ops, max_factor, two = o["ops"], o["max_factor"], o["two_operand"]
    need = 1 + 2 * d + o["distractors"]
    if need > len(NAMES):
        raise SrlmError(
            f"synth-gsm: difficulty {d} with {o['distractors']} distractors needs up to {need} "
            f"names but only {len(NAMES)} exist; lower `difficulties` or `distractors`."
        )
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


def _check(o: dict[str, Any]) -> None:
    check_number_range("gsm", o)
    if o["max_factor"] < 2 or o["distractors"] < 0:
        raise SrlmError(
            f"synth-gsm: need max_factor >= 2 and distractors >= 0, "
            f"got max_factor={o['max_factor']}, distractors={o['distractors']}"
        )


register_family(
    Family(
        "gsm",
        {
            "difficulties": (1, 2, 3, 4),
            "max_number": 50,
            "max_value": 1000,
            "ops": "+-*",
            "max_factor": 5,
            "two_operand": True,
            "distractors": 0,
            "shuffle": False,
            "scratchpad": False,
        },
        "+-*",
        lambda rng, d, o: (*_gsm_problem(rng, d, o), {}),
        _check,
    )
)


@register
class SynthGSM(SyntheticTask):
    """Multi-step word problems over named quantities; difficulty = operations needed."""

    name = "synth-gsm"
    family = "gsm"
    max_new_tokens = 256
