"""`srlm train STAGE [--config FILE] [--resume] [key=value ...]`: one stage, one command.

STAGE is pretrain | sft | kd | grpo; each maps to a module `srlm.train.<stage>` exposing a config
dataclass `Config` and `run(config, evaluate=None) -> dict`. Overrides are dotted YAML
scalars (`lr=3e-4 lora.rank=8 betas=[0.9,0.95]`). Under `torchrun --nproc-per-node N` the same
command trains with DDP (or FSDP2 with `fsdp=true`). With `eval_tasks` set, the eval harness
(imported here lazily: it sits above train) scores the model every `eval_every` steps.
"""

from __future__ import annotations

import argparse
import json

from srlm.errors import SrlmError
from srlm.train.stage import stage_module

STAGES = ("pretrain", "sft", "kd", "grpo")


def add_arguments(parser) -> None:
    parser.add_argument("stage", choices=STAGES, help="training stage")
    parser.add_argument("--config", help="YAML config (see src/srlm/recipes/*.yaml); optional")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir")
    # REMAINDER, so --resume / --config may also come after the overrides (picked out in main)
    parser.add_argument(
        "overrides", nargs=argparse.REMAINDER, metavar="key=value", help="config overrides, e.g. lr=3e-4 lora.rank=8"
    )


def make_evaluate(config):
    """An `evaluate(model, tokenizer, step) -> dict` over `config.eval_tasks` (greedy, zero-shot, test split), or None.

    Task options come from `data_options` when the task is one of the SFT sources (same
    difficulties for the held-out test split); chat models are prompted with their template.
    """
    if not config.eval_tasks:
        return None
    try:
        from srlm.data.tasks import get_task
        from srlm.eval.harness import evaluate as run_task
        from srlm.infer.backend import EngineBackend
        from srlm.infer.engine import Engine
    except ImportError as e:
        raise SrlmError(
            f"eval_tasks is set but the evaluation harness is unavailable ({e}); remove eval_tasks"
        ) from None
    sources = set(getattr(config, "data", []) or [])
    options = {k: v for k, v in (getattr(config, "data_options", {}) or {}).items() if k != "n_train"}
    tasks = {}
    for name in config.eval_tasks:
        opts = options if name in sources else {}
        data = opts.pop("data", None) if opts else None
        task = get_task(name, **opts)
        tasks[name] = (task, task.load(split="test", data=data, limit=config.eval_limit))

    def evaluate(model, tokenizer, step):
        backend = EngineBackend(Engine(model, tokenizer))
        flat = {}
        for name, (task, examples) in tasks.items():
            metrics, _ = run_task(task, examples, backend, shots=0, chat=tokenizer.has_chat_template, progress=False)
            flat.update({f"{name}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
        return flat

    return evaluate


def main(args) -> int:
    from srlm.train.config import load_config

    mod = stage_module(args.stage)
    overrides, config_file, rest = [], args.config, list(args.overrides)
    while rest:
        item = rest.pop(0)
        if item == "--resume":
            args.resume = True
        elif item == "--config" and rest:
            config_file = rest.pop(0)
        elif item.startswith("--config="):
            config_file = item.split("=", 1)[1]
        elif item.startswith("-") and "=" not in item:
            raise SrlmError(f"unknown option {item!r}; options are --config FILE and --resume, the rest key=value")
        else:
            overrides.append(item)
    if args.resume:
        overrides.append("resume=true")
    config = load_config(mod.Config, config_file, overrides)
    result = mod.run(config, evaluate=make_evaluate(config))

    from srlm.train.distributed import is_main

    if is_main():
        print(json.dumps(result))
    return 0
