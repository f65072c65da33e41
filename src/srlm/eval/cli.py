"""`srlm eval PATH --task NAME[,NAME...]`: evaluate a checkpoint and write metrics + per-example records.

Writes `--out` (default `PATH/eval.json` for a checkpoint folder, else `eval.json`): a JSON
of {"tasks": {name: metrics}, "glue": GLUE score when GLUE tasks ran, "config": ...}, and
the per-example records as JSONL beside it (same name, `.jsonl`). `--task glue` means every
GLUE task whose files are under `--data`. `--data` is one file or folder for all tasks,
or `NAME=PATH` (repeatable) per task. Few-shot examples come from the task's train
split when `--data` has one, else from the evaluated examples (never the example itself).
The model is reached only through `make_backend`, which wraps the inference engine in
the harness's `Backend` protocol (srlm.infer.backend.EngineBackend, imported lazily), or with
`--backend llama.cpp` runs a GGUF in llama.cpp (srlm.infer.llama_cpp.LlamaCppBackend).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from srlm.errors import SrlmError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="checkpoint folder, .gguf file or Hugging Face Hub id (ORG/NAME)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of a Hub id")
    p.add_argument("--task", required=True, help="task name(s), comma-separated; 'glue' = all GLUE tasks found in --data")
    p.add_argument("--data", action="append", default=[], metavar="[NAME=]FILE_OR_DIR",
                   help="local data in the official format; NAME=PATH for one task (repeatable)")
    p.add_argument("--split", default=None, help="split to evaluate (default: the task's, e.g. test for gsm8k, dev for GLUE)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples of each task")
    p.add_argument("--shots", type=int, default=0, help="few-shot examples in each prompt")
    p.add_argument("--chat", action="store_true", help="prompt with chat messages (the model's chat template)")
    p.add_argument("--samples", type=int, default=1, help="completions per prompt; >1 adds pass@k and maj@k")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per backend call")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation length (default: per task)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 0 = greedy; 0.8 with --samples > 1)")
    p.add_argument("--scoring", choices=["auto", "generate", "loglik"], default="auto",
                   help="auto: the task's kind; generate: score GLUE by generated label words (fine-tuned models)")
    p.add_argument("--backend", choices=["srlm", "llama.cpp"], default="srlm",
                   help="run the model in srlm's engine, or a .gguf in llama.cpp (needs llama-cpp-python)")
    p.add_argument("--device", default=None, help="device for the model (default: the backend's choice)")
    p.add_argument("--dtype", default=None, help="model dtype (default: the backend's choice)")
    p.add_argument("--quantize", default=None, help="weight quantization for inference, if the backend supports it")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--out", default=None, help="metrics JSON path (records go beside it as .jsonl)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def make_backend(path: str, args: argparse.Namespace):
    """The model behind the harness's Backend protocol; the only place eval touches the model."""
    if getattr(args, "backend", "srlm") == "llama.cpp":
        from srlm.infer.llama_cpp import LlamaCppBackend
        from srlm.model.hub import resolve

        for flag in ("device", "dtype", "quantize"):
            if getattr(args, flag, None) is not None:
                raise SrlmError(f"--{flag} applies to srlm's engine; llama.cpp runs the GGUF as it is")
        return LlamaCppBackend(resolve(path, getattr(args, "revision", None)), seed=args.seed)
    try:
        from srlm.infer.backend import EngineBackend
    except ModuleNotFoundError as e:
        if e.name in ("srlm.infer.backend", "srlm.infer"):
            raise SrlmError("the inference backend (srlm.infer.backend) is not available in this install") from None
        raise
    return EngineBackend.from_checkpoint(path, device=args.device, dtype=args.dtype, quantize=args.quantize,
                                         seed=args.seed, revision=getattr(args, "revision", None))


def parse_data(values: list[str]) -> tuple[str | None, dict[str, str]]:
    default, per_task = None, {}
    for v in values:
        name, sep, path = v.partition("=")
        if sep and name and not Path(v).exists():
            per_task[name] = path
        elif default is None:
            default = v
        else:
            raise SrlmError(f"--data given twice without a task name ({default!r}, {v!r}); use NAME=PATH")
    return default, per_task


