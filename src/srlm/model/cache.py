"""A preallocated key/value cache for incremental decoding.

One tensor for K and one for V, shaped (layers, batch, kv_heads, max_len, head_dim),
filled left to right. All rows share one write position: batches of prompts of
different lengths are left-padded, and the attention mask (batch, filled length)
tells which slots hold real tokens. Writing into a preallocated buffer instead of
`torch.cat` keeps each decode step free of reallocation.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        shape = (num_layers, batch_size, num_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pos = 0  # slots filled so far (same for every row)

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int, dtype=None, device=None) -> "KVCache":
        c = model.config
        p = next(model.parameters())
        return cls(c.effective_layers, batch_size, c.num_key_value_heads, max_len, c.head_dim,
                   dtype=dtype or (p.dtype if p.is_floating_point() else torch.float32),
                   device=device or p.device)

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (batch, kv_heads, T, head_dim) at the current position; return all filled slots."""
        t = k.shape[2]
        end = self.pos + t
        if end > self.max_len:
            raise RuntimeError(f"KV cache overflow: {end} > {self.max_len} slots")
        # narrow() views instead of multi-axis slicing: fewer dispatched ops in the per-token hot loop
        kl, vl = self.k[layer], self.v[layer]
        kl.narrow(2, self.pos, t).copy_(k)
        vl.narrow(2, self.pos, t).copy_(v)
        return kl.narrow(2, 0, end), vl.narrow(2, 0, end)

    def advance(self, t: int) -> None:
        """Called once per forward pass, after every layer has written its `t` new slots."""
        self.pos += t

    def select(self, rows: torch.Tensor) -> None:
        """Keep only `rows` of the batch (drop finished rows, or repeat rows to fan a prompt out to n samples)."""
        self.k = self.k.index_select(1, rows)
        self.v = self.v.index_select(1, rows)


class SharedPrefix:
    """The keys and values of one prompt, kept in the autograd graph, for continuations that share it.

    Training-time prefix sharing (GRPO's G completions of one prompt): the prompt runs once with
    batch 1 and stores its K/V per layer; the continuations then run as one batch starting at
    position `pos`, each attending to the stored prompt K/V (expanded, not copied per row) and to
    its own tokens. Gradients reach the prompt's activations through both uses. Not for gradient
    checkpointing, whose recomputation of the prompt's layers would find the cache already shared.
    """

    def __init__(self):
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos == 0:  # the prompt's own pass
            self.k[layer], self.v[layer] = k, v
            return k, v
        b = k.shape[0]
        pk = self.k[layer].expand(b, -1, -1, -1)
        pv = self.v[layer].expand(b, -1, -1, -1)
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)

    def advance(self, t: int) -> None:
        self.pos += t
