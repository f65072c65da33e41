"""`srlm.eval.evaluate(checkpoint, task, ...) -> Result`: evaluate a checkpoint, with a protocol card per task.

The one typed entry point of the eval room; `srlm eval` and the recipe runner call it. It
loads every task's data (and few-shot examples) before the model, so data mistakes show at
once, runs the harness (`srlm.eval.harness.evaluate`) through the inference engine, and
returns metrics, per-example records and, for each task, a protocol card: what a figure
needs beside it to be put next to a published one.

Protocol card (`Result.protocol[task]`, also in `eval.json`): task and split; the data
file with its sha256 and record count (and how many were evaluated); the prompt template
and what it reproduces; whether the model's chat template was applied; the shots, where
they came from (file, sha256, records) and how they were drawn; scoring and sampling
settings (temperature, samples, max new tokens, stop strings, seed); what each metric
means; versions (srlm and the reference implementations the metrics mirror or use); the
model path and load settings; wall time.

Few-shot examples never come from the evaluated split: they are the template's own
exemplars, or the train split found beside the evaluated file in the `data` folder, or
`shot_data`. A single evaluated file, an evaluated train split, or a "train" file that is
the evaluated file is an error naming what to give instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from srlm.data.tasks import SAMPLERS, Example, Task, get_task
from srlm.errors import SrlmError
from srlm.eval.harness import Setup, setup


@dataclass
class Result:
    """What `evaluate` returns: metrics per task, the GLUE score when GLUE tasks ran, the
    protocol card per task, the per-example records (each with its "task"), and wall time."""

    tasks: dict[str, dict[str, Any]]
    protocol: dict[str, dict[str, Any]]
    records: list[dict[str, Any]] = field(default_factory=list)
    glue: dict[str, float] | None = None
    wall_time_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tasks": self.tasks}
        if self.glue:
            out["glue"] = self.glue
        out["protocol"] = self.protocol
        out["wall_time_s"] = round(self.wall_time_s, 3)
        return clean_json(out)

    def table(self) -> str:
        """Metrics per task, then what each metric means (once for tasks that share the meaning)."""
        lines = [format_table(self.tasks)]
        meanings: dict[tuple[str, str], list[str]] = {}
        for name, card in self.protocol.items():
            for metric, meaning in card.get("metrics", {}).items():
                meanings.setdefault((metric, meaning), []).append(name)
        for (metric, meaning), names in meanings.items():
            lines.append(f"  {names[0] if len(names) == 1 else ', '.join(names)} {metric}: {meaning}")
        if self.glue:
            lines.append(f"GLUE score {self.glue['score']:.4f} over {self.glue['tasks']} task(s)")
        return "\n".join(lines)

    def protocol_lines(self) -> list[str]:
        """Each task's protocol card in one line."""
        return [card_line(card) for card in self.protocol.values()]


# ---------------------------------------------------------------- files, JSON, tables


def file_info(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"file": str(path), "sha256": h.hexdigest()}


