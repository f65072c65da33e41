"""A static-shape decode step for `torch.compile`.

`decode_step` feeds one token per row through the model's own modules, writing K/V at
a slot given as a tensor (`index_copy_`) and attending over the whole preallocated cache
under a boolean mask, so every step has the same shapes and the same graph: compiled
once per (rows, cache length), it runs without per-op Python overhead — what matters for
small models on CPU. `compiled_step()` returns the compiled function, or None where
compilation is impossible (no C++ compiler, an unsupported platform); the first call is
also guarded by the engine, which falls back to eager on any compile failure.
"""

from __future__ import annotations

import math
import shutil
import warnings

import torch

from srlm.model.transformer import apply_rope


def decode_step(model, tok: torch.Tensor, pos: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                mask: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """tok, pos (rows,); caches (layers, rows, kv, L, d); mask (rows, L) True = attend (slot included);
    slot: 1-element long tensor, the cache index written. Returns next-token logits (rows, vocab)."""
    inner = model.model
    cfg = model.config
    b = tok.shape[0]
    x = inner.embed_tokens(tok[:, None])
    cos, sin = inner.rotary_emb(x, pos[:, None])
    bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, float("-inf"))
    bias = bias[:, None, None, :]
    for i, layer in enumerate(inner.layers):
        attn = layer.self_attn
        h_, kv, d = attn.n_heads, attn.n_kv, attn.head_dim
        for r in range(cfg.layer_share):
            idx = i * cfg.layer_share + r
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(b, 1, h_, d)
            k = attn.k_proj(h).view(b, 1, kv, d)
            v = attn.v_proj(h).view(b, 1, kv, d).transpose(1, 2)
            if attn.q_norm is not None:
                q, k = attn.q_norm(q), attn.k_norm(k)
            q = apply_rope(q.transpose(1, 2), cos, sin)
            k = apply_rope(k.transpose(1, 2), cos, sin)
            kc, vc = k_cache[idx], v_cache[idx]
            kc.index_copy_(2, slot, k)
            vc.index_copy_(2, slot, v)
            qg = q.reshape(b, kv, h_ // kv, d)
            scores = torch.matmul(qg, kc.transpose(-1, -2)).float() * (1.0 / math.sqrt(d)) + bias
            probs = torch.softmax(scores, dim=-1).to(vc.dtype)
            out = torch.matmul(probs, vc).reshape(b, 1, h_ * d)
            x = x + attn.o_proj(out)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.lm_head(inner.norm(x))[:, 0]


_COMPILED = None


def compiled_step():
    """`torch.compile(decode_step)`, or None (with a warning) where it cannot work."""
    global _COMPILED
    if _COMPILED is not None:
        return _COMPILED
    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        warnings.warn("no C++ compiler found: torch.compile is unavailable, decoding runs eagerly", stacklevel=2)
        return None
    try:
        import torch._dynamo as dynamo

        # one graph per (model, rows, cache length): allow more than dynamo's default handful
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo.config, name):
                setattr(dynamo.config, name, max(getattr(dynamo.config, name), 64))
        _COMPILED = torch.compile(decode_step, dynamic=False)
    except Exception as e:  # e.g. an unsupported Python / platform
        warnings.warn(f"torch.compile is unavailable ({e}); decoding runs eagerly", stacklevel=2)
        return None
    return _COMPILED
