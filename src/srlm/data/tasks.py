"""Tasks: one small class per benchmark or synthetic family, behind one interface.

A task knows how to load its examples (from local files in the official format,
or by generating them), how to turn an example into a prompt, how to pull the
final answer out of a model's output, how to verify it, and how to aggregate
per-example results into the task's official metrics. It knows nothing about
models, tokenizers or generation: the evaluation harness (`srlm.eval`) and the
training stages (`srlm.train`) drive it.

Adding a task is one file: subclass `Task`, decorate it with `@register`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from srlm.errors import SrlmError, did_you_mean


@dataclass
class Example:
    """One problem.

    id:       stable identifier (dataset id, or a hash for generated problems).
    prompt:   the question as plain text, without any few-shot context or chat formatting.
    answer:   the gold final answer as a canonical string ("" for SQuAD-v2 unanswerable).
    solution: a worked, step-by-step solution ending in the answer, when the task has one
              (used as the SFT / distillation target).
    choices:  for log-likelihood tasks (GLUE), the label words scored as continuations.
    meta:     anything else (difficulty, all gold answers, label index, ...).
    """

    id: str
    prompt: str
    answer: str
    solution: str | None = None
    choices: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Task:
    """Base class. Subclasses set `name` and override what differs."""

    name: ClassVar[str] = ""
    #: "generate": the model writes an answer that `extract` parses;
    #: "loglik": the harness scores each of `example.choices` as a continuation.
    kind: ClassVar[str] = "generate"
    #: default generation length for this task
    max_new_tokens: ClassVar[int] = 256

    def load(self, split: str = "test", data: str | None = None, limit: int | None = None) -> list[Example]:
        raise NotImplementedError

    def format_prompt(self, example: Example, shots: list[Example] | None = None) -> str:
        """Plain-text prompt (with few-shot examples prepended when given)."""
        parts = []
        for s in shots or []:
            parts.append(f"Question: {s.prompt}\nAnswer: {s.solution or s.answer}\n\n")
        parts.append(f"Question: {example.prompt}\nAnswer:")
        return "".join(parts)

    def chat_messages(self, example: Example, shots: list[Example] | None = None) -> list[dict[str, str]]:
        """Messages for chat models: few-shot turns, then the question as the last user turn."""
        msgs: list[dict[str, str]] = []
        for s in shots or []:
            msgs.append({"role": "user", "content": s.prompt})
            msgs.append({"role": "assistant", "content": s.solution or s.answer})
        msgs.append({"role": "user", "content": example.prompt})
        return msgs

    def extract(self, output: str) -> str | None:
        """The final answer in a model's output, or None when there is none."""
        raise NotImplementedError

    def canonical_id(self, raw: str) -> str:
        """A prediction file's id as `load` names the example (tasks override to read older id forms)."""
        return raw

    def is_correct(self, prediction: str | None, example: Example) -> bool:
        """The verifier: True when `prediction` is a correct final answer for `example`."""
        return prediction is not None and prediction.strip() == example.answer.strip()

    def metrics(self, records: list[dict[str, Any]]) -> dict[str, float]:
        """Aggregate per-example records (each has at least `correct`) into metrics."""
        n = len(records)
        return {"accuracy": sum(bool(r["correct"]) for r in records) / n if n else 0.0, "n": n}


TASKS: dict[str, Callable[[], Task]] = {}


def register(cls):
    """Class decorator: make a task available by its `name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    TASKS[cls.name] = cls
    return cls


def _import_builtin_tasks() -> None:
    # Importing the modules runs their @register decorators. Missing optional modules are skipped.
    import importlib

    for mod in ("srlm.data.synthetic", "srlm.data.gsm8k", "srlm.data.math", "srlm.data.glue", "srlm.data.squad"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def get_task(name: str, **kwargs) -> Task:
    """Instantiate a registered task by name; unknown names list the known ones."""
    _import_builtin_tasks()
    if name not in TASKS:
        raise SrlmError(f"unknown task {name!r}.{did_you_mean(name, TASKS)} Known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name](**kwargs)


def task_names() -> list[str]:
    _import_builtin_tasks()
    return sorted(TASKS)