def clean_json(obj: Any) -> Any:
    """NaN/inf (undefined correlations) become null so the JSON stays standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    return obj


def keep_previous(out: Path) -> Path | None:
    """Move results already at `out` (and their records) to the first free `STEM.N.json`; returns where."""
    rec = out.with_suffix(".jsonl")
    if not out.exists() and not rec.exists():
        return None
    n = 1
    while out.with_suffix(f".{n}.json").exists() or out.with_suffix(f".{n}.jsonl").exists():
        n += 1
    aside = out.with_suffix(f".{n}.json")
    for src, dst in ((out, aside), (rec, out.with_suffix(f".{n}.jsonl"))):
        if src.exists():
            os.replace(src, dst)
    return aside


def write_results(out: Path, results: dict, records: list[dict] | None) -> Path | None:
    """The metrics JSON at `out`, and the records as JSONL beside it (same name, `.jsonl`), each written
    atomically; results already at `out` are kept as history (`keep_previous`), never overwritten."""
    from srlm.atomic import write_text_atomic

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        aside = keep_previous(out)
        if aside is not None:
            print(f"srlm eval: kept the previous results at {out} as {aside.name}", file=sys.stderr)
        rec_path = None
        if records is not None:
            rec_path = out.with_suffix(".jsonl")
            write_text_atomic(
                rec_path, "".join(json.dumps(clean_json(r), ensure_ascii=False, default=str) + "\n" for r in records)
            )
        write_text_atomic(out, json.dumps(clean_json(results), indent=2, ensure_ascii=False) + "\n")
    except OSError as e:
        raise SrlmError(f"cannot write {out} ({e.strerror}); the metrics are printed above") from None
    return rec_path


def format_table(tasks: dict[str, dict]) -> str:
    lines = []
    for name, m in tasks.items():
        vals = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items())
        lines.append(f"{name:<14} {vals}")
    return "\n".join(lines)


def card_line(card: dict[str, Any]) -> str:
    """A protocol card in one line, for the end of `srlm eval`'s output."""
    d = card["data"]
    if d.get("file"):
        data = f"{Path(d['file']).name} sha256:{d['sha256'][:12]} {d['records']} records ({d['evaluated']} evaluated)"
    else:
        data = f"generated {card['split']} split ({d['evaluated']} evaluated)"
    p = card["prompt"]
    prompt = f"prompt {p['name']}" + (f" [{p['reference']}]" if p.get("reference") else "")
    s = card["shots"]
    if s["n"] == 0:
        shots = "0-shot"
    else:
        where = Path(s["file"]).name if s.get("file") else s["from"]
        shots = f"{s['n']}-shot from {where} ({s['sampler']} sampler)"
    g = card["generation"]
    if g["scoring"] == "loglik":
        gen = "log-likelihood of the choices"
    else:
        t = g["temperature"]
        gen = (
            "greedy" if t == 0 else f"T={t:g} seed {g['seed']}"
        ) + f", {g['samples']} sample(s), max {g['max_new_tokens']} new tokens"
    versions = ", ".join(f"{k} {v}" for k, v in card["versions"].items())
    return (
        f"protocol {card['task']}: {data} | {prompt}, {shots}, "
        f"{'chat template' if card['chat_template'] else 'no chat template'} | {gen} | "
        f"metrics {', '.join(card['metrics'])} | {versions} | {card['wall_time_s']:.1f} s"
    )


# ---------------------------------------------------------------- the model


def make_backend(
    checkpoint: str | Path,
    device: str | None = None,
    dtype: str | None = None,
    quantize: str | None = None,
    seed: int = 0,
    allow_nonfinite: bool = False,
    revision: str | None = None,
    engine: str = "srlm",
):
    """The model behind the harness's Backend protocol; the only place eval touches the model.
    `engine` "srlm" runs it in srlm's engine (weights holding NaN/Inf refused unless `allow_nonfinite`);
    "llama.cpp" runs a .gguf in llama.cpp (srlm.infer.llama_cpp.LlamaCppBackend)."""
    if engine == "llama.cpp":
        from srlm.infer.llama_cpp import LlamaCppBackend
        from srlm.model.hub import resolve

        for flag, value in (("device", device), ("dtype", dtype), ("quantize", quantize)):
            if value is not None:
                raise SrlmError(f"--{flag} applies to srlm's engine; llama.cpp runs the GGUF as it is")
        return LlamaCppBackend(resolve(checkpoint, revision), seed=seed)
    if engine != "srlm":
        raise SrlmError(f"engine {engine!r}: use srlm or llama.cpp")
    try:
        from srlm.infer.backend import EngineBackend
    except ModuleNotFoundError as e:
        if e.name in ("srlm.infer.backend", "srlm.infer"):
            raise SrlmError("the inference backend (srlm.infer.backend) is not available in this install") from None
        raise
    from srlm.model.checkpoint import check_finite

    backend = EngineBackend.from_checkpoint(
        str(checkpoint), device=device, dtype=dtype, quantize=quantize, seed=seed, revision=revision
    )
    check_finite(backend.engine.model, checkpoint, allow=allow_nonfinite)
    return backend


# ---------------------------------------------------------------- tasks and their data


def expand_tasks(spec: str | list[str], data: str | None, task_data: dict[str, str], split: str | None) -> list[str]:
    """Task names from "a,b" or a list; "glue" becomes every GLUE task whose files are in its data
    (recorded in `task_data`). Unknown names fail here, before any data or model is loaded."""
    from srlm.data.tasks import get_task

    names: list[str] = []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    for name in (s.strip() for s in items):
        if not name:
            continue
        if name == "glue":
            from srlm.data.glue import available_glue_tasks

            folder = task_data.get("glue", data)
            if folder is None:
                raise SrlmError("--task glue needs --data GLUE_FOLDER (with CoLA/, SST-2/, ... inside)")
            found = available_glue_tasks(folder, split or "dev")
            if not found:
                raise SrlmError(
                    f"{folder}: no GLUE task files found (expected folders like CoLA/, SST-2/ with dev.tsv)"
                )
            for n in found:
                task_data.setdefault(n, folder)
            names += found
        else:
            get_task(name)
            names.append(name)
    if not names:
        raise SrlmError("--task is empty; give one or more task names")
    return list(dict.fromkeys(names))


