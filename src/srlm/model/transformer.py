"""The decoder: Llama / Qwen2 / Qwen3 in plain PyTorch, with Hugging Face's module names.

`CausalLM(config)` has exactly the parameter names of transformers'
`LlamaForCausalLM` / `Qwen2ForCausalLM` / `Qwen3ForCausalLM` (`model.embed_tokens`,
`model.layers.N.self_attn.q_proj`, `mlp.gate_proj`, `model.norm`, `lm_head`), so
state dicts and PEFT adapters move without renaming.

- `model(input_ids, position_ids=None, attention_mask=None, kv_cache=None) -> logits`
  `attention_mask` (batch, past + new) marks real tokens (1) and padding (0) over
  every key position, cache included. Without `position_ids` positions count from
  the cache position, as in transformers.
- `model.loss(input_ids, labels, ...)`: next-token cross-entropy with labels
  masked at -100; logits are computed only for supervised positions, in chunks,
  and recomputed in backward, so memory does not scale with vocab x sequence.
- Block-wise layer sharing (`config.layer_share`, MobileLLM-LS): each stored
  block runs `layer_share` times in a row; each run has its own cache slot.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from srlm.model.cache import KVCache, SharedPrefix
from srlm.model.config import ModelConfig


class RMSNorm(nn.Module):
    """x / rms(x) * (offset + weight); `offset` is the family's `norm_offset` (0, or 1 for Gemma-style)."""

    def __init__(self, dim: int, eps: float, offset: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), 1.0 - offset))
        self.variance_epsilon = eps
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in fp32 and scale in the input dtype, exactly as transformers does
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        if self.offset:
            return (x * (self.offset + self.weight.float())).to(dtype)
        return self.weight * x.to(dtype)


