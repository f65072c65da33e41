"""What every synthetic family shares: the split by hash, the family registry, generation, jsonl
files and the task base class. Families (gsm.py, countdown.py, arith.py) register a `Family`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Any, Callable, Iterable, Iterator

from srlm.data.answers import extract_number, numbers_equal
from srlm.data.tasks import Example, Task
from srlm.errors import SrlmError

#: share of the hash space that belongs to the test split (per mille)
TEST_PER_MILLE = 100
# Draws per problem before accepting a repeat (tiny problem spaces, e.g. 1-digit sums in test).
_MAX_FRESH_TRIES = 200
_MAX_BUCKET_TRIES = 20000


def problem_hash(family: str, text: str) -> str:
    return hashlib.sha1(f"{family}\x00{text}".encode()).hexdigest()


def split_of(family: str, text: str) -> str:
    """The split ("train" or "test") a problem belongs to, fixed by the hash of its text."""
    return "test" if int(problem_hash(family, text)[:8], 16) % 1000 < TEST_PER_MILLE else "train"


@dataclass(frozen=True)
class Family:
    """A problem family: its generator options and how one problem of difficulty d is made.

    make(rng, d, options) -> (prompt, reasoning lines, answer, extra meta)
    check(options): raises SrlmError for options the family cannot use (beyond `ops`).
    """

    name: str
    defaults: dict[str, Any]
    ops: str  # the operators it can use
    make: Callable[[Random, int, dict[str, Any]], tuple[str, list[str], str, dict]]
    check: Callable[[dict[str, Any]], None] = lambda o: None


#: family name -> Family, in registration order (gsm, countdown, arith)
REGISTRY: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    REGISTRY[family.name] = family
    return family


def family_options(family: str, options: dict[str, Any]) -> dict[str, Any]:
    """The family's defaults with `options` applied, checked."""
    if family not in REGISTRY:
        raise SrlmError(f"unknown synthetic family {family!r}; choose one of {', '.join(REGISTRY)}")
    fam = REGISTRY[family]
    o = dict(fam.defaults)
    unknown = set(options) - set(o)
    if unknown:
        raise SrlmError(
            f"synth-{family}: unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(o))}"
        )
    o.update({k: v for k, v in options.items() if v is not None})
    o["difficulties"] = tuple(int(x) for x in o["difficulties"])
    if not o["difficulties"] or min(o["difficulties"]) < 1:
        raise SrlmError(
            f"synth-{family}: difficulties must be a non-empty list of integers >= 1, got {list(o['difficulties'])}"
        )
    bad = set(o["ops"]) - set(fam.ops)
    if not o["ops"] or bad:
        raise SrlmError(f"synth-{family}: ops={o['ops']!r}; use a non-empty subset of {fam.ops!r}")
    fam.check(o)
    return o


def check_number_range(family: str, o: dict[str, Any]) -> None:
    """Families that draw numbers up to max_number and keep values under max_value."""
    if o["max_number"] < 2 or o["max_value"] <= o["max_number"] + 2:
        raise SrlmError(
            f"synth-{family}: need max_number >= 2 and max_value > max_number + 2, "
            f"got max_number={o['max_number']}, max_value={o['max_value']}"
        )


def _make(family: str, rng: Random, d: int, o: dict[str, Any]) -> Example:
    prompt, steps, answer, meta = REGISTRY[family].make(rng, d, o)
    meta = dict(meta)
    reasoning = "\n".join(steps)
    final = f"The answer is {answer}."
    meta.update(family=family, difficulty=d, reasoning=reasoning, final=final)
    return Example(
        id=f"synth-{family}-{problem_hash(family, prompt)[:12]}",
        prompt=prompt,
        answer=answer,
        solution=f"{reasoning}\n{final}",
        meta=meta,
    )


