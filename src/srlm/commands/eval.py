"""`srlm eval PATH --task NAME[,NAME...]`: evaluate a checkpoint and write metrics, records and protocol cards.

A thin command over `srlm.eval.evaluate` (srlm.eval.run). Writes `--out` (default
`PATH/eval-TASKS.json` for a checkpoint folder, e.g. `eval-gsm8k.json`, else `eval-TASKS.json`
here): a JSON of {"tasks": {name: metrics}, "glue": GLUE score when GLUE tasks ran, "protocol":
{name: protocol card}, "wall_time_s", "config": the command's settings}, and the per-example
records as JSONL beside it (same name, `.jsonl`). Results already there are kept as history
(`eval-gsm8k.1.json`, `.2`, ...), never overwritten. The output folder is checked before anything
is evaluated: an unwritable `--out` is an error; an unwritable checkpoint folder sends the default
files to the current folder, saying so. Prints the metrics with what each one means (before any
file is written), then each task's protocol card in one line. `--task glue` means every GLUE task
whose files are under `--data`. `--data` is one file or folder for all tasks, or `NAME=PATH`
(repeatable) per task. Few-shot examples come from the prompt template's own exemplars or the
train split (in the `--data` folder, or `--shot-data`), never from the evaluated split.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from srlm.errors import SrlmError
from srlm.eval import run as eval_run


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="checkpoint folder, .gguf file or Hugging Face Hub id (ORG/NAME)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of a Hub id")
    p.add_argument(
        "--task", required=True, help="task name(s), comma-separated; 'glue' = all GLUE tasks found in --data"
    )
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="[NAME=]FILE_OR_DIR",
        help="local data in the official format; NAME=PATH for one task (repeatable)",
    )
    p.add_argument(
        "--split", default=None, help="split to evaluate (default: the task's, e.g. test for gsm8k, dev for GLUE)"
    )
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples of each task")
    p.add_argument(
        "--prompt",
        default=None,
        help="prompt template; gsm8k: gsm8k (lm-eval, 5-shot), gsm8k_cot (lm-eval, 8 fixed CoT exemplars), "
        "chat (answer after ####), chat-boxed (answer in \\boxed{}), question (bare question, chat). "
        "Default: gsm8k, or question with --chat; other tasks: default",
    )
    p.add_argument(
        "--shots",
        type=int,
        default=None,
        help="few-shot examples in each prompt (default: the template's standard number)",
    )
    p.add_argument(
        "--shot-data",
        default=None,
        metavar="FILE_OR_DIR",
        help="the train split the shots come from, when --data does not hold it",
    )
    p.add_argument("--chat", action="store_true", help="prompt through the model's chat template")
    p.add_argument("--samples", type=int, default=1, help="completions per prompt; >1 adds pass@k and maj@k")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per backend call")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation length (default: the template's)")
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="sampling temperature (default 0 = greedy; 0.8 with --samples > 1)",
    )
    p.add_argument(
        "--scoring",
        choices=["auto", "generate", "loglik"],
        default="auto",
        help="auto: the task's kind; generate: score GLUE by generated label words (fine-tuned models)",
    )
    p.add_argument(
        "--backend",
        choices=["srlm", "llama.cpp"],
        default="srlm",
        help="run the model in srlm's engine, or a .gguf in llama.cpp (needs llama-cpp-python)",
    )
    p.add_argument("--device", default=None, help="device for the model (default: the backend's choice)")
    p.add_argument("--dtype", default=None, help="model dtype (default: the backend's choice)")
    p.add_argument("--quantize", default=None, help="weight quantization for inference, if the backend supports it")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument(
        "--out", default=None, help="metrics JSON path (records go beside it as .jsonl); default PATH/eval-TASKS.json"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="evaluate even when the weights hold NaN or Inf (refused by default)",
    )


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


def output_path(args: argparse.Namespace) -> Path:
    """Where the metrics go, checked writable before any evaluation (see the module docstring)."""
    from srlm.atomic import check_writable

    if args.out:
        out = Path(args.out)
        check_writable(out.parent, "--out results")
        return out
    tasks = re.sub(r"[^\w.+-]+", "_", "+".join(t.strip() for t in args.task.split(",") if t.strip()))
    ckpt = Path(args.path)
    if not ckpt.is_dir():
        check_writable(Path.cwd(), "results")
        return Path(f"eval-{tasks}.json")
    try:
        check_writable(ckpt, "results")
        return ckpt / f"eval-{tasks}.json"
    except SrlmError as e:
        out = Path(f"eval-{ckpt.resolve().name}-{tasks}.json")
        check_writable(Path.cwd(), f"results (the checkpoint folder cannot take them either: {e})")
        print(f"srlm eval: {ckpt} is not writable; results will go to {out.resolve()}", file=sys.stderr)
        return out


def run(args: argparse.Namespace, backend=None) -> dict:
    """Evaluate as the command line says, write the results, print them; returns the results JSON."""
    if args.out and args.out.endswith(".jsonl"):
        raise SrlmError(f"--out {args.out}: give the metrics .json path; records are written beside it as .jsonl")
    default_data, per_task = parse_data(args.data)
    out = output_path(args)
    result = eval_run.evaluate(
        args.path,
        args.task,
        default_data,
        task_data=per_task,
        split=args.split,
        limit=args.limit,
        prompt=args.prompt,
        shots=args.shots,
        shot_data=args.shot_data,
        chat=args.chat,
        samples=args.samples,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        scoring=args.scoring,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        quantize=args.quantize,
        backend=backend,
        progress=not args.no_progress,
        allow_nonfinite=args.allow_nonfinite,
        revision=args.revision,
        engine=args.backend,
    )
    results = result.to_json()
    results["config"] = {
        "path": str(args.path),
        "task": args.task,
        "data": args.data,
        "split": args.split,
        "limit": args.limit,
        "prompt": args.prompt,
        "shots": args.shots,
        "shot_data": args.shot_data,
        "chat": args.chat,
        "samples": args.samples,
        "temperature": args.temperature,
        "max_new_tokens": args.max_new_tokens,
        "scoring": args.scoring,
        "seed": args.seed,
    }
    print(result.table(), flush=True)
    rec_path = eval_run.write_results(out, results, result.records)
    print(f"wrote {out} and {rec_path}", file=sys.stderr)
    for line in result.protocol_lines():
        print(line)
    return results


def main(args: argparse.Namespace) -> int:
    run(args)
    return 0
