"""The evaluation harness: any `Task` x any `Backend` -> metrics and per-example records.

The harness knows nothing about models. It talks to a backend through two calls:

    class Backend(Protocol):
        def generate(self, prompts: list[str | list[dict]], n: int, max_new_tokens: int,
                     temperature: float, stop: list[str] | None) -> list[list[str]]
        def loglikelihood(self, requests: list[tuple[str, str]]) -> list[float]

`generate` gets plain-text prompts, or chat message lists ([{"role", "content"}, ...])
when `chat=True` (the backend applies its chat template), and returns, for each prompt,
`n` completions (text after the prompt, cut before any `stop` string; temperature 0 is
greedy). `loglikelihood` gets (context, continuation) pairs and returns, for each, the
summed log-probability of the continuation's tokens given the context. A backend for
generation-only tasks may leave `loglikelihood` unimplemented, and vice versa.

Tasks with kind "generate" are prompted and their outputs go through `task.extract`
and `task.is_correct`; kind "loglik" tasks score " " + each of `example.choices` after
the prompt and predict with `task.choose(example, logliks)` when the task has it,
else the argmax. `scoring="generate"` forces generation for loglik tasks (fine-tuned
models). Optional task hooks, looked up with getattr so any Task works: `stop`
(default ["\\nQuestion:"] for plain prompts), `choose`, `answer_key` (groups votes for
maj@k).

Prompts follow the task's template (`prompt`, default `task.default_prompt(chat)`; see
`srlm.data.tasks.Prompt`): a chat-only template turns `chat` on; a plain-text template under
`chat` becomes one user turn and keeps its stop strings. `shots` (default: the template's
standard number) few-shot examples come from the template's own exemplars, or from `shot_pool`,
which must be examples of another split than the evaluated one (the train split): there is no
fallback to the evaluated examples. The template's sampler picks them: the first `shots`, or
lm-evaluation-harness's seeded random draw per example (see `select_shots`).

Records hold id, prompt, output, extracted, gold, correct and the example's meta; with
`samples` > 1 also outputs, extracted_all, correct_all, majority and majority_correct,
and the metrics gain pass@k (unbiased, k = 1, 2, 4, ... up to samples) and maj@samples.
`task.metrics` always sees the first sample of each example.
"""

from __future__ import annotations

from dataclasses import dataclass
from random import Random
from typing import Any, Protocol, runtime_checkable

from srlm.data.tasks import Example, Task
from srlm.errors import SrlmError
from srlm.eval.metrics import majority_vote, pass_at_k


@runtime_checkable
class Backend(Protocol):
    def generate(
        self, prompts: list[str | list[dict]], n: int, max_new_tokens: int, temperature: float, stop: list[str] | None
    ) -> list[list[str]]: ...

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[float]: ...


#: lm-evaluation-harness's default few-shot seed (lm_eval.defaults.DEFAULT_OTHER_SEED)
LM_EVAL_FEWSHOT_SEED = 1234


@dataclass
class Setup:
    """How a task is prompted and scored: everything `evaluate` decides before it runs."""

    task: Task  # a copy with its prompt template chosen
    chat: bool  # prompts go through the model's chat template
    shots: int
    stop: list[str] | None
    max_new_tokens: int
    loglik: bool  # scored by log-likelihood of the choices, not by generation


def setup(
    task: Task,
    prompt: str | None = None,
    chat: bool = False,
    shots: int | None = None,
    max_new_tokens: int | None = None,
    scoring: str = "auto",
) -> Setup:
    """Resolve the prompt template, chat, shots, stop strings and generation length (see the module docstring)."""
    if scoring not in ("auto", "generate", "loglik"):
        raise SrlmError(f"scoring must be auto, generate or loglik, got {scoring!r}")
    if prompt is not None:
        task = task.with_prompt(prompt)
    elif task.prompt is None:
        task = task.with_prompt(task.default_prompt(chat))
    spec = task.prompt
    chat = chat or spec.chat is True
    shots = spec.shots if shots is None else shots
    if shots < 0:
        raise SrlmError(f"shots must be 0 or more, got {shots}")
    if spec.sampler == "fixed" and shots > len(spec.exemplars):
        raise SrlmError(
            f"task {task.name}: prompt {spec.name} has {len(spec.exemplars)} exemplars; "
            f"ask for at most {len(spec.exemplars)} shots"
        )
    use_loglik = (task.kind == "loglik") if scoring == "auto" else scoring == "loglik"
    if chat:
        stop = list(spec.stop) if spec.chat is False and spec.stop else None
    else:
        stop = list(spec.stop) if spec.stop else list(task.stop)
    return Setup(
        task=task,
        chat=chat,
        shots=shots,
        stop=stop,
        loglik=use_loglik,
        max_new_tokens=max_new_tokens or spec.max_new_tokens or task.max_new_tokens,
    )


def select_shots(st: Setup, examples: list[Example], pool: list[Example] | None) -> list[list[Example]]:
    """The few-shot examples of each of `examples`, in order.

    "fixed": the template's first k exemplars. "first": the first k of `pool` (never the example
    itself). "lm-eval": as lm-evaluation-harness's ContextSampler with its default seed, one
    Random(1234) drawing `sample(pool, k)` for each example in evaluation order, so with the same
    train file and order the prompts are the ones lm-eval builds."""
    k, spec, name = st.shots, st.task.prompt, st.task.name
    if k == 0:
        return [[] for _ in examples]
    if spec.sampler == "fixed":
        return [list(spec.exemplars[:k]) for _ in examples]
    if pool is None:
        raise SrlmError(
            f"task {name}: {k}-shot prompts draw their examples from the train split, and none was "
            "given; give train data, or ask for 0 shots"
        )
    if len(pool) < k:
        raise SrlmError(f"task {name}: {k}-shot prompts need at least {k} train examples, got {len(pool)}")
    if spec.sampler == "lm-eval":
        rnd = Random(LM_EVAL_FEWSHOT_SEED)
        return [[pool[i] for i in rnd.sample(range(len(pool)), k)] for _ in examples]
    # by content, not id: a train file's and a test file's positional ids ("0", "1", ...) coincide
    return [[s for s in pool[: k + 1] if s is not ex and s.prompt != ex.prompt][:k] for ex in examples]