def expand_tasks(spec: str, default_data: str | None, per_task: dict[str, str], split: str | None) -> list[str]:
    from srlm.data.tasks import get_task

    names: list[str] = []
    for name in (s.strip() for s in spec.split(",")):
        if not name:
            continue
        if name == "glue":
            from srlm.data.glue import available_glue_tasks

            data = per_task.get("glue", default_data)
            if data is None:
                raise SrlmError("--task glue needs --data GLUE_FOLDER (with CoLA/, SST-2/, ... inside)")
            found = available_glue_tasks(data, split or "dev")
            if not found:
                raise SrlmError(f"{data}: no GLUE task files found (expected folders like CoLA/, SST-2/ with dev.tsv)")
            for n in found:
                per_task.setdefault(n, data)
            names += found
        else:
            get_task(name)  # unknown names fail here, before any model is loaded
            names.append(name)
    if not names:
        raise SrlmError("--task is empty; give one or more task names")
    return list(dict.fromkeys(names))


def _clean(obj: Any) -> Any:
    """NaN/inf (undefined correlations) become null so the JSON stays standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_results(out: Path, results: dict, records: list[dict] | None) -> Path | None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_clean(results), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if records is None:
        return None
    rec_path = out.with_suffix(".jsonl")
    with open(rec_path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(_clean(r), ensure_ascii=False, default=str) + "\n")
    return rec_path


def format_table(tasks: dict[str, dict]) -> str:
    lines = []
    for name, m in tasks.items():
        vals = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items())
        lines.append(f"{name:<14} {vals}")
    return "\n".join(lines)


def run(args: argparse.Namespace, backend=None) -> dict:
    from srlm.data.tasks import get_task
    from srlm.eval.harness import evaluate
    from srlm.eval.metrics import glue_score

    if args.out and args.out.endswith(".jsonl"):
        raise SrlmError(f"--out {args.out}: give the metrics .json path; records are written beside it as .jsonl")
    default_data, per_task = parse_data(args.data)
    names = expand_tasks(args.task, default_data, per_task, args.split)
    temperature = args.temperature if args.temperature is not None else (0.8 if args.samples > 1 else 0.0)
    loaded = []
    for name in names:  # load every task before the model, so data mistakes show at once
        task = get_task(name)
        data = per_task.get(name, default_data)
        split = args.split or getattr(task, "default_split", "test")
        examples = task.load(split=split, data=data, limit=args.limit)
        if not examples:
            raise SrlmError(f"task {name}: no examples in split {split!r}" + (f" of {data}" if data else ""))
        pool = None
        if args.shots > 0 and split != "train":
            try:
                pool = task.load(split="train", data=data, limit=args.shots + 1)
            except SrlmError:
                pool = None  # no train split: shots come from the evaluated examples
        loaded.append((name, task, split, examples, pool))
    backend = backend if backend is not None else make_backend(args.path, args)

    results: dict[str, Any] = {"tasks": {}}
    all_records = []
    for name, task, split, examples, pool in loaded:
        metrics, records = evaluate(task, examples, backend, shots=args.shots, chat=args.chat, samples=args.samples,
                                    batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                    temperature=temperature, scoring=args.scoring, shot_pool=pool,
                                    progress=not args.no_progress)
        results["tasks"][name] = metrics
        all_records += [{"task": name, **r} for r in records]
    glue = glue_score(results["tasks"])
    if glue:
        results["glue"] = glue
    results["config"] = {"path": str(args.path), "split": args.split, "limit": args.limit, "shots": args.shots,
                         "chat": args.chat, "samples": args.samples, "temperature": temperature,
                         "max_new_tokens": args.max_new_tokens, "scoring": args.scoring, "seed": args.seed,
                         "data": args.data}
    out = Path(args.out) if args.out else (Path(args.path) / "eval.json" if Path(args.path).is_dir() else Path("eval.json"))
    rec_path = write_results(out, results, all_records)
    print(format_table(results["tasks"]))
    if glue:
        print(f"GLUE score {glue['score']:.4f} over {glue['tasks']} task(s)")
    print(f"wrote {out} and {rec_path}", file=sys.stderr)
    return results


def main(args: argparse.Namespace) -> int:
    run(args)
    return 0
