"""Tasks: one small class per benchmark or synthetic family, behind one interface.

A task knows how to load its examples (from local files in the official format,
or by generating them), how to turn an example into a prompt, how to pull the
final answer out of a model's output, how to verify it, and how to aggregate
per-example results into the task's official metrics. It knows nothing about
models, tokenizers or generation: the evaluation harness (`srlm.eval`) and the
training stages (`srlm.train`) drive it.

Adding a task is one file: subclass `Task`, decorate it with `@register`.

A task may offer several named prompt templates (`Task.prompts`, chosen with
`task.with_prompt(name)`): a template says how examples become prompts, how many few-shot
examples it standardly uses and where they come from, where generation stops, and what it
mirrors (e.g. lm-evaluation-harness's `gsm8k`). Every task has at least "default".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
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


#: how a template's few-shot examples are drawn
SAMPLERS = {
    "first": "the first k examples of the train split",
    "lm-eval": "lm-evaluation-harness's default sampler: random.Random(1234).sample(train split, k) for each "
    "evaluated example in order",
    "fixed": "the template's own exemplars, the first k of them",
}


@dataclass(frozen=True)
class Prompt:
    """A named prompt template.

    chat:           True: chat messages, rendered by the model's chat template; False: plain text
                    (with a chat template it becomes one user turn, as lm-evaluation-harness's
                    --apply_chat_template does); None: the task renders either (its `format_prompt`
                    or `chat_messages`).
    shots:          the number of few-shot examples the template standardly uses.
    sampler:        how they are drawn (see SAMPLERS); "fixed" uses `exemplars`.
    stop:           stop strings for generation (None: the task's own).
    max_new_tokens: generation length (None: the task's own).
    reference:      what the template reproduces, when it reproduces something.
    """

    name: str
    description: str
    chat: bool | None = None
    shots: int = 0
    sampler: str = "first"
    exemplars: tuple[Example, ...] = ()
    stop: tuple[str, ...] | None = None
    max_new_tokens: int | None = None
    reference: str = ""

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"prompt {self.name}: sampler must be one of {', '.join(SAMPLERS)}")
        if self.sampler == "fixed" and len(self.exemplars) < self.shots:
            raise ValueError(f"prompt {self.name}: {self.shots} shots but {len(self.exemplars)} exemplars")


DEFAULT_PROMPT = Prompt(
    "default",
    "the task's own format: 'Question: ...\nAnswer:' as text, the question as the "
    "user turn as chat; shots from the train split",
)


class Task:
    """Base class. Subclasses set `name` and override what differs."""

    name: ClassVar[str] = ""
    #: "generate": the model writes an answer that `extract` parses;
    #: "loglik": the harness scores each of `example.choices` as a continuation.
    kind: ClassVar[str] = "generate"
    #: default generation length for this task
    max_new_tokens: ClassVar[int] = 256
    #: the split evaluated when none is named
    default_split: ClassVar[str] = "test"
    #: where plain-text generation stops (the default format's next "Question:")
    stop: ClassVar[tuple[str, ...]] = ("\nQuestion:",)
    #: the prompt templates this task offers, by name
    prompts: ClassVar[dict[str, Prompt]] = {"default": DEFAULT_PROMPT}
    #: the chosen template (`with_prompt`); None until one is chosen
    prompt: Prompt | None = None

    def load(self, split: str = "test", data: str | None = None, limit: int | None = None) -> list[Example]:
        raise NotImplementedError

    def source(self, split: str, data: str | None) -> Path | None:
        """The file `load(split, data)` reads, or None when the task generates its examples.
        Tasks that find their files in a folder override this."""
        if data is None:
            return None
        if Path(data).is_file():
            return Path(data)
        raise NotImplementedError(f"task {self.name} does not say which file of {data} holds split {split!r}")

    def default_prompt(self, chat: bool) -> str:
        """The template used when none is named, for plain-text or chat prompting."""
        return "default"

    def with_prompt(self, name: str) -> "Task":
        """A copy of this task that prompts (and, where extraction depends on it, scores) with template `name`."""
        if name not in self.prompts:
            raise SrlmError(f"task {self.name}: unknown prompt {name!r}; this task has {', '.join(self.prompts)}")
        task = copy.copy(self)
        task.prompt = self.prompts[name]
        return task

    def protocol(self) -> dict[str, Any]:
        """What the metrics mean: {"metrics": {name: definition}, "references": {implementation: version}}."""
        return {
            "metrics": {"accuracy": "fraction of examples whose extracted answer the task's verifier accepts"},
            "references": {},
        }

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

    def choose(self, example: Example, logliks: list[float]) -> str:
        """Log-likelihood tasks: the prediction given each choice's log-likelihood (default: the likeliest)."""
        return example.choices[max(range(len(logliks)), key=logliks.__getitem__)]

    def answer_key(self, prediction: str):
        """What majority votes group answers by (default: the stripped text; numeric tasks compare values)."""
        return prediction.strip()

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
    """Import every module and package of `srlm.data`, so their @register decorators run: a task is
    found by being defined there, not by a list of module names."""
    import importlib
    import pkgutil

    import srlm.data

    for info in pkgutil.iter_modules(srlm.data.__path__, "srlm.data."):
        importlib.import_module(info.name)


def get_task(name: str, prompt: str | None = None, **kwargs) -> Task:
    """Instantiate a registered task by name (with prompt template `prompt` when given);
    unknown names list the known ones."""
    _import_builtin_tasks()
    if name not in TASKS:
        raise SrlmError(f"unknown task {name!r}.{did_you_mean(name, TASKS)} Known tasks: {', '.join(sorted(TASKS))}")
    task = TASKS[name](**kwargs)
    return task.with_prompt(prompt) if prompt is not None else task


def task_names() -> list[str]:
    _import_builtin_tasks()
    return sorted(TASKS)
