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
maj@k). Few-shot examples come from `shot_pool` (default: the evaluated examples), the
first `shots` of them other than the example itself, so prompts are deterministic.

Records hold id, prompt, output, extracted, gold, correct and the example's meta; with
`samples` > 1 also outputs, extracted_all, correct_all, majority and majority_correct,
and the metrics gain pass@k (unbiased, k = 1, 2, 4, ... up to samples) and maj@samples.
`task.metrics` always sees the first sample of each example.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from tqdm.auto import tqdm

from srlm.data.tasks import Example, Task
from srlm.errors import SrlmError
from srlm.eval.metrics import majority_vote, pass_at_k


@runtime_checkable
class Backend(Protocol):
    def generate(self, prompts: list[str | list[dict]], n: int, max_new_tokens: int, temperature: float,
                 stop: list[str] | None) -> list[list[str]]: ...

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[float]: ...


DEFAULT_STOP = ["\nQuestion:"]


def _shots(example: Example, pool: list[Example], k: int) -> list[Example]:
    if k <= 0:
        return []
    # by content, not id: a train file's and a test file's positional ids ("0", "1", ...) coincide
    out = [s for s in pool[: k + 1] if s is not example and s.prompt != example.prompt][:k]
    return out


def _ks(n: int) -> list[int]:
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def evaluate(task: Task, examples: list[Example], backend: Backend, shots: int = 0, chat: bool = False,
             samples: int = 1, batch_size: int = 8, max_new_tokens: int | None = None, temperature: float = 0.0,
             scoring: str = "auto", shot_pool: list[Example] | None = None,
             progress: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Evaluate `task` on `examples` with `backend`; returns (metrics, records). See the module docstring."""
    if scoring not in ("auto", "generate", "loglik"):
        raise SrlmError(f"scoring must be auto, generate or loglik, got {scoring!r}")
    if samples < 1 or batch_size < 1:
        raise SrlmError(f"samples and batch size must be at least 1 (got {samples}, {batch_size})")
    use_loglik = (task.kind == "loglik") if scoring == "auto" else scoring == "loglik"
    if use_loglik and any(not ex.choices for ex in examples):
        raise SrlmError(f"task {task.name}: log-likelihood scoring needs examples with choices; use scoring='generate'")
    if use_loglik and chat:
        raise SrlmError(f"task {task.name}: chat prompts are for generation; score log-likelihood tasks with plain "
                        "prompts (drop --chat) or use --scoring generate")
    if use_loglik and samples > 1:
        raise SrlmError(f"task {task.name}: --samples > 1 needs generation; log-likelihood scoring is deterministic")
    pool = examples if shot_pool is None else shot_pool
    if shots > 0 and len(pool) <= 1:
        raise SrlmError(f"task {task.name}: {shots}-shot prompts need other examples to draw from; give more data")
    stop = None if chat else list(getattr(task, "stop", DEFAULT_STOP))
    max_new = max_new_tokens or task.max_new_tokens

    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(examples), desc=task.name, unit="ex", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(examples), batch_size):
            batch = examples[start:start + batch_size]
            prompts = [task.chat_messages(ex, _shots(ex, pool, shots)) if chat else
                       task.format_prompt(ex, _shots(ex, pool, shots)) for ex in batch]
            if use_loglik:
                records += _score_loglik(task, batch, prompts, backend)
            else:
                records += _score_generate(task, batch, prompts, backend, samples, max_new, temperature, stop)
            bar.update(len(batch))
    finally:
        bar.close()
    return summarize(task, records, samples), records


def _score_loglik(task, batch, prompts, backend) -> list[dict]:
    requests = [(p, " " + c) for p, ex in zip(prompts, batch) for c in ex.choices]
    scores = list(backend.loglikelihood(requests))
    if len(scores) != len(requests):
        raise ValueError(f"backend.loglikelihood returned {len(scores)} scores for {len(requests)} requests")
    choose = getattr(task, "choose", None)
    out, i = [], 0
    for p, ex in zip(prompts, batch):
        ll = [float(s) for s in scores[i:i + len(ex.choices)]]
        i += len(ex.choices)
        pred = choose(ex, ll) if choose else ex.choices[max(range(len(ll)), key=ll.__getitem__)]
        out.append({"id": ex.id, "prompt": p, "logliks": ll, "output": pred, "extracted": pred, "gold": ex.answer,
                    "correct": bool(task.is_correct(pred, ex)), "meta": ex.meta})
    return out


def _score_generate(task, batch, prompts, backend, samples, max_new, temperature, stop) -> list[dict]:
    outs = backend.generate(prompts, n=samples, max_new_tokens=max_new, temperature=temperature, stop=stop)
    if len(outs) != len(prompts) or any(len(o) != samples for o in outs):
        raise ValueError(f"backend.generate must return {samples} completion(s) for each of {len(prompts)} prompts")
    key = getattr(task, "answer_key", None)
    recs = []
    for p, ex, texts in zip(prompts, batch, outs):
        extracted = [task.extract(t) for t in texts]
        correct = [bool(task.is_correct(x, ex)) for x in extracted]
        r = {"id": ex.id, "prompt": p, "output": texts[0], "extracted": extracted[0], "gold": ex.answer,
             "correct": correct[0], "meta": ex.meta}
        if samples > 1:
            maj = majority_vote(extracted, key=key)
            r.update(outputs=list(texts), extracted_all=extracted, correct_all=correct, majority=maj,
                     majority_correct=bool(task.is_correct(maj, ex)) if maj is not None else False)
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
