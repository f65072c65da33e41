"""Chat-format training data: conversations from tasks or jsonl files, tokenized with assistant-only labels.

Sources (`load_conversations(source, options)`):
- a registered task name (`synth-gsm`, `gsm8k`, ...): each train example becomes
  user: prompt -> assistant: `<think>\\n{reasoning}\\n</think>\\n\\n{final}` (reasoning and final from
  `meta["reasoning"]`/`meta["final"]`, or split off a GSM8K-style `#### N` solution);
- a jsonl file of `{"messages": [{"role", "content"}, ...]}`, of GSM8K records (`question`, `answer`
  ending in `#### N`, whose number becomes the final line "The answer is N."), or of synthetic
  records (`prompt`, `solution`/`answer`, as `srlm.data.synthetic.save_jsonl` writes).
`tokenize_conversation(tokenizer, messages)` -> (ids, labels): labels are -100 except on assistant
turns, found by rendering the chat template incrementally (the prompt through the generation
prompt, then through the assistant turn) and requiring each rendering's ids to be a prefix of the
full conversation's ids; a template that breaks this is an error naming the turn. Labels stop at
the end-of-turn token (the newline after it is not trained).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from srlm.data.io import read_jsonl
from srlm.data.tasks import Example
from srlm.errors import SrlmError

_CALC = re.compile(r"<<[^<>]*>>")
ROLES = ("system", "user", "assistant", "tool")


def assistant_text(reasoning: str | None, final: str, think: bool = True) -> str:
    if not reasoning:
        return final
    if think:
        return f"<think>\n{reasoning.strip()}\n</think>\n\n{final}"
    return f"{reasoning.strip()}\n{final}"


def _gsm_split(answer_field: str, where: str) -> tuple[str, str]:
    if "####" not in answer_field:
        raise SrlmError(f"{where}: field 'answer' does not end in '#### N' (GSM8K format)")
    steps, _, gold = answer_field.rpartition("####")
    gold = gold.strip().replace(",", "").rstrip(".")
    return _CALC.sub("", steps).strip(), f"The answer is {gold}."


def example_to_messages(example: Example, think: bool = True, system: str | None = None) -> list[dict[str, str]]:
    """One task example as a single-turn chat with the worked solution as the assistant turn."""
    meta = example.meta or {}
    if "reasoning" in meta and "final" in meta:
        reasoning, final = meta["reasoning"], meta["final"]
    elif example.solution and "####" in example.solution:
        reasoning, final = _gsm_split(example.solution, f"example {example.id}")
    elif example.solution:
        lines = example.solution.strip().splitlines()
        reasoning, final = "\n".join(lines[:-1]), lines[-1]
    else:
        reasoning, final = None, example.answer
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += [
        {"role": "user", "content": example.prompt},
        {"role": "assistant", "content": assistant_text(reasoning, final, think)},
    ]
    return msgs


def _check_messages(msgs: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(msgs, list) or not msgs:
        raise SrlmError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise SrlmError(
                f"{where}: message {j} must be an object with role in {ROLES} and a string content, got {str(m)[:80]}"
            )
    if not any(m["role"] == "assistant" for m in msgs):
        raise SrlmError(f"{where}: conversation has no assistant message, so nothing to train on")
    return msgs


def read_conversations(
    path: str | Path, think: bool = True, system: str | None = None, limit: int | None = None
) -> list[list[dict[str, str]]]:
    """Conversations from a jsonl file (messages, GSM8K or synthetic records), format detected per line."""
    out = []
    for line, obj in read_jsonl(path):
        where = f"{path}:{line}"
        if "messages" in obj:
            msgs = _check_messages(obj["messages"], where)
        elif "question" in obj and "answer" in obj:
            if not isinstance(obj["question"], str) or not isinstance(obj["answer"], str):
                raise SrlmError(f"{where}: 'question' and 'answer' must be strings")
            reasoning, final = _gsm_split(obj["answer"], where)
            msgs = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": obj["question"].strip()},
                {"role": "assistant", "content": assistant_text(reasoning, final, think)},
            ]
        elif "prompt" in obj and ("solution" in obj or "answer" in obj):
            ex = Example(
                id=str(obj.get("id", line)),
                prompt=str(obj["prompt"]),
                answer=str(obj.get("answer", "")),
                solution=obj.get("solution"),
                meta=obj.get("meta") or {},
            )
            msgs = example_to_messages(ex, think, system)
        else:
            raise SrlmError(
                f"{where}: unknown record; expected 'messages', or 'question'+'answer' (GSM8K), "
                f"or 'prompt'+'solution' (synthetic); fields present: {', '.join(obj) or 'none'}"
            )
        out.append(msgs)
        if limit is not None and len(out) >= limit:
            break
    return out


def load_conversations(
    source: str,
    options: dict | None = None,
    think: bool = True,
    system: str | None = None,
    limit: int | None = None,
    split: str = "train",
) -> list[list[dict[str, str]]]:
    """Conversations from a jsonl file path or a registered task name (`options` go to the task)."""
    options = dict(options or {})
    p = Path(source)
    if p.suffix in (".jsonl", ".json") or p.is_file():
        if not p.is_file():
            raise SrlmError(f"{p}: data file not found")
        return read_conversations(p, think, system, limit)
    from srlm.data.tasks import get_task

    data = options.pop("data", None)
    task = get_task(source, **options)
    examples = task.load(split=split, data=data, limit=limit)
    return [example_to_messages(ex, think, system) for ex in examples]


def tokenize_conversation(
    tokenizer, messages: list[dict[str, str]], where: str = "conversation", max_len: int | None = None
) -> tuple[list[int], list[int]]:
    """(ids, labels) with labels = ids on assistant turns (through the end-of-turn token), -100 elsewhere."""
    full = tokenizer.apply_chat_template(messages)
    labels = [-100] * len(full)
    end_ids = tokenizer.eos_token_ids
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if i == 0:
            raise SrlmError(f"{where}: starts with an assistant message; put a user (or system) message first")
        prefix = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1])
        for name, part in (
            ("the prompt through the generation prompt", prefix),
            ("the conversation through this turn", through),
        ):
            if full[: len(part)] != part:
                raise SrlmError(
                    f"{where}: the chat template breaks the prefix property at message {i}: the ids of "
                    f"{name} are not a prefix of the whole conversation's ids, so assistant tokens "
                    f"cannot be located; use a template that renders earlier turns unchanged"
                )
        start, end = len(prefix), len(through)
        # stop after the end-of-turn token: what follows it (a newline) belongs to no turn
        for j in range(start, end):
            if full[j] in end_ids:
                end = j + 1
                break
        labels[start:end] = full[start:end]
    if max_len is not None and len(full) > max_len:
        full, labels = full[:max_len], labels[:max_len]
    return full, labels