def _source(task: Task, split: str, data: str | None) -> Path | None:
    try:
        return task.source(split, data)
    except NotImplementedError:
        return None


def _train_pool(
    st: Setup, split: str, data: str | None, shot_data: str | None, evaluated: Path | None
) -> tuple[list[Example] | None, dict[str, Any]]:
    """The examples few-shot prompts draw from, and where they came from (see the module docstring)."""
    task, k, spec = st.task, st.shots, st.task.prompt
    info: dict[str, Any] = {"n": k}
    if k == 0:
        return None, info
    info["sampler"] = spec.sampler
    info["selection"] = SAMPLERS[spec.sampler]
    if spec.sampler == "fixed":
        if shot_data is not None:
            raise SrlmError(f"task {task.name}: prompt {spec.name} brings its own exemplars; drop --shot-data")
        info["from"] = f"the {spec.name} template's exemplars"
        return None, info
    what = f"task {task.name}: {k}-shot prompts take their examples from the train split"
    if shot_data is None:
        if split == "train":
            raise SrlmError(
                f"{what}, which is the split being evaluated; evaluate another split, give other train "
                "data with --shot-data, or use --shots 0"
            )
        if data is not None and Path(data).is_file():
            raise SrlmError(
                f"{what}, but --data {data} is one file, the evaluated {split} split; give the folder "
                f"that holds the train and {split} files, or the train file with --shot-data, "
                "or use --shots 0"
            )
        try:
            train = task.source("train", data)
        except NotImplementedError:
            raise SrlmError(
                f"{what}; this task cannot tell which file of {data} that is; give it with --shot-data"
            ) from None
        except SrlmError as e:
            raise SrlmError(f"{what}, and none was found: {e}") from None
        if train is not None and "train" not in train.name.lower():
            raise SrlmError(
                f"{what}; {train} is the only candidate in {data} and its name does not say train; "
                "give the train file with --shot-data, or use --shots 0"
            )
        source_data = data
    else:
        train = _source(task, "train", shot_data)
        source_data = shot_data
    if (
        train is not None
        and evaluated is not None
        and (train.resolve() == evaluated.resolve() or file_info(train)["sha256"] == file_info(evaluated)["sha256"])
    ):
        raise SrlmError(
            f"{what}, but {train} is the evaluated file; give a different train file with --shot-data, or use --shots 0"
        )
    # the "first" sampler reads only what it uses (generated train splits are large); the others need them all
    limit = k + 1 if spec.sampler == "first" and train is None else None
    pool = task.load(split="train", data=source_data, limit=limit)
    if train is not None:
        info.update(file_info(train), records=len(pool))
    else:
        info["from"] = "the generated train split"
    return pool, info


@dataclass
class _Planned:
    name: str
    st: Setup
    split: str
    examples: list[Example]
    pool: list[Example] | None
    card: dict[str, Any]


def _plan(
    name: str,
    data: str | None,
    split: str | None,
    limit: int | None,
    prompt: str | None,
    chat: bool,
    shots: int | None,
    shot_data: str | None,
    max_new_tokens: int | None,
    scoring: str,
) -> _Planned:
    task = get_task(name)
    split = split or task.default_split
    st = setup(task, prompt=prompt, chat=chat, shots=shots, max_new_tokens=max_new_tokens, scoring=scoring)
    source = _source(st.task, split, data)
    if source is not None:
        everything = st.task.load(split=split, data=data)
        examples = everything[:limit] if limit is not None else everything
        data_card = {**file_info(source), "records": len(everything), "evaluated": len(examples)}
    else:
        examples = st.task.load(split=split, data=data, limit=limit)
        data_card = {"generated": True, "seed": getattr(st.task, "seed", None), "evaluated": len(examples)}
    if not examples:
        raise SrlmError(f"task {name}: no examples in split {split!r}" + (f" of {data}" if data else ""))
    pool, shots_card = _train_pool(st, split, data, shot_data, source)
    spec = st.task.prompt
    protocol = st.task.protocol()
    card = {
        "task": name,
        "split": split,
        "data": data_card,
        "prompt": {"name": spec.name, "description": spec.description, "reference": spec.reference or None},
        "chat_template": st.chat,
        "shots": shots_card,
        "metrics": protocol["metrics"],
        "references": protocol["references"],
    }
    return _Planned(name, st, split, examples, pool, card)


