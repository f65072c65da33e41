"""Process groups for training under `torchrun`: who am I, wrapping for DDP / FSDP2, sampling replicas.

Every "which rank am I" question in srlm asks `world_and_rank()` (or `is_main()`): the initialised
process group when there is one, else torchrun's environment (WORLD_SIZE, RANK), else (1, 0).

- `ProcessGroup`: the loop's handle: init (gloo on CPU, NCCL on GPU) and close, barrier, all_reduce.
- `device_for(config_device, group)`: the device a rank trains on.
- `wrap(model, group, device, fsdp)`: DDP, or FSDP2 `fully_shard` per layer and at the root.
- `SamplingPolicy`: the model a stage samples from while it trains (see its docstring).
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn as nn

from srlm.errors import SrlmError


def world_and_rank() -> tuple[int, int]:
    """(world size, rank): the initialised process group's, else torchrun's environment, else (1, 0)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process is rank 0 (the one that writes files and prints)."""
    return world_and_rank()[1] == 0


class ProcessGroup:
    def __init__(self):
        self.world, self.rank = world_and_rank()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.owns_group = False

    def init(self, device: torch.device) -> None:
        dist = torch.distributed
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.owns_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            torch.distributed.all_reduce(t)
        return t

    def close(self) -> None:
        if self.owns_group:
            torch.distributed.destroy_process_group()


def device_for(device: str, group: ProcessGroup) -> torch.device:
    """The device this rank trains on, from the config's `device` (cpu | cuda | auto)."""
    if device == "auto":
        return torch.device(f"cuda:{group.local_rank}" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SrlmError("device=cuda but no CUDA device is available; use device=cpu")
        return torch.device(f"cuda:{group.local_rank}")
    if device != "cpu":
        raise SrlmError(f"device={device!r}: use cpu, cuda or auto")
    return torch.device("cpu")


class LossModule(nn.Module):
    """Routes a stage's loss through forward(), so DDP/FSDP hooks see every micro-batch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, batch):
        return fn(self.model, batch)


def wrap(model: nn.Module, group: ProcessGroup, device: torch.device, fsdp: bool) -> nn.Module:
    """`LossModule(model)`, under DDP, or sharded by FSDP2 (each decoder layer, then the root)."""
    wrapped: nn.Module = LossModule(model)
    if group.enabled and fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(wrapped)
    elif group.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(wrapped, device_ids=[device.index] if device.type == "cuda" else None)
    return wrapped


class SamplingPolicy:
    """The model a stage samples from while it trains (GRPO's rollouts, on-policy distillation).

    Plainly the model itself. Under FSDP its parameters are shards that only the loop's wrapped
    forward gathers, and every rank would have to run the same forward passes in step (sampled
    lengths differ), so sampling runs on a plain replica, copied from the model before it is
    sharded and refreshed from the shards before each use (every rank gathers every tensor, in the
    same order).
    """

    def __init__(self, model: nn.Module | None, fsdp: bool):
        self.replica = copy.deepcopy(model).eval().requires_grad_(False) if fsdp and model is not None else None

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> nn.Module:
        if self.replica is None:
            return model
        from torch.distributed.tensor import DTensor

        # parameters, not state_dict(): inside the wrapped forward (on-policy distillation) the root's
        # parameters are gathered plain tensors, and FSDP's state-dict hooks would reshard them
        own = dict(self.replica.to(next(model.parameters()).device).named_parameters())
        for k, v in model.named_parameters():
            own[k].copy_(v.full_tensor() if isinstance(v, DTensor) else v)
        return self.replica