def _ks(n: int) -> list[int]:
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def render(st: Setup, example: Example, shots: list[Example]) -> str | list[dict]:
    """The prompt of one example: text, or chat messages."""
    task = st.task
    if not st.chat:
        return task.format_prompt(example, shots)
    if task.prompt.chat is False:  # a text template through a chat template: one user turn, as lm-eval does
        return [{"role": "user", "content": task.format_prompt(example, shots)}]
    return task.chat_messages(example, shots)


def evaluate(
    task: Task,
    examples: list[Example],
    backend: Backend,
    shots: int | None = None,
    chat: bool = False,
    samples: int = 1,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    scoring: str = "auto",
    shot_pool: list[Example] | None = None,
    prompt: str | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Evaluate `task` on `examples` with `backend`; returns (metrics, records). See the module docstring."""
    if samples < 1 or batch_size < 1:
        raise SrlmError(f"samples and batch size must be at least 1 (got {samples}, {batch_size})")
    st = setup(task, prompt=prompt, chat=chat, shots=shots, max_new_tokens=max_new_tokens, scoring=scoring)
    task = st.task
    if st.loglik and any(not ex.choices for ex in examples):
        raise SrlmError(f"task {task.name}: log-likelihood scoring needs examples with choices; use scoring='generate'")
    if st.loglik and st.chat:
        raise SrlmError(
            f"task {task.name}: chat prompts are for generation; score log-likelihood tasks with plain "
            "prompts (drop --chat) or use --scoring generate"
        )
    if st.loglik and samples > 1:
        raise SrlmError(f"task {task.name}: --samples > 1 needs generation; log-likelihood scoring is deterministic")
    all_shots = select_shots(st, examples, shot_pool)

    records: list[dict[str, Any]] = []
    from srlm.progress import Progress

    bar = Progress(len(examples), desc=task.name, unit="ex", enabled=progress, every=max(1, len(examples) // 4))
    try:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            prompts = [render(st, ex, sh) for ex, sh in zip(batch, all_shots[start : start + batch_size])]
            if st.loglik:
                records += _score_loglik(task, batch, prompts, backend)
            else:
                records += _score_generate(
                    task, batch, prompts, backend, samples, st.max_new_tokens, temperature, st.stop
                )
            bar.update(len(batch))
    finally:
        bar.close()
    return summarize(task, records, samples), records


def _score_loglik(task, batch, prompts, backend) -> list[dict]:
    requests = [(p, " " + c) for p, ex in zip(prompts, batch) for c in ex.choices]
    scores = list(backend.loglikelihood(requests))
    if len(scores) != len(requests):
        raise ValueError(f"backend.loglikelihood returned {len(scores)} scores for {len(requests)} requests")
    out, i = [], 0
    for p, ex in zip(prompts, batch):
        ll = [float(s) for s in scores[i : i + len(ex.choices)]]
        i += len(ex.choices)
        pred = task.choose(ex, ll)
        out.append(
            {
                "id": ex.id,
                "prompt": p,
                "logliks": ll,
                "output": pred,
                "extracted": pred,
                "gold": ex.answer,
                "correct": bool(task.is_correct(pred, ex)),
                "meta": ex.meta,
            }
        )
    return out


def _score_generate(task, batch, prompts, backend, samples, max_new, temperature, stop) -> list[dict]:
    outs = backend.generate(prompts, n=samples, max_new_tokens=max_new, temperature=temperature, stop=stop)
    if len(outs) != len(prompts) or any(len(o) != samples for o in outs):
        raise ValueError(f"backend.generate must return {samples} completion(s) for each of {len(prompts)} prompts")
    recs = []
    for p, ex, texts in zip(prompts, batch, outs):
        extracted = [task.extract(t) for t in texts]
        correct = [bool(task.is_correct(x, ex)) for x in extracted]
        r = {
            "id": ex.id,
            "prompt": p,
            "output": texts[0],
            "extracted": extracted[0],
            "gold": ex.answer,
            "correct": correct[0],
            "meta": ex.meta,
        }
        if samples > 1:
            maj = majority_vote(extracted, key=task.answer_key)
            r.update(
                outputs=list(texts),
                extracted_all=extracted,
                correct_all=correct,
                majority=maj,
                majority_correct=bool(task.is_correct(maj, ex)) if maj is not None else False,
            )
        recs.append(r)
    return recs


def summarize(task: Task, records: list[dict[str, Any]], samples: int = 1) -> dict[str, Any]:
    """Task metrics over records, plus pass@k and maj@k when there are several samples."""
    metrics = dict(task.metrics(records))
    if samples > 1 and records:
        for k in _ks(samples):
            metrics[f"pass@{k}"] = sum(pass_at_k(samples, sum(r["correct_all"]), k) for r in records) / len(records)
        metrics[f"maj@{samples}"] = sum(r["majority_correct"] for r in records) / len(records)
    return metrics
