"""The stage contract: what a training stage (pretrain, SFT, KD, GRPO) gives the shared loop.

A stage supplies the data and the loss; the loop (`srlm.train.loop`) owns everything else.
Stages subclass `Stage` and override `batches` and `loss`; the other methods have defaults.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterator, Protocol

import torch

from srlm.errors import SrlmError


class Stage(Protocol):
    #: the stage's kind, recorded in checkpoints ("sft", "grpo", ...)
    name: str

    def batches(self, start: int, micro_batch_size: int) -> Iterator[dict]:
        """An endless, deterministic stream of micro-batches of the *global* stream (every rank sees the
        same stream; the loop hands each rank its share), beginning at micro-batch `start` (the saved
        data position): this is how resume is exact."""
        ...

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, Any]]:
        """The loss *summed* over the batch's units (e.g. supervised tokens), and stats to log. The loop
        divides by the units of the whole optimizer step (all micro-batches, all ranks), so accumulation
        is exactly unit-weighted. `model` is the plain CausalLM (wrapped by DDP/FSDP outside)."""
        ...

    def weight(self, batch: dict) -> float:
        """Units of `batch`, the same on every rank (default: its supervised tokens, `num_tokens`)."""
        return float(batch["num_tokens"])

    def before_step(self, step: int, model) -> None:
        """Called on every rank before optimizer step `step` (GRPO samples its rollouts here)."""

    def validate(self, model) -> dict[str, float]:
        """Validation metrics (e.g. val loss), run under no_grad."""
        return {}

    def state_dict(self) -> dict:
        """Stage state saved in checkpoints (tensors and plain Python values)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""


def stage_module(stage: str):
    """The module of a stage kind (`srlm.train.sft`, ...): its `Config`, `run(config)` and recipe hooks."""
    try:
        return importlib.import_module(f"srlm.train.{stage}")
    except ModuleNotFoundError as e:
        if e.name == f"srlm.train.{stage}":
            raise SrlmError(f"stage {stage!r} is not available in this build of srlm") from None
        raise
