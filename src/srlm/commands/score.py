"""`srlm score --task NAME --data FILE --predictions FILE`: official metrics for predictions made elsewhere
(the formats are described in `srlm.eval.score`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from srlm.data.tasks import get_task
from srlm.eval.score import score


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="task name, e.g. squad2, glue-mrpc, gsm8k, math500")
    p.add_argument("--data", required=True, help="the gold data file or folder, in the official format")
    p.add_argument("--predictions", required=True, help="the predictions file (format depends on the task; see --help)")
    p.add_argument("--split", default=None, help="split of --data when it is a folder (default: the task's)")
    p.add_argument(
        "--prompt",
        default=None,
        help="the prompt template the predictions were made with, where extraction depends on it "
        "(gsm8k: gsm8k, gsm8k_cot, chat, chat-boxed, question; default gsm8k)",
    )
    p.add_argument("--allow-missing", action="store_true", help="score examples without a prediction as wrong")
    p.add_argument("--out", default=None, help="also write the metrics as JSON here")


def main(args: argparse.Namespace) -> int:
    from srlm.eval.run import clean_json, format_table

    task = get_task(args.task)
    task = task.with_prompt(args.prompt or task.default_prompt(False))
    split = args.split or task.default_split
    examples = task.load(split=split, data=args.data)
    metrics, _ = score(task, examples, args.predictions, allow_missing=args.allow_missing)
    print(format_table({task.name: metrics}))
    for metric, meaning in task.protocol()["metrics"].items():
        print(f"  {task.name} {metric}: {meaning}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps(clean_json({"task": task.name, "prompt": task.prompt.name, "metrics": metrics}), indent=2) + "\n"
        )
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