def generate_problems(
    family: str, n: int, seed: int = 0, split: str = "train", difficulties: Iterable[int] | None = None, **options: Any
) -> list[Example]:
    """`n` problems of `family` ("gsm", "countdown", "arith") for `split` ("train" or "test").

    Difficulties cycle in the order given (problem i has difficulties[i % len]), so every level
    gets an equal share. Problems are distinct within a draw unless the split's share of the
    problem space is smaller than asked (e.g. 1-digit sums), in which case repeats are allowed.
    Options per family are in its `defaults` (see `REGISTRY`).
    """
    if split not in ("train", "test"):
        raise SrlmError(f"split must be 'train' or 'test', got {split!r}")
    if difficulties is not None:
        options["difficulties"] = difficulties
    o = family_options(family, options)
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
            raise SrlmError(
                f"synth-{family}: no {split} problem of difficulty {d} found; "
                f"the problem space is too small, widen the options"
            )
        seen.add(ex.prompt)
        ex.meta["split"] = split
        out.append(ex)
    return out


def corpus_lines(n: int, seed: int = 0, families: Iterable[str] | None = None, **options: Any) -> Iterator[str]:
    """Plain text for tokenizer training: `n` train problems per family, each as
    'question\\nreasoning\\nThe answer is X.' (no chat markup). `options` maps a family to its
    generator options, e.g. ``corpus_lines(1000, gsm={"scratchpad": True})``."""
    for family in families or REGISTRY:
        for ex in generate_problems(family, n, seed=seed, split="train", **options.get(family, {})):
            yield f"{ex.prompt}\n{ex.solution}"


def save_jsonl(examples: Iterable[Example], path: str | Path) -> None:
    """One JSON object per example, written atomically (a run that reuses the file never sees half)."""
    from srlm.data.io import write_text_atomic

    write_text_atomic(
        path,
        "".join(
            json.dumps(
                {"id": ex.id, "prompt": ex.prompt, "answer": ex.answer, "solution": ex.solution, "meta": ex.meta}
            )
            + "\n"
            for ex in examples
        ),
    )


def load_jsonl(path: str | Path) -> list[Example]:
    out = []
    p = Path(path)
    if not p.is_file():
        raise SrlmError(
            f"{p}: no such file; pass a JSONL written by srlm.data.synthetic.save_jsonl, "
            f"or no data to generate problems"
        )
    for lineno, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            out.append(
                Example(
                    id=r["id"],
                    prompt=r["prompt"],
                    answer=str(r["answer"]),
                    solution=r.get("solution"),
                    meta=r.get("meta", {}),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SrlmError(
                f"{p}:{lineno}: not a synthetic problem record ({e}); each line needs "
                f"id, prompt, answer (and optionally solution, meta)"
            ) from None
    return out


class SyntheticTask(Task):
    """Shared behaviour: generation on `load`, numeric verification, per-difficulty metrics.

    Options: seed, difficulties (both splits), test_difficulties (overrides for test, e.g. a
    held-out level), n_train, n_test, plus the family's generator options (its `defaults`).
    """

    family: str = ""

    def __init__(
        self,
        seed: int = 0,
        difficulties: Iterable[int] | None = None,
        test_difficulties: Iterable[int] | None = None,
        n_train: int = 10000,
        n_test: int | None = None,
        **options: Any,
    ):
        self.seed = seed
        self.options = options
        self.difficulties = tuple(difficulties or REGISTRY[self.family].defaults["difficulties"])
        self.test_difficulties = tuple(test_difficulties or self.difficulties)
        self.n_train = n_train
        self.n_test = n_test if n_test is not None else 250 * len(self.test_difficulties)
        family_options(self.family, {**options, "difficulties": self.difficulties})  # fail early on bad options
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
            examples = generate_problems(
                self.family, n, seed=self.seed, split=split, difficulties=diffs, **self.options
            )
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
        return {
            "metrics": {
                "accuracy": "fraction of examples whose final number equals the answer (as numbers)",
                "accuracy@dK": "the same over the problems of difficulty K",
            },
            "references": {},
        }
