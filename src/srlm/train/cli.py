"""`srlm train STAGE [--config FILE] [--resume] [key=value ...]`: one stage, one command.

STAGE is pretrain | sft | kd | grpo; each maps to a module `srlm.train.<stage>` exposing a config
dataclass `Config` and `run(config, evaluate=None) -> dict`. Overrides are dotted YAML
scalars (`lr=3e-4 lora.rank=8 betas=[0.9,0.95]`). Under `torchrun --nproc-per-node N` the same
command trains with DDP (or FSDP2 with `fsdp=true`). With `eval_tasks` set, the eval harness
(imported here lazily: it sits above train) scores the model every `eval_every` steps.
"""

from __future__ import annotations

import importlib
import json

from srlm.errors import SrlmError

STAGES = ("pretrain", "sft", "kd", "grpo")


def add_arguments(parser) -> None:
    parser.add_argument("stage", choices=STAGES, help="training stage")
    parser.add_argument("--config", help="YAML config (see src/srlm/recipes/*.yaml); optional")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. lr=3e-4 lora.rank=8")


def stage_module(stage: str):
    try:
        return importlib.import_module(f"srlm.train.{stage}")
    except ModuleNotFoundError as e:
        if e.name == f"srlm.train.{stage}":
            raise SrlmError(f"stage {stage!r} is not available in this build of srlm") from None
        raise


def make_evaluate(config):
    """An `evaluate(model, tokenizer, step) -> dict` over `config.eval_tasks`, or None."""
    if not config.eval_tasks:
        return None
    try:
        harness = importlib.import_module("srlm.eval.harness")
    except ModuleNotFoundError:
        raise SrlmError("eval_tasks is set but srlm.eval is not available; remove eval_tasks") from None
    fn = getattr(harness, "evaluate_model", None)
    if fn is None:
        raise SrlmError("eval_tasks is set but srlm.eval.harness has no evaluate_model(model, tokenizer, tasks, limit); "
                        "remove eval_tasks or update srlm")

    def evaluate(model, tokenizer, step):
        results = fn(model, tokenizer, config.eval_tasks, limit=config.eval_limit)
        flat = {}
        for task, metrics in results.items():
            for k, v in (metrics.items() if isinstance(metrics, dict) else [("score", metrics)]):
                if isinstance(v, (int, float)):
                    flat[f"{task}/{k}"] = v
        return flat

    return evaluate


def main(args) -> int:
    from srlm.train.config import load_config

    mod = stage_module(args.stage)
    overrides = list(args.overrides)
    if args.resume:
        overrides.append("resume=true")
    config = load_config(mod.Config, args.config, overrides)
    result = mod.run(config, evaluate=make_evaluate(config))
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))
    return 0
