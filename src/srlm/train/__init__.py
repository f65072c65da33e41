"""The training room: one shared loop (`loop.py`), one file per stage.

- `config.py`  YAML + dotted overrides -> config dataclasses (`TrainConfig` and each stage's subclass)
- `loop.py`    `train(config, model, tokenizer, stage, evaluate)`: optimizer, schedule, accumulation,
               checkpoints, exact resume, DDP/FSDP, logging. Stages supply `batches` and `loss`.
- `pretrain.py`, `sft.py`, `kd.py`, `grpo.py`: a config dataclass `Config` and `run(config, evaluate=None)`
- `lora.py`    LoRA layers, merging, PEFT-format adapters
- `losses.py`  distillation and GRPO losses
- `cli.py`     `srlm train STAGE [--config FILE] [key=value ...]`
Imports nothing above it (infer, eval, serve) at import time.
"""
