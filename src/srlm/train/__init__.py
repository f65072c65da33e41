"""The training room: one shared loop (`loop.py`), one file per stage.

- `config.py`  YAML + dotted overrides -> config dataclasses (`TrainConfig` and each stage's subclass)
- `loop.py`    `train(config, model, tokenizer, stage, evaluate)`: optimizer, schedule, accumulation,
               checkpoints, exact resume, DDP/FSDP, logging. Stages supply `batches` and `loss`.
- `checkpointing.py`  a run's files: checkpoints written, verified (manifest checksums), rotated and
               chosen for resume (falling back past damaged ones); `metrics.jsonl` kept in step with them
- `pretrain.py`, `sft.py`, `kd.py`, `grpo.py`: a config dataclass `Config` and `run(config, evaluate=None)`
- `lora.py`    LoRA layers, merging, PEFT-format adapters
- `losses.py`  distillation and GRPO losses
- `cli.py`     `srlm train STAGE [--config FILE] [key=value ...]`
Imports nothing above it (infer, eval, serve) at import time.
"""
