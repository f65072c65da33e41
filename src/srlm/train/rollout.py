"""Sampling completions from the policy being trained, and padding them into training rows.

GRPO's rollouts and on-policy distillation both ask the same two things:
- `sample(policy, tokenizer, prompts, n=..., dtype=..., **sampling)`: completions from the engine with
  the policy in eval mode (no activation checkpointing or dropout while sampling), its training mode
  restored afterwards, decoded in bf16 when the trainer runs under bf16 autocast (as its forward
  does); returns the engine's groups, one list of `n` completions per prompt;
- `pad_rows(prompts, completions, pad_id)`: prompt + completion token rows right-padded to one
  length, with the mask of the positions whose *next* token is a completion token (what the
  loss supervises: mask[r, t] is True when ids[r, t + 1] was sampled).
"""

from __future__ import annotations

import torch

from srlm.data.collate import pad_right


@torch.no_grad()
def sample(policy, tokenizer, prompts: list[list[int]], dtype: torch.dtype | None = None, **generate_kwargs) -> list:
    """Completions of `prompts` by `policy` (see `srlm.infer.engine.Engine.generate` for the options);
    `dtype` the engine decodes in (torch.bfloat16 when the trainer runs under bf16 autocast)."""
    from srlm.infer.engine import Engine

    if not prompts:
        return []
    was_training = policy.training
    policy.eval()
    try:
        return Engine(policy, tokenizer, dtype=dtype).generate(prompts, **generate_kwargs)
    finally:
        policy.train(was_training)


def pad_rows(
    prompts: list[list[int]], completions: list[list[int]], pad_id: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [R, L], mask [R, L - 1]) for prompt + completion rows; see the module docstring."""
    ids = pad_right([list(p) + list(c) for p, c in zip(prompts, completions)], pad_id)
    mask = torch.zeros(ids.shape[0], ids.shape[1] - 1, dtype=torch.bool)
    for r, (p, c) in enumerate(zip(prompts, completions)):
        mask[r, len(p) - 1 : len(p) + len(c) - 1] = True
    return (ids, mask) if device is None else (ids.to(device), mask.to(device))
