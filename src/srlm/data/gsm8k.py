"""GSM8K (Cobbe et al. 2021) from the official jsonl: `question`, `answer` ending in `#### N`.

Gold is the number after `####`; each example also keeps the record's `question` and `answer`
verbatim in `meta`, because the reference prompts and metric below use them as they are.

Metrics (fractions of the examples; the first sample of each):
- `exact_match,strict-match` and `exact_match,flexible-extract`: lm-evaluation-harness's `gsm8k`
  task (`LM_EVAL_REFERENCE`), computed exactly as it does, and tested side by side with its own
  filter and metric code. strict-match is the first `#### N` (the first `The answer is N.` under
  the `gsm8k_cot` prompt; the last `\\boxed{N}` under `chat-boxed`, which lm-eval has no version
  of); flexible-extract is the last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)`; no match gives
  "[invalid]". The extracted string and the reference (the record's whole `answer`; for
  `gsm8k_cot` the text after `####`) each lose every `,` and `$`, everything up to the last
  `#### `, and a final `.`; lower-cased, they must be equal strings. So `#### 5.00` is wrong
  when the gold is 5, and `####72` or `The answer is 72` has no strict answer.
- `accuracy`: srlm's lenient reading, which is also the verifier GRPO rewards and maj@k use:
  the first `#### N`, `The (final) answer is N` or `\\boxed{N}`, else the last number in the
  output; compared as decimals after removing `,`, `$` and a trailing `.` (`5.00` equals `5`).
  It is at least as high as the lm-eval metrics and is not comparable with published figures.

Prompt templates (`--prompt`):
- `gsm8k`: lm-eval's `gsm8k`, 5-shot: "Question: {question}\\nAnswer: {answer}" shots from the
  train split drawn by lm-eval's sampler, separated by blank lines, then "Question: ...\\nAnswer:";
  stops at "Question:", "</s>", "<|im_end|>"; 256 new tokens. The default for plain prompts.
- `gsm8k_cot`: lm-eval's `gsm8k_cot`: the 8 chain-of-thought exemplars of Wei et al. 2022 as
  "Q: ...\\nA: ..." (fixed, not from the data), then "Q: {question}\\nA:"; stops at "Q:".
- `chat`, `chat-boxed`: zero-shot chat; the user turn is the question and an instruction to
  reason step by step and put the final answer after `####` / within `\\boxed{}`.
- `question`: the bare question as the user turn (how srlm's SFT stage formats GSM8K); the
  default for chat prompts.

Example ids: the line's `id` field when it has one, else the 0-based position of the record in
its file ("0", "1", ...), whatever the file is called: what `srlm eval` writes in its records and
`srlm score` matches (ids of older versions, `gsm8k-<file stem>-<i>`, are read as position `i`).
A gold answer that is not a number (`#### ten dollars`) is an error naming the file and line.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from srlm.data.io import field, find_file, read_jsonl
from srlm.data.tasks import Example, Prompt, Task, register
from srlm.errors import SrlmError

#: the lm-evaluation-harness release whose gsm8k task (metadata version 3.0) the metrics and prompts mirror
LM_EVAL_REFERENCE = "0.4.13"

# ---------------------------------------------------------------- lm-evaluation-harness's gsm8k

INVALID = "[invalid]"  # lm-eval's RegexFilter fallback
#: (pattern, group_select) of lm-eval's filters; group_select -1 takes the last match
STRICT_MATCH = {
    "gsm8k": (re.compile(r"#### (\-?[0-9\.\,]+)"), 0),
    "gsm8k_cot": (re.compile(r"The answer is (\-?[0-9\.\,]+)."), 0),
    "chat-boxed": (re.compile(r"\\boxed\{(\-?[0-9\.\,]+)\}"), -1),  # srlm's: lm-eval has no boxed gsm8k
}
FLEXIBLE_EXTRACT = (re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)"), -1)
#: lm-eval gsm8k's exact_match regexes_to_ignore, applied in this order to prediction and reference
IGNORE = (re.compile(","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$"))


def regex_filter(output: str, pattern: re.Pattern, group_select: int = 0) -> str:
    """lm-eval's RegexFilter on one response: findall, take match `group_select`, the first
    non-empty group of it, stripped; "[invalid]" when nothing matches."""
    matches = pattern.findall(output if isinstance(output, str) else "")
    if not matches:
        return INVALID
    m = matches[group_select]
    if isinstance(m, tuple):
        m = next((g for g in m if g), None)
        if m is None:
            return INVALID
    return m.strip()


def strict_match(output: str, prompt: str = "gsm8k") -> str:
    """The strict-match filter of the template `prompt` (gsm8k's `#### N` for templates without their own)."""
    pattern, group = STRICT_MATCH.get(prompt, STRICT_MATCH["gsm8k"])
    return regex_filter(output, pattern, group)


def flexible_extract(output: str) -> str:
    return regex_filter(output, *FLEXIBLE_EXTRACT)


def exact_match(prediction: str, reference: str) -> bool:
    """lm-eval's exact_match with gsm8k's settings (regexes_to_ignore, ignore_case, punctuation kept)."""
    for rx in IGNORE:
        prediction, reference = rx.sub("", prediction), rx.sub("", reference)
    return prediction.lower() == reference.lower()


def reference(answer_field: str, prompt: str = "gsm8k") -> str:
    """lm-eval's doc_to_target: the whole `answer` for gsm8k, the text after `####` for gsm8k_cot."""
    return answer_field.split("####")[-1].strip() if prompt == "gsm8k_cot" else answer_field


# ---------------------------------------------------------------- srlm's lenient reading

_LENIENT = re.compile(r"(?:####|[Tt]he (?:final )?answer is:?|\\boxed\{)\s*\$?\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)")
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


def extract_lenient(output: str) -> str | None:
    """srlm's answer: the first `#### N` / "The answer is N" / `\\boxed{N}`, else the last number."""
    m = _LENIENT.search(output)
    if m:
        return normalize_number(m.group(1))
    hits = _NUMBER.findall(output)
    return normalize_number(hits[-1]) if hits else None


# ---------------------------------------------------------------- prompts

# Wei et al. 2022, "Chain-of-Thought Prompting Elicits Reasoning in Large Language Models", the
# 8 GSM8K exemplars, copied verbatim from lm-evaluation-harness (MIT licence),
# lm_eval/tasks/gsm8k/gsm8k-cot.yaml (fewshot_config.samples): question, target.
COT_EXEMPLARS = (
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
        "there will be 21 trees. How many trees did the grove workers plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
        "been 21 - 15 = 6. The answer is 6.",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
        "they had 74 - 35 = 39. The answer is 39.",
    ),
    (
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
        "Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
        "The answer is 8.",
    ),
    (
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",  # noqa: E501  (verbatim)
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. "
        "The answer is 9.",
    ),
    (
        "There were nine computers in the server room. Five more computers were installed each day, from monday to "
        "thursday. How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers "
        "were added. 9 + 20 is 29. The answer is 29.",
    ),
    (
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
        "balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he "
        "had 35 - 2 = 33 golf balls. The answer is 33.",
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
        "left. 23 - 15 is 8. The answer is 8.",
    ),
)

