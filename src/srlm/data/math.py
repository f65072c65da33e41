"""MATH (Hendrycks et al. 2021) and MATH-500 from jsonl; answer equivalence without `eval`.

Gold is the content of the last `\\boxed{...}` of `solution` (braces nested); MATH-500's
`answer` field must equal it. A prediction is the last `\\boxed{}` of the output, or
what follows "final answer is". Equivalence, in order:
1. string equality after `normalize` (Hendrycks' `strip_string` and the Minerva
   normaliser: `\\left`/`\\right`, `\\dfrac`, `^\\circ`, `\\$`, units text, spaces, `\\!`, a
   trailing `.`, `x =`, thousands commas, ...);
2. element-wise for tuples, intervals and lists (same brackets, same length);
3. sympy: a hand-written LaTeX-to-expression conversion (fractions, roots, powers,
   pi, implicit products) whose result must pass a token whitelist before
   `parse_expr` sees it, compared by `simplify(a - b) == 0` or numerically, under a
   deadline (SIGALRM on the main thread; elsewhere inputs are size-capped instead).
"""

from __future__ import annotations

import re

from srlm.data.deadline import TimeLimitExceeded, time_limit
from srlm.data.io import field, find_file, read_jsonl
from srlm.data.tasks import Example, Task, register
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
                return s[start + 1:i], i + 1
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

_UNIT_WORDS = ("square", "ways", "integers", "dollars", "mph", "inches", "inch", "ft", "feet", "hours", "hour",
               "km", "units", "unit", "sue", "points", "minutes", "digits", "cents", "degrees", "cm", "gm",
               "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples", "calories",
               "seconds", "days", "years", "miles", "square units", "sq units", "cubic", "centimeters")
_TRAILING_UNITS = re.compile(r"(?:\s*\\(?:text|mbox|mathrm)\{\s*[a-zA-Z ]*\}(?:\^\{?[23]\}?)?|\s+(?:" + "|".join(
    sorted((re.escape(u) for u in _UNIT_WORDS), key=len, reverse=True)) + r")(?:\^\{?[23]\}?)?)+\s*$")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def _unwrap(s: str, macro: str) -> str:
    while True:
        i = s.find(macro + "{")
        if i < 0:
            return s
        got = _braced(s, i + len(macro))
        if not got:
            return s
        s = s[:i] + got[0] + s[got[1]:]


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
    s = re.sub(r"^[a-zA-Z]\s*\\in\s*", "", s)            # "x \in [-2,7]" -> "[-2,7]"
    parts = s.split("=")
    if len(parts) == 2 and len(parts[0].strip()) <= 2:   # "x = 5" -> "5" (Hendrycks)
        s = parts[1]
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"\\sqrt(?![a-zA-Z{\[])\s*([0-9a-zA-Z])", r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    s = re.sub(r"(?<![0-9])\.(?=[0-9])", "0.", s)    # ".5" -> "0.5"
    s = re.sub(r"^(-?\d+)/(\d+)$", r"\\frac{\1}{\2}", s)
    s = re.sub(r"(\d)\.0+$", r"\1", s)                 # "10.0" -> "10"
    return s


# ---------------------------------------------------------------- LaTeX -> sympy, safely

_IDENT_OK = {"sqrt", "pi", "oo", "sin", "cos", "tan", "log", "exp"}
_SAFE = re.compile(r"[0-9a-zA-Z+\-*/()., ]*")
_MAX_LEN = 160


def _latex_to_expr(s: str) -> str | None:
    """A plain arithmetic string for `parse_expr`, or None when `s` uses anything unknown."""
    if len(s) > _MAX_LEN:
        return None
    out = []
    i = 0
    while i < len(s):
        if s.startswith("\\frac", i):
            a = _braced(s, i + 5) if s[i + 5:i + 6] == "{" else None
            b = _braced(s, a[1]) if a and s[a[1]:a[1] + 1] == "{" else None
            if not b:
                return None
            na, nb = _latex_to_expr(a[0]), _latex_to_expr(b[0])
            if na is None or nb is None:
                return None
            out.append(f"(({na})/({nb}))")
            i = b[1]
        elif s.startswith("\\sqrt", i):
            j, root = i + 5, "2"
            if s[j:j + 1] == "[":
                k = s.find("]", j)
                if k < 0:
                    return None
                root = _latex_to_expr(s[j + 1:k])
                j = k + 1
            a = _braced(s, j) if s[j:j + 1] == "{" else None
            if not a or root is None:
                return None
            na = _latex_to_expr(a[0])
            if na is None:
                return None
            out.append(f"sqrt({na})" if root == "2" else f"(({na})**(1/({root})))")
            i = a[1]
        elif s[i] == "\\":
            m = re.match(r"\\([a-zA-Z]+)", s[i:])
            if not m:
                return None
            name = m.group(1)
            repl = {"pi": " pi ", "cdot": "*", "times": "*", "div": "/", "infty": " oo ", "sin": " sin", "cos": " cos",
                    "tan": " tan", "ln": " log", "log": " log", "exp": " exp"}.get(name)
            if repl is None:
                return None
            out.append(repl)
            i += len(m.group(0))
        elif s[i] == "^":
            out.append("**")
            i += 1
        elif s[i] in "{}":
            out.append("(" if s[i] == "{" else ")")
            i += 1
        else:
            out.append(s[i])
            i += 1
    expr = "".join(out)
    if not _SAFE.fullmatch(expr.replace("**", "*")) or "__" in expr:
        return None
    for ident in re.findall(r"[a-zA-Z]+", expr):
        if ident not in _IDENT_OK and len(ident) > 1:
            return None
    # Huge integer powers would hang simplify: refuse exponents with many digits.
    if re.search(r"\*\*\(?\d{4,}", expr):
        return None
    return expr