ACT_FNS = {"silu": F.silu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    rs = config.rope_scaling or {}
    kind = config.rope_type
    if kind == "linear":
        inv_freq = inv_freq / float(rs["factor"])
    elif kind == "llama3":
        factor = float(rs["factor"])
        low, high = float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        old_len = float(rs["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


class RotaryEmbedding(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        # on the meta device (a model built to receive loaded weights) a placeholder: the loader recomputes it,
        # and computing it there would go through torch._refs (see Model.__init__)
        meta = torch.get_default_device().type == "meta"
        inv = torch.empty(config.head_dim // 2) if meta else rope_inv_freq(config)
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[:, :, None].float() * self.inv_freq.float()[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str = "half") -> torch.Tensor:
    """Rotary embedding of x (b, heads, t, d) with cos/sin (b, t, d) in the "half" layout; "interleaved"
    rotates neighbouring pairs (cos/sin repeated per pair)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    if layout == "interleaved":
        half = cos.shape[-1] // 2
        cos = cos[..., :half].repeat_interleave(2, dim=-1)
        sin = sin[..., :half].repeat_interleave(2, dim=-1)
        return x * cos + _rotate_pairs(x) * sin
    return x * cos + _rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        h, kv, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        t = config.traits
        self.n_heads, self.n_kv, self.head_dim, self.rope = h, kv, d, t.rope
        self.q_proj = nn.Linear(config.hidden_size, h * d, bias=t.qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, kv * d, bias=t.qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, kv * d, bias=t.qkv_bias)
        self.o_proj = nn.Linear(h * d, config.hidden_size, bias=t.o_bias)
        if t.qk_norm:
            self.q_norm = RMSNorm(d, config.rms_norm_eps, t.norm_offset)
            self.k_norm = RMSNorm(d, config.rms_norm_eps, t.norm_offset)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, cos, sin, mask, kv_cache: KVCache | None, cache_layer: int):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), cos, sin, self.rope)
        k = apply_rope(k.transpose(1, 2), cos, sin, self.rope)
        if kv_cache is not None:
            k, v = kv_cache.update(cache_layer, k, v)
        if t == 1 and kv_cache is not None:
            out = _decode_attention(q, k, v, mask)
        else:
            # mask None means plain causal attention with no cache: the fused causal kernel is fastest
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=self.n_kv != self.n_heads
            )
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


def _decode_attention(q, k, v, mask):
    """One query token against the cache: grouped matmuls, no repeat of K/V for GQA.

    Plain matmuls beat the fused kernel's fixed overhead at a single query on CPU.
    """
    b, h, _, d = q.shape
    kv = k.shape[1]
    g = h // kv
    qg = q.view(b, kv, g, d)
    scores = torch.matmul(qg, k.transpose(-1, -2)) * (1.0 / math.sqrt(d))  # (b, kv, g, L)
    if mask is not None:
        scores = scores.masked_fill(~mask.view(b, 1, 1, -1), float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    return torch.matmul(probs, v).view(b, h, 1, d)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        bias = config.mlp_bias
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.act = ACT_FNS[config.traits.activation]

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        off = config.traits.norm_offset
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, off)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, off)

    def forward(self, x, cos, sin, mask, kv_cache, cache_layer):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache, cache_layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Model(nn.Module):
    """The decoder stack (HF's `model.` prefix)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        shape = (config.vocab_size, config.hidden_size)
        # built on the meta device to receive loaded weights: no init, since nn.Embedding's normal_ goes
        # through torch._refs there, which imports torch._dynamo (~1 s of every command's start-up)
        meta = torch.get_default_device().type == "meta"
        self.embed_tokens = nn.Embedding(*shape, _weight=torch.empty(shape) if meta else None)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config.traits.norm_offset)
        self.embed_scale = math.sqrt(config.hidden_size) if config.traits.scale_embeddings else None
        self.rotary_emb = RotaryEmbedding(config)
        self.gradient_checkpointing = False

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        return x if self.embed_scale is None else x * torch.tensor(self.embed_scale, dtype=x.dtype)

    def forward(self, input_ids, position_ids=None, attention_mask=None, kv_cache: KVCache | None = None):
        b, t = input_ids.shape
        past = kv_cache.pos if kv_cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=input_ids.device).unsqueeze(0).expand(b, t)
        x = self.embed(input_ids)
        cos, sin = self.rotary_emb(x, position_ids)
        mask = build_mask(attention_mask, b, t, past, input_ids.device, decode=kv_cache is not None and t == 1)
        share = self.config.layer_share
        for i, layer in enumerate(self.layers):
            for r in range(share):
                idx = i * share + r
                if self.gradient_checkpointing and self.training:
                    x = checkpoint(layer, x, cos, sin, mask, kv_cache, idx, use_reentrant=False)
                else:
                    x = layer(x, cos, sin, mask, kv_cache, idx)
        if kv_cache is not None:
            kv_cache.advance(t)
        return self.norm(x)


def build_mask(attention_mask, b, t, past, device, decode: bool):
    """Boolean mask, True = attend. None means causal attention over unpadded rows with no cache."""
    total = past + t
    if decode:
        # one query at the newest position: only padding matters; shape (b, total)
        return None if attention_mask is None else attention_mask[:, :total].bool()
    causal = torch.ones(t, total, dtype=torch.bool, device=device).tril(diagonal=past)
    if attention_mask is None:
        return causal[None, None] if past else None
    if attention_mask.shape != (b, total):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(b, total)} "
            f"(batch, cached + new tokens)"
        )
    mask = causal[None, None] & attention_mask.bool()[:, None, None, :]
    # a padding query attends to nothing; let it attend everywhere so softmax stays finite (its output is ignored)
    return mask | ~mask.any(dim=-1, keepdim=True)


class CausalLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.reset_parameters()
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def reset_parameters(self):
        if self.lm_head.weight.is_meta:  # built to receive loaded weights: nothing to draw
            return
        std = self.config.initializer_range
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
            elif isinstance(m, RMSNorm):
                nn.init.constant_(m.weight, 1.0 - m.offset)

    def forward(
        self,
        input_ids,
        position_ids=None,
        attention_mask=None,
        kv_cache: KVCache | None = None,
        logits_to_keep: int = 0,
    ):
        """Logits (batch, T, vocab); with `logits_to_keep=k > 0`, only the last k positions."""
        h = self.model(input_ids, position_ids, attention_mask, kv_cache)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        return self.lm_head(h)

    def hidden_states(self, input_ids, position_ids=None, attention_mask=None):
        """Final normed hidden states (batch, T, hidden): for losses that apply `lm_head` themselves."""
        return self.model(input_ids, position_ids, attention_mask)

    def shared_prefix_hidden_states(self, prefix_ids: torch.Tensor, suffix_ids: torch.Tensor):
        """Hidden states of `prefix_ids` (1, P) followed by each row of `suffix_ids` (G, S), with the
        prefix computed once: ((1, P, hidden), (G, S, hidden)), equal to `hidden_states` of the G
        concatenated rows. Right padding in `suffix_ids` is harmless (causal attention). Not with
        gradient checkpointing (see `SharedPrefix`)."""
        if self.model.gradient_checkpointing and self.training:
            raise ValueError("shared_prefix_hidden_states does not support gradient checkpointing")
        if prefix_ids.shape[0] != 1:
            raise ValueError(f"prefix_ids must be one row, got shape {tuple(prefix_ids.shape)}")
        cache = SharedPrefix()
        h_prefix = self.model(prefix_ids, kv_cache=cache)
        return h_prefix, self.model(suffix_ids, kv_cache=cache)

    def loss(
        self,
        input_ids,
        labels,
        position_ids=None,
        attention_mask=None,
        reduction: str = "mean",
        chunk_size: int | None = None,
    ):
        """Next-token cross-entropy; `labels` aligned with `input_ids` (shifted here), -100 = ignore.

        reduction "mean" averages over supervised tokens; "sum" returns the sum, for exact
        averaging across gradient-accumulation micro-batches.
        """
        h = self.model(input_ids, position_ids, attention_mask)
        targets = labels[:, 1:]
        keep = targets != -100
        if keep.all():  # pretraining-style: every position supervised, no gather (and no scatter in backward)
            h, targets = h[:, :-1].reshape(-1, h.shape[-1]), targets.reshape(-1)
        else:
            h, targets = h[:, :-1][keep], targets[keep]
        total = chunked_cross_entropy(h, self.lm_head.weight, targets, chunk_size)
        if reduction == "sum":
            return total
        return total / targets.numel() if targets.numel() else total

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _ce_chunk(h, targets, weight):
    logits = F.linear(h, weight).float()
    return F.cross_entropy(logits, targets, reduction="sum")


#: fp32 logits up to this size are computed in one piece and kept for backward; past it they are
#: computed in chunks, each recomputed in backward (a small vocabulary then costs no recompute)
LOGITS_BUDGET_BYTES = 64 * 2**20


def logit_chunk_rows(vocab_size: int, min_rows: int = 1024) -> int:
    """Rows of logits per chunk: the budget's worth, and never fewer than `min_rows`."""
    return max(min_rows, LOGITS_BUDGET_BYTES // (4 * max(1, vocab_size)))


def over_row_chunks(fn, rows: tuple, rest: tuple, chunk_size: int) -> list:
    """[fn(*row slices, *rest)] over consecutive slices of `chunk_size` rows of every tensor in `rows`.

    The one loop behind every loss that makes logits (cross-entropy, GRPO's log-probs,
    distillation): with more than one chunk under autograd each call is checkpointed, so only one
    chunk's logits exist at a time (and are recomputed in backward); one chunk runs plainly.
    """
    n = rows[0].shape[0]
    grad = (
        n > chunk_size
        and torch.is_grad_enabled()
        and any(torch.is_tensor(t) and t.requires_grad for t in (*rows, *rest))
    )
    out = []
    for s in range(0, n, chunk_size):
        args = (*(r[s : s + chunk_size] for r in rows), *rest)
        out.append(checkpoint(fn, *args, use_reentrant=False) if grad else fn(*args))
    return out


def chunked_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int | None = None):
    """Sum of cross-entropy over rows of `h` (N, hidden), computing logits `chunk_size` rows at a time
    (default: `logit_chunk_rows` of the vocabulary; see `over_row_chunks`)."""
    if h.shape[0] == 0:
        return h.sum() * 0.0
    parts = over_row_chunks(_ce_chunk, (h, targets), (weight,), chunk_size or logit_chunk_rows(weight.shape[0]))
    return sum(parts[1:], parts[0])