# ---------------------------------------------------------------- the entry point


def evaluate(
    checkpoint: str | Path | None,
    task: str | list[str],
    data: str | None = None,
    *,
    task_data: Mapping[str, str] | None = None,
    split: str | None = None,
    limit: int | None = None,
    prompt: str | None = None,
    shots: int | None = None,
    shot_data: str | None = None,
    chat: bool = False,
    samples: int = 1,
    temperature: float | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    scoring: str = "auto",
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
    quantize: str | None = None,
    backend=None,
    progress: bool = True,
    allow_nonfinite: bool = False,
    revision: str | None = None,
    engine: str = "srlm",
) -> Result:
    """Evaluate `checkpoint` on `task` and return metrics, records and protocol cards.

    task:        a name, "a,b", or a list; "glue" = every GLUE task found in its data.
    data:        a file or folder in the benchmark's official format, for every task;
                 task_data maps task names to their own (e.g. {"gsm8k": "gsm8k/", "glue": "glue_data/"}).
    split:       the split to evaluate (default: the task's, e.g. test for gsm8k, dev for GLUE).
    limit:       evaluate only the first `limit` examples of each task.
    prompt:      the task's prompt template (e.g. gsm8k, gsm8k_cot, chat, chat-boxed for GSM8K);
                 default: the task's for plain or chat prompting.
    shots:       few-shot examples (default: the template's standard number, e.g. 5 for gsm8k).
    shot_data:   where the train split for the shots is, when it is not in `data`.
    chat:        prompt through the model's chat template (chat-only templates imply it).
    samples:     completions per prompt; > 1 adds pass@k and maj@k.
    temperature: default 0 (greedy), or 0.8 with samples > 1.
    backend:     anything with the harness's Backend protocol; default: the checkpoint through
                 srlm's inference engine (device, dtype, quantize, seed); weights holding NaN/Inf
                 are refused unless `allow_nonfinite`.
    """
    t0 = time.perf_counter()
    if temperature is None:
        temperature = 0.8 if samples > 1 else 0.0
    task_data = dict(task_data or {})
    names = expand_tasks(task, data, task_data, split)
    planned = [
        _plan(n, task_data.get(n, data), split, limit, prompt, chat, shots, shot_data, max_new_tokens, scoring)
        for n in names
    ]
    if backend is None:
        if checkpoint is None:
            raise SrlmError("evaluate: give a checkpoint folder, or a backend")
        backend = make_backend(
            checkpoint,
            device=device,
            dtype=dtype,
            quantize=quantize,
            seed=seed,
            allow_nonfinite=allow_nonfinite,
            revision=revision,
            engine=engine,
        )

    from srlm import __version__
    from srlm.eval.harness import evaluate as run_harness
    from srlm.eval.metrics import glue_score

    result = Result(tasks={}, protocol={})
    for p in planned:
        t1 = time.perf_counter()
        metrics, records = run_harness(
            p.st.task,
            p.examples,
            backend,
            shots=p.st.shots,
            chat=p.st.chat,
            samples=samples,
            batch_size=batch_size,
            max_new_tokens=p.st.max_new_tokens,
            temperature=temperature,
            scoring=scoring,
            shot_pool=p.pool,
            progress=progress,
        )
        card = p.card
        card["generation"] = (
            {"scoring": "loglik"}
            if p.st.loglik
            else {
                "scoring": "generate",
                "temperature": temperature,
                "samples": samples,
                "max_new_tokens": p.st.max_new_tokens,
                "stop": p.st.stop,
                "seed": seed,
            }
        )
        card["versions"] = {"srlm": __version__, **card.pop("references")}
        card["model"] = {
            "path": None if checkpoint is None else str(checkpoint),
            "device": device,
            "dtype": dtype,
            "quantize": quantize,
        }
        card["wall_time_s"] = round(time.perf_counter() - t1, 3)
        result.tasks[p.name] = metrics
        result.protocol[p.name] = card
        result.records += [{"task": p.name, **r} for r in records]
    result.glue = glue_score(result.tasks) or None
    result.wall_time_s = time.perf_counter() - t0
    return result