CHAT_HASH = 'Please reason step by step, and write your final answer as a number after "####" on the last line.'
CHAT_BOXED = "Please reason step by step, and put your final answer within \\boxed{}."
_LM_EVAL_STOP = ("Question:", "</s>", "<|im_end|>")

PROMPTS = {
    "gsm8k": Prompt(
        "gsm8k",
        "lm-eval gsm8k: 'Question: {question}\\nAnswer: {answer}' shots from the train split, "
        "then 'Question: {question}\\nAnswer:'",
        chat=False,
        shots=5,
        sampler="lm-eval",
        stop=_LM_EVAL_STOP,
        max_new_tokens=256,
        reference=f"lm-evaluation-harness {LM_EVAL_REFERENCE} task gsm8k (version 3.0)",
    ),
    "gsm8k_cot": Prompt(
        "gsm8k_cot",
        "lm-eval gsm8k_cot: the 8 chain-of-thought exemplars of Wei et al. 2022 as "
        "'Q: ...\\nA: ...', then 'Q: {question}\\nA:'",
        chat=False,
        shots=8,
        sampler="fixed",
        exemplars=tuple(
            Example(id=f"gsm8k-cot-exemplar-{i}", prompt=q, answer=t.rsplit(" ", 1)[-1].rstrip("."), solution=t)
            for i, (q, t) in enumerate(COT_EXEMPLARS)
        ),
        stop=("Q:", "</s>", "<|im_end|>"),
        max_new_tokens=256,
        reference=f"lm-evaluation-harness {LM_EVAL_REFERENCE} task gsm8k_cot (version 3.0)",
    ),
    "chat": Prompt(
        "chat", f"chat, zero-shot: the question, a blank line, then: {CHAT_HASH}", chat=True, max_new_tokens=512
    ),
    "chat-boxed": Prompt(
        "chat-boxed", f"chat, zero-shot: the question, a blank line, then: {CHAT_BOXED}", chat=True, max_new_tokens=512
    ),
    "question": Prompt(
        "question", "chat: the bare question as the user turn (srlm's SFT format); shots as earlier turns", chat=True
    ),
}


