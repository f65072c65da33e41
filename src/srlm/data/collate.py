"""Padding token rows into one batch tensor: the one helper every stage's collation uses."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_right(rows: Sequence[Sequence[int] | torch.Tensor], value: int, width: int | None = None) -> torch.Tensor:
    """A (len(rows), width) long tensor: each row at the left, `value` after it (width: the longest row)."""
    width = max((len(r) for r in rows), default=0) if width is None else width
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = r if torch.is_tensor(r) else torch.tensor(r, dtype=torch.long)
    return out
