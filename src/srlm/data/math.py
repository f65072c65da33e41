"""MATH (Hendrycks et al. 2021) and MATH-500 from jsonl; answer equivalence by math-verify, without `eval`.

Gold is the content of the last `\\boxed{...}` of `solution` (braces nested); MATH-500's
`answer` field must equal it. A prediction is the last `\\boxed{}` of the output, or
what follows "final answer is". Two answers are equivalent when
1. their strings are equal after `normalize` (Hendrycks' `strip_string` and the Minerva
   normaliser: `\\left`/`\\right`, `\\dfrac`, `^\\circ`, `\\$`, units text, spaces, `\\!`, a
   trailing `.`, `x =`, thousands commas, ...): a fast path that also settles what
   math-verify's parser reads differently (`5.`, `90°`, `5,000 dollars`, `12.5\\%`); or
2. Hugging Face's math-verify (as open-r1 and lighteval use it) parses both as LaTeX and
   `verify(gold, prediction)` holds: numbers, fractions in every spelling, mixed numbers,
   expressions up to algebra (`(x+1)(x-1)` = `(x-1)(x+1)`), unordered sets and solution
   lists, intervals, ordered tuples, matrices, percentages, degrees, units, `\\text{}`.
   Only LaTeX parsing is used (its plain-expression parser calls sympy's `parse_expr`,
   i.e. `eval`); each comparison runs under `time_limit` (SIGALRM, main thread only;
   elsewhere answers over MAX_ANSWER_CHARS are refused instead).
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import re

from srlm.data.deadline import TimeLimitExceeded, time_limit
from srlm.data.io import field, find_file, read_jsonl
from srlm.data.tasks import Example, Prompt, Task, register
from srlm.errors import SrlmError

# ---------------------------------------------------------------- boxed answers


def _braced(s: str, start: int) -> tuple[str, int] | None:
    """Content of the brace group opening at s[start] == '{', and the index after it."""
    depth = 0
    for i in range(start, len(s)):
        c = s[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return s[start + 1 : i], i + 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (or `\\boxed 5`), None when there is none."""
    i = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if i < 0:
        return None
    j = i + (len("\\boxed") if text.startswith("\\boxed", i) else len("\\fbox"))
    while j < len(text) and text[j] == " ":
        j += 1
    if j < len(text) and text[j] == "{":
        got = _braced(text, j)
        return got[0] if got else None
    if j > i + 6 and j < len(text):  # "\boxed 5": up to the next space or dollar
        m = re.match(r"[^\s$]+", text[j:])
        return m.group(0) if m else None
    return None


_FINAL = re.compile(r"final answer is:?\s*(.+?)(?:\.\s*I hope it is correct|\n|$)", re.IGNORECASE | re.DOTALL)


def extract_answer(output: str) -> str | None:
    boxed = last_boxed(output)
    if boxed is not None:
        return boxed
    hits = _FINAL.findall(output)
    if hits:
        ans = hits[-1].strip()
        m = re.fullmatch(r"\$+(.*?)\$+\.?", ans, re.DOTALL)
        return (m.group(1) if m else ans).strip().rstrip(".").strip()
    return None


# ---------------------------------------------------------------- normalisation

_UNIT_WORDS = (
    "square",
    "ways",
    "integers",
    "dollars",
    "mph",
    "inches",
    "inch",
    "ft",
    "feet",
    "hours",
    "hour",
    "km",
    "units",
    "unit",
    "sue",
    "points",
    "minutes",
    "digits",
    "cents",
    "degrees",
    "cm",
    "gm",
    "pounds",
    "meters",
    "meals",
    "edges",
    "students",
    "childrentickets",
    "multiples",
    "calories",
    "seconds",
    "days",
    "years",
    "miles",
    "square units",
    "sq units",
    "cubic",
    "centimeters",
)
_TRAILING_UNITS = re.compile(
    r"(?:\s*\\(?:text|mbox|mathrm)\{\s*[a-zA-Z ]*\}(?:\^\{?[23]\}?)?|\s+(?:"
    + "|".join(sorted((re.escape(u) for u in _UNIT_WORDS), key=len, reverse=True))
    + r")(?:\^\{?[23]\}?)?)+\s*$"
)
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def _unwrap(s: str, macro: str) -> str:
    while True:
        i = s.find(macro + "{")
        if i < 0:
            return s
        got = _braced(s, i + len(macro))
        if not got:
            return s
        s = s[:i] + got[0] + s[got[1] :]