@register
class GSM8K(Task):
    name = "gsm8k"
    kind = "generate"
    max_new_tokens = 384
    default_split = "test"
    prompts = PROMPTS

    def source(self, split: str, data: str | None) -> Path:
        if data is None:
            raise SrlmError(
                "gsm8k: give the official jsonl with --data FILE_OR_DIR (e.g. grade_school_math/data/test.jsonl)"
            )
        return find_file(data, [f"{split}.jsonl", f"*{split}*.jsonl", "*.jsonl"], f"gsm8k split {split!r}")

    def load(self, split: str = "test", data: str | None = None, limit: int | None = None) -> list[Example]:
        path = self.source(split, data)
        out = []
        for position, (line, obj) in enumerate(read_jsonl(path)):
            where = f"{path}:{line}"
            q, a = field(obj, ("question",), where), field(obj, ("answer",), where)
            if not isinstance(q, str) or not isinstance(a, str):
                raise SrlmError(f"{where}: fields 'question' and 'answer' must be strings")
            if "####" not in a:
                raise SrlmError(f"{where}: field 'answer' does not end in '#### N'; is this the official GSM8K file?")
            steps, _, raw_gold = a.rpartition("####")
            gold = normalize_number(raw_gold)
            if not _GOLD.fullmatch(gold):
                raise SrlmError(
                    f"{where}: field 'answer': the final answer after '####' is {raw_gold.strip()!r}, "
                    f"not a number; GSM8K answers end in '#### N' with N a number"
                )
            steps = _CALC.sub("", steps).strip()
            ex_id = str(obj.get("id", position))
            out.append(
                Example(
                    id=ex_id,
                    prompt=q.strip(),
                    answer=gold,
                    solution=f"{steps}\n#### {gold}",
                    meta={"line": line, "question": q, "answer": a},
                )
            )
            if limit is not None and len(out) >= limit:
                break
        return out

    def canonical_id(self, raw: str) -> str:
        """An id as `load` makes it: older srlm versions wrote `gsm8k-<file stem>-<i>` for position i."""
        m = _OLD_ID.fullmatch(raw)
        return m.group(1) if m else raw

    def default_prompt(self, chat: bool) -> str:
        return "question" if chat else "gsm8k"

    def _name(self) -> str:
        return self.prompt.name if self.prompt is not None else "gsm8k"

    def format_prompt(self, example: Example, shots: list[Example] | None = None) -> str:
        name = self._name()
        if name == "gsm8k_cot":
            return "".join(f"Q: {s.prompt}\nA: {s.solution}\n\n" for s in shots or []) + f"Q: {example.prompt}\nA:"
        if name == "gsm8k":
            return (
                "".join(
                    f"Question: {_question(s)}\nAnswer: {s.meta.get('answer', s.solution)}\n\n" for s in shots or []
                )
                + f"Question: {_question(example)}\nAnswer:"
            )
        raise SrlmError(f"gsm8k: prompt {name!r} is a chat prompt; it needs the model's chat template")

    def chat_messages(self, example: Example, shots: list[Example] | None = None) -> list[dict[str, str]]:
        name = self._name()
        instruction = {"chat": CHAT_HASH, "chat-boxed": CHAT_BOXED}.get(name)
        msgs: list[dict[str, str]] = []
        for s in [*(shots or []), example]:
            msgs.append({"role": "user", "content": f"{s.prompt}\n\n{instruction}" if instruction else s.prompt})
            if s is not example:
                steps = (s.solution or "").rpartition("####")[0].strip()
                answer = (
                    f"{steps}\nThe final answer is $\\boxed{{{s.answer}}}$." if name == "chat-boxed" else s.solution
                )
                msgs.append({"role": "assistant", "content": answer or s.answer})
        return msgs

    def extract(self, output: str) -> str | None:
        return extract_lenient(output)

    def is_correct(self, prediction: str | None, example: Example) -> bool:
        return numbers_equal(prediction, example.answer)

    def answer_key(self, prediction: str) -> str:
        """Votes for maj@k are grouped by numeric value ("5.00" and "5" are one answer)."""
        try:
            return str(Decimal(normalize_number(prediction)).normalize())
        except InvalidOperation:
            return normalize_number(prediction)

    def _reference(self, record: dict[str, Any]) -> str:
        meta = record.get("meta") or {}
        answer = meta.get("answer")
        return reference(answer, self._name()) if isinstance(answer, str) else str(record["gold"])

    def metrics(self, records):
        n = len(records)
        name = self._name()
        strict = sum(exact_match(strict_match(r["output"], name), self._reference(r)) for r in records)
        flexible = sum(exact_match(flexible_extract(r["output"]), self._reference(r)) for r in records)
        return {
            "exact_match,strict-match": strict / n if n else 0.0,
            "exact_match,flexible-extract": flexible / n if n else 0.0,
            "accuracy": sum(bool(r["correct"]) for r in records) / n if n else 0.0,
            "n": n,
        }

    def protocol(self) -> dict[str, Any]:
        name = self._name()
        pattern, group = STRICT_MATCH.get(name, STRICT_MATCH["gsm8k"])
        lm_eval = name in ("gsm8k", "gsm8k_cot")
        where = "lm-eval's" if name != "chat-boxed" else "srlm's (lm-eval has no boxed gsm8k)"
        return {
            "metrics": {
                "exact_match,strict-match": f"strict-match, {where}: the {'first' if group == 0 else 'last'} match "
                f"of {pattern.pattern!r}, else '[invalid]'; then lm-eval gsm8k's "
                "exact_match (drop ',', '$', up to '#### ', a final '.'; ignore case)",
                "exact_match,flexible-extract": f"flexible-extract, lm-eval's: the last match of "
                f"{FLEXIBLE_EXTRACT[0].pattern!r}; then the same exact_match",
                "accuracy": "srlm's lenient reading (not comparable with published figures): first '#### N', "
                "'The answer is N' or '\\boxed{N}', else the last number; equal as decimals",
            },
            "references": {
                "lm-evaluation-harness": f"{LM_EVAL_REFERENCE} gsm8k filters and exact_match"
                + ("" if lm_eval else f" (prompt {name!r} is srlm's own)")
            },
        }


def _question(example: Example) -> str:
    q = example.meta.get("question")
    return q if isinstance(q, str) else example.prompt
