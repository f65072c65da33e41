"""GSM8K (Cobbe et al. 2021) from the official jsonl: `question`, `answer` ending in `#### N`.

Gold is the number after `####`. Two extractions are reported side by side, as
lm-evaluation-harness does: *strict* (the first `#### N` or "The answer is N") and
*flexible* (the last number in the output). Numbers are compared after removing
commas, `$` and a trailing `.`; "5.00" and "5" are also equal (compared as decimals).
`extract` (the verifier's input, used for `accuracy`) is strict when the output has a
strict answer, flexible otherwise.

Example ids: the line's `id` field when it has one, else the 0-based position of the record in
its file ("0", "1", ...), whatever the file is called: what `srlm eval` writes in its records and
`srlm score` matches (ids of older versions, `gsm8k-<file stem>-<i>`, are read as position `i`).
A gold answer that is not a number (`#### ten dollars`) is an error naming the file and line.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from srlm.data.io import field, find_file, read_jsonl
from srlm.data.tasks import Example, Task, register
from srlm.errors import SrlmError

_STRICT = re.compile(r"(?:####|[Tt]he (?:final )?answer is:?)\s*\$?\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)")
_NUMBER = re.compile(r"-?\$?\s?[0-9][0-9,]*(?:\.[0-9]+)?")
_CALC = re.compile(r"<<[^<>]*>>")
_GOLD = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_OLD_ID = re.compile(r"gsm8k-.+-([0-9]+)")


def normalize_number(s: str) -> str:
    """Remove commas, `$`, spaces and a trailing `.`: "$1,000." -> "1000"."""
    s = s.strip().replace(",", "").replace("$", "").replace(" ", "")
    return s.rstrip(".")


def numbers_equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    a, b = normalize_number(a), normalize_number(b)
    if a == b:
        return True
    try:
        return Decimal(a) == Decimal(b)
    except InvalidOperation:
        return False


def extract_strict(output: str) -> str | None:
    m = _STRICT.search(output)
    return normalize_number(m.group(1)) if m else None


def extract_flexible(output: str) -> str | None:
    hits = _NUMBER.findall(output)
    return normalize_number(hits[-1]) if hits else None


@register
class GSM8K(Task):
    name = "gsm8k"
    kind = "generate"
    max_new_tokens = 384
    default_split = "test"

    def load(self, split: str = "test", data: str | None = None, limit: int | None = None) -> list[Example]:
        if data is None:
            raise SrlmError("gsm8k: give the official jsonl with --data FILE_OR_DIR (e.g. grade_school_math/data/test.jsonl)")
        path = find_file(data, [f"{split}.jsonl", f"*{split}*.jsonl", "*.jsonl"], f"gsm8k split {split!r}")
        out = []
        for position, (line, obj) in enumerate(read_jsonl(path)):
            where = f"{path}:{line}"
            q, a = field(obj, ("question",), where), field(obj, ("answer",), where)
            if "####" not in a:
                raise SrlmError(f"{where}: field 'answer' does not end in '#### N'; is this the official GSM8K file?")
            steps, _, raw_gold = a.rpartition("####")
            gold = normalize_number(raw_gold)
            if not _GOLD.fullmatch(gold):
                raise SrlmError(f"{where}: field 'answer': the final answer after '####' is {raw_gold.strip()!r}, "
                                f"not a number; GSM8K answers end in '#### N' with N a number")
            steps = _CALC.sub("", steps).strip()
            ex_id = str(obj.get("id", position))
            out.append(Example(id=ex_id, prompt=q.strip(), answer=gold, solution=f"{steps}\n#### {gold}",
                               meta={"line": line}))
            if limit is not None and len(out) >= limit:
                break
        return out

    def canonical_id(self, raw: str) -> str:
        """An id as `load` makes it: older srlm versions wrote `gsm8k-<file stem>-<i>` for position i."""
        m = _OLD_ID.fullmatch(raw)
        return m.group(1) if m else raw

    def extract(self, output: str) -> str | None:
        s = extract_strict(output)
        return s if s is not None else extract_flexible(output)

    def is_correct(self, prediction: str | None, example: Example) -> bool:
        return numbers_equal(prediction, example.answer)

    def answer_key(self, prediction: str) -> str:
        """Votes for maj@k are grouped by numeric value ("5.00" and "5" are one answer)."""
        try:
            return str(Decimal(normalize_number(prediction)).normalize())
        except InvalidOperation:
            return normalize_number(prediction)

    def metrics(self, records):
        n = len(records)
        if not n:
            return {"accuracy": 0.0, "exact_match_strict": 0.0, "exact_match_flexible": 0.0, "n": 0}
        strict = sum(numbers_equal(extract_strict(r["output"]), r["gold"]) for r in records)
        flex = sum(numbers_equal(extract_flexible(r["output"]), r["gold"]) for r in records)
        return {"accuracy": sum(bool(r["correct"]) for r in records) / n,
                "exact_match_strict": strict / n, "exact_match_flexible": flex / n, "n": n}
