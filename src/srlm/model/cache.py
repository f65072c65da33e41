"""A preallocated key/value cache for incremental decoding.

One tensor for K and one for V, shaped (layers, batch, kv_heads, max_len, head_dim),
filled left to right. All rows share one write position: batches of prompts of
different lengths are left-padded, and the attention mask (batch, filled length)
tells which slots hold real tokens. Writing into a preallocated buffer instead of
`torch.cat` keeps each decode step free of reallocation.

A running batch that rows join and leave (continuous batching, srlm.infer.batch) keeps
every row's tokens right-aligned at the shared write position: `extend` appends the
rows of another cache (a fresh prefill) aligned that way, and `realign` moves the
write position (room for a longer prompt on the left, or slots no row uses dropped).
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        shape = (num_layers, batch_size, num_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pos = 0  # slots filled so far (same for every row)

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int, dtype=None, device=None) -> "KVCache":
        c = model.config
        p = next(model.parameters())
        return cls(
            c.effective_layers,
            batch_size,
            c.num_key_value_heads,
            max_len,
            c.head_dim,
            dtype=dtype or (p.dtype if p.is_floating_point() else torch.float32),
            device=device or p.device,
        )

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

    def extend(self, other: KVCache) -> None:
        """Append the rows of `other`, their filled slots right-aligned to end at this cache's write position.

        The slots before them in the new rows are zeros, to be masked out by the caller; `other.pos`
        must not exceed `self.pos` (`realign` first to make room).
        """
        n = other.pos
        if n > self.pos:
            raise ValueError(f"cannot right-align {n} filled slots at write position {self.pos}: realign first")
        shape = list(other.k.shape)
        shape[3] = self.max_len
        k = other.k.new_zeros(shape, dtype=self.k.dtype)
        v = other.v.new_zeros(shape, dtype=self.v.dtype)
        k.narrow(3, self.pos - n, n).copy_(other.k.narrow(3, 0, n))
        v.narrow(3, self.pos - n, n).copy_(other.v.narrow(3, 0, n))
        self.k = torch.cat([self.k, k], dim=1)
        self.v = torch.cat([self.v, v], dim=1)

    def realign(self, pos: int, max_len: int | None = None) -> None:
        """Move the write position to `pos` (and the capacity to `max_len`), keeping the slots just before it.

        The last min(self.pos, pos) filled slots move so that they end at `pos`; with `pos` below
        `self.pos` the leftmost slots are dropped, so the caller must know that no row uses them.
        New slots on the left are zeros.
        """
        max_len = self.max_len if max_len is None else max_len
        if pos > max_len:
            raise ValueError(f"write position {pos} beyond a capacity of {max_len} slots")
        keep = min(self.pos, pos)
        shape = list(self.k.shape)
        shape[3] = max_len
        k, v = self.k.new_zeros(shape), self.v.new_zeros(shape)
        k.narrow(3, pos - keep, keep).copy_(self.k.narrow(3, self.pos - keep, keep))
        v.narrow(3, pos - keep, keep).copy_(self.v.narrow(3, self.pos - keep, keep))
        self.k, self.v, self.pos = k, v, pos


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