def _to_sympy(s: str):
    import sympy
    from sympy.parsing.sympy_parser import (convert_xor, implicit_multiplication_application, parse_expr,
                                            standard_transformations)

    expr = _latex_to_expr(s)
    if expr is None or not expr.strip():
        return None
    # Every single letter is a plain symbol: parse_expr would otherwise map E, I, N, S, O, Q to sympy objects.
    local = {c: sympy.Symbol(c) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"}
    local.update({"pi": sympy.pi, "oo": sympy.oo, "sqrt": sympy.sqrt, "sin": sympy.sin, "cos": sympy.cos,
                  "tan": sympy.tan, "log": sympy.log, "exp": sympy.exp})
    try:
        return parse_expr(expr, local_dict=local, global_dict={"Integer": sympy.Integer, "Float": sympy.Float,
                                                               "Rational": sympy.Rational, "Symbol": sympy.Symbol},
                          transformations=standard_transformations + (implicit_multiplication_application, convert_xor),
                          evaluate=True)
    except Exception:  # noqa: BLE001 - any parse failure means "not comparable symbolically"
        return None


def _sympy_equal(a: str, b: str, timeout: float) -> bool:
    import sympy

    try:
        with time_limit(timeout):
            ea, eb = _to_sympy(a), _to_sympy(b)
            if ea is None or eb is None:
                return False
            diff = sympy.simplify(ea - eb)
            if diff == 0:
                return True
            if diff.is_number:
                v = complex(sympy.N(diff))
                scale = max(1.0, abs(complex(sympy.N(eb))))
                return abs(v) <= 1e-8 * scale
            return False
    except TimeLimitExceeded:
        return False
    except Exception:  # noqa: BLE001 - sympy raises many types on odd input; treat as not equal
        return False


def _split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for c in s:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return parts


def is_equiv(prediction: str | None, gold: str | None, timeout: float = 2.0) -> bool:
    """True when two final answers are mathematically the same (see the module docstring)."""
    if prediction is None or gold is None:
        return False
    a, b = normalize(prediction), normalize(gold)
    if a == b:
        return True
    if not a or not b:
        return False
    # Tuples, intervals and lists: same brackets, same number of elements, each element equal.
    ba, bb = (a[0] + a[-1]), (b[0] + b[-1])
    bracketed = ba[0] in "([" and ba[1] in ")]" and bb[0] in "([" and bb[1] in ")]"
    if bracketed or ("," in a and "," in b):
        if bracketed:
            if ba != bb:
                return False
            a, b = a[1:-1], b[1:-1]
        pa, pb = _split_top(a), _split_top(b)
        if len(pa) != len(pb) or (len(pa) == 1 and not bracketed):
            return False
        if len(pa) > 1 or bracketed:
            return all(x == y or _sympy_equal(x, y, timeout) for x, y in zip(pa, pb))
    return _sympy_equal(a, b, timeout)


# ---------------------------------------------------------------- tasks


@register
class MATH(Task):
    name = "math"
    kind = "generate"
    max_new_tokens = 512
    default_split = "test"
    _files = ["{split}.jsonl", "*{split}*.jsonl", "*.jsonl"]

    def _gold(self, obj, where) -> str:
        sol = field(obj, ("solution",), where)
        boxed = last_boxed(sol)
        if boxed is None:
            raise SrlmError(f"{where}: field 'solution' has no \\boxed{{...}} answer")
        return boxed

    def _id(self, obj, n) -> str:
        return str(obj.get("unique_id", obj.get("idx", obj.get("id", f"{self.name}-{n}"))))

    def load(self, split: str = "test", data: str | None = None, limit: int | None = None) -> list[Example]:
        if data is None:
            raise SrlmError(f"{self.name}: give the jsonl file with --data FILE_OR_DIR")
        path = find_file(data, [f.format(split=split) for f in self._files], f"{self.name} split {split!r}")
        out = []
        for line, obj in read_jsonl(path):
            where = f"{path}:{line}"
            problem = field(obj, ("problem",), where)
            gold = self._gold(obj, where)
            meta = {k: obj[k] for k in ("level", "type", "subject") if k in obj}
            meta["line"] = line
            out.append(Example(id=self._id(obj, len(out)), prompt=problem.strip(), answer=gold,
                               solution=obj.get("solution"), meta=meta))
            if limit is not None and len(out) >= limit:
                break
        return out

    def format_prompt(self, example: Example, shots: list[Example] | None = None) -> str:
        parts = [f"Problem: {s.prompt}\nSolution: {s.solution or s.answer}\n\n" for s in shots or []]
        parts.append(f"Problem: {example.prompt}\nSolution:")
        return "".join(parts)

    stop = ["\nProblem:"]

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


@register
class MATH500(MATH):
    name = "math500"

    def _gold(self, obj, where) -> str:
        answer = field(obj, ("answer",), where)
        boxed = last_boxed(obj.get("solution", "") or "")
        if boxed is not None and boxed.strip() != str(answer).strip():
            raise SrlmError(f"{where}: field 'answer' ({answer!r}) differs from the last \\boxed{{}} of 'solution' "
                            f"({boxed!r}); the file is not the official MATH-500")
        return str(answer)