def _fix_fracs(s: str) -> str:
    # \frac12 -> \frac{1}{2}, \frac1{2} -> \frac{1}{2} (Hendrycks' _fix_fracs)
    s = re.sub(r"\\frac(?![a-zA-Z{])\s*([0-9a-zA-Z])\s*([0-9a-zA-Z])", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(?![a-zA-Z{])\s*([0-9a-zA-Z])\s*\{", r"\\frac{\1}{", s)
    return re.sub(r"\\frac\{([^{}]*)\}([0-9a-zA-Z])", r"\\frac{\1}{\2}", s)


def normalize(answer: str | None) -> str:
    """Canonical string of a final answer, in the spirit of Hendrycks' `strip_string` and Minerva's
    `normalize_final_answer`; equal strings are equal answers."""
    if answer is None:
        return ""
    s = answer.strip()
    boxed = last_boxed(s)
    if boxed is not None:
        s = boxed
    s = s.replace("\n", "").replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\:", "")
    s = s.replace("\\ ", " ").replace("~", " ").replace("\\displaystyle", "")
    s = s.replace("\\\\", "\\").replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\bigl", "").replace("\\bigr", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\circ", "").replace("°", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = s.replace("\\dots", "").replace("\\ldots", "").replace("\\cdots", "")
    without_units = _TRAILING_UNITS.sub("", s).strip()
    if without_units:  # "\\text{Evelyn}" alone is the answer, not a unit
        s = without_units
    for macro in ("\\text", "\\textbf", "\\mbox", "\\mathrm", "\\mathbf", "\\boxed", "\\overline"):
        s = _unwrap(s, macro)
    s = s.replace("\\le ", "\\le").strip()
    s = re.sub(r"^[a-zA-Z]\s*\\in\s*", "", s)  # "x \in [-2,7]" -> "[-2,7]"
    parts = s.split("=")
    if len(parts) == 2 and len(parts[0].strip()) <= 2:  # "x = 5" -> "5" (Hendrycks)
        s = parts[1]
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"\\sqrt(?![a-zA-Z{\[])\s*([0-9a-zA-Z])", r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    s = re.sub(r"(?<![0-9])\.(?=[0-9])", "0.", s)  # ".5" -> "0.5"
    s = re.sub(r"^(-?\d+)/(\d+)$", r"\\frac{\1}{\2}", s)
    s = re.sub(r"(\d)\.0+$", r"\1", s)  # "10.0" -> "10"
    return s


# ---------------------------------------------------------------- equivalence

#: answers longer than this are not compared symbolically (the time limit needs the main thread)
MAX_ANSWER_CHARS = 1000
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


class _QuietTimeoutWarning(logging.Filter):
    """math-verify warns once that its own timeouts are off; srlm's time_limit replaces them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


@functools.lru_cache(maxsize=1)
def _math_verify():
    try:
        import math_verify
    except ModuleNotFoundError:
        raise SrlmError("MATH answers are checked with math-verify: pip install 'math-verify>=0.9'") from None
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_QuietTimeoutWarning())
    return math_verify


def math_verify_version() -> str | None:
    try:
        return importlib.metadata.version("math-verify")
    except importlib.metadata.PackageNotFoundError:
        return None


def _parse(answer: str):
    mv = _math_verify()
    # LaTeX extraction only: math-verify's ExprExtractionConfig hands text to sympy's parse_expr, which runs eval.
    # Its own timeouts are off (None): they use signal.alarm, which would cancel an enclosing time_limit.
    return mv.parse(
        "$" + _UNESCAPED_DOLLAR.sub("", answer) + "$",
        extraction_config=[mv.LatexExtractionConfig()],
        parsing_timeout=None,
    )


def verify(prediction: str, gold: str, timeout: float = 5.0) -> bool:
    """math-verify's verdict (parse both as LaTeX, then `verify(gold, prediction)`), False past `timeout` seconds."""
    if len(prediction) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    mv = _math_verify()
    try:
        with time_limit(timeout):
            g, p = _parse(gold), _parse(prediction)
            return bool(g and p and mv.verify(g, p, timeout_seconds=None))
    except TimeLimitExceeded:
        return False


def is_equiv(prediction: str | None, gold: str | None, timeout: float = 5.0) -> bool:
    """True when two final answers are mathematically the same (see the module docstring)."""
    if prediction is None or gold is None:
        return False
    a, b = normalize(prediction), normalize(gold)
    if not a or not b:
        return False
    return a == b or verify(prediction, gold, timeout)


# ---------------------------------------------------------------- tasks


@register
class MATH(Task):
    name = "math"
    kind = "generate"
    max_new_tokens = 512
    default_split = "test"
    _files = ["{split}.jsonl", "*{split}*.jsonl", "*.jsonl"]
    prompts = {
        "default": Prompt(
            "default",
            "'Problem: {problem}\\nSolution:' as text (shots: problem and solution); "
            "as chat, the problem then 'Put your final answer within \\boxed{}.'",
        )
    }

    def _gold(self, obj, where) -> str:
        sol = field(obj, ("solution",), where)
        boxed = last_boxed(sol)
        if boxed is None:
            raise SrlmError(f"{where}: field 'solution' has no \\boxed{{...}} answer")
        return boxed

    def _id(self, obj, n) -> str:
        return str(obj.get("unique_id", obj.get("idx", obj.get("id", f"{self.name}-{n}"))))

    def source(self, split: str, data: str | None):
        if data is None:
            raise SrlmError(f"{self.name}: give the jsonl file with --data FILE_OR_DIR")
        return find_file(data, [f.format(split=split) for f in self._files], f"{self.name} split {split!r}")

    def load(self, split: str = "test", data: str | None = None, limit: int | None = None) -> list[Example]:
        path = self.source(split, data)
        out = []
        for line, obj in read_jsonl(path):
            where = f"{path}:{line}"
            problem = field(obj, ("problem",), where)
            gold = self._gold(obj, where)
            meta = {k: obj[k] for k in ("level", "type", "subject") if k in obj}
            meta["line"] = line
            out.append(
                Example(
                    id=self._id(obj, len(out)),
                    prompt=problem.strip(),
                    answer=gold,
                    solution=obj.get("solution"),
                    meta=meta,
                )
            )
            if limit is not None and len(out) >= limit:
                break
        return out

    def format_prompt(self, example: Example, shots: list[Example] | None = None) -> str:
        parts = [f"Problem: {s.prompt}\nSolution: {s.solution or s.answer}\n\n" for s in shots or []]
        parts.append(f"Problem: {example.prompt}\nSolution:")
        return "".join(parts)

    stop = ("\nProblem:",)

    def chat_messages(self, example: Example, shots: list[Example] | None = None) -> list[dict[str, str]]:
        msgs = super().chat_messages(example, shots)
        msgs[-1]["content"] += "\n\nPut your final answer within \\boxed{}."
        return msgs

    def extract(self, output: str) -> str | None:
        return extract_answer(output)

    def is_correct(self, prediction: str | None, example: Example) -> bool:
        return is_equiv(prediction, example.answer)

    def answer_key(self, prediction: str) -> str:
        """Votes for maj@k are grouped by normalised answer."""
        return normalize(prediction)

    def protocol(self):
        return {
            "metrics": {
                "accuracy": "last \\boxed{} of the output (or what follows 'final answer is') equivalent "
                "to the gold answer: equal after srlm's normalize, or math-verify's "
                "verify(gold, prediction) on both parsed as LaTeX"
            },
            "references": {"math-verify": math_verify_version() or "not installed"},
        }


@register
class MATH500(MATH):
    name = "math500"

    def _gold(self, obj, where) -> str:
        answer = field(obj, ("answer",), where)
        boxed = last_boxed(obj.get("solution", "") or "")
        if boxed is not None and boxed.strip() != str(answer).strip():
            raise SrlmError(
                f"{where}: field 'answer' ({answer!r}) differs from the last \\boxed{{}} of 'solution' "
                f"({boxed!r}); the file is not the official MATH-500"
            )
        return str(answer)
