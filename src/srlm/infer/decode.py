"""Decode steps: one token per row through the model, without the training-shaped detours.

`FusedDecoder` is the engine's eager step. A small model on CPU spends most of a decode
step dispatching ops (a generic forward is ~250 aten calls per layer), so the step runs
on weights re-arranged once per generate call: q/k/v and gate/up concatenated into one
matmul each, the RMSNorm weights folded into the following matmul, 1/sqrt(head_dim)
folded into q, a cos/sin table indexed by position, one rotary pass over q and k
together, and residual adds fused into the matmul — about 30 calls per layer. On CPU the
fused weights are held in oneDNN's blocked layout (see PACKED_DTYPES). The re-arranged
weights are rebuilt whenever a parameter changes (a trainer's in-place updates bump tensor
versions), so GRPO's policy always samples from its current weights; they can be cast to a
compute dtype of their own (`FusedDecoder(model, dtype)`: an fp32 policy sampled in bf16).

Prompts prefill through the same weights (`FusedDecoder.prefill`, `prefill`): left-padded
prompts run ragged, only their real tokens through the matmuls.

There is one decode step: this one, or the model's own forward for what it does not implement
(see `FusedDecoder.IMPLEMENTS`). A `torch.compile`d static-shape step was tried and measured slower
than this eager step on the CPUs here, so it was removed.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from srlm.infer.quant import UPCAST_MIN_ROWS, Int4Linear, Int8Linear, UpcastLinear, upcast_linear
from srlm.model.cache import KVCache
from srlm.model.transformer import ACT_FNS, build_mask, rope_inv_freq


def _plain_kind(m: nn.Module) -> str | None:
    """ "plain" for a Linear whose forward is x @ W.T + b, "lora" for srlm's LoRALinear (W + scale * B @ A),
    None for anything else (int8, sharded or custom layers), which then runs through its own forward."""
    if not isinstance(m, nn.Linear) or type(m.weight) not in (nn.Parameter, torch.Tensor):
        return None
    if type(m) is nn.Linear or getattr(type(m), "fusable", False):
        return "plain"
    if callable(getattr(m, "delta", None)) and type(m).forward is not nn.Linear.forward:
        return "lora"
    return None


def _plain_weight(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) of a Linear whose forward is x @ W.T + b, LoRA merged; None for other layers."""
    kind = _plain_kind(m)
    if kind == "lora":
        return m.weight + m.delta().to(m.weight.dtype), m.bias
    return (m.weight, m.bias) if kind == "plain" else None


class _Proj:
    """Several Linears that read the same input, as one matmul when they are plain (else one call each).

    `col_scale` (the preceding RMSNorm's weight) is folded into the fused weight's columns and
    `row_scale` (per output feature) into its rows; unfused layers get them applied around the call.
    """

    def __init__(
        self,
        mods: list[nn.Module],
        col_scale: torch.Tensor | None = None,
        row_scale: torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
    ):
        plain = [_plain_weight(m) for m in mods]
        self.mods, self.col_scale, self.row_scale = mods, col_scale, row_scale
        self._casts: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        # bf16 on a CPU without native bf16: many-row matmuls in fp32, as the layers themselves do
        self.linear = upcast_linear if all(isinstance(m, UpcastLinear) for m in mods) else F.linear
        self.weight = self.bias = self.weight_t = self.packed = None
        if all(p is not None for p in plain):
            w = torch.cat([p[0] for p in plain]) if len(plain) > 1 else plain[0][0]
            if col_scale is not None or row_scale is not None:  # scaled in fp32, rounded once
                wf = w.float()
                if col_scale is not None:
                    wf = wf * col_scale.float()[None, :]
                if row_scale is not None:
                    wf = wf * row_scale.float()[:, None]
                w = wf.to(w.dtype)
            self.weight = w.detach().to(dtype or w.dtype)
            if any(p[1] is not None for p in plain):
                b = torch.cat([p[1] if p[1] is not None else w.new_zeros(m.out_features) for p, m in zip(plain, mods)])
                b = b * row_scale.to(b.dtype) if row_scale is not None else b
                self.bias = b.detach().to(self.weight.dtype)
        self.q8 = None
        if (
            self.weight is None
            and all(isinstance(m, Int8Linear) and m.fast for m in mods)
            and len({m.compute_dtype for m in mods}) == 1
        ):
            # int8 layers fuse too: per-output-channel scales concatenate, and absorb row_scale
            cd = mods[0].compute_dtype
            sc = torch.cat([m.scales.float() for m in mods])
            bias = None
            if any(m.bias is not None for m in mods):
                bias = torch.cat([m.bias.float() if m.bias is not None else sc.new_zeros(m.out_features) for m in mods])
            if row_scale is not None:
                sc, bias = sc * row_scale.float(), None if bias is None else bias * row_scale.float()
            self.q8 = (torch.cat([m.weight for m in mods]).contiguous(), sc.to(cd), bias, cd)
        self.q4 = None
        if (
            self.weight is None
            and all(isinstance(m, Int4Linear) for m in mods)
            and len({m.group_size for m in mods}) == 1
        ):
            # int4 layers fuse as well: packed rows and (groups, out, 2) scales/zeros concatenate by output,
            # and row_scale scales both the scale and the zero of its rows
            sz = torch.cat([m.scales_and_zeros.float() for m in mods], dim=1)
            bias = None
            if any(m.bias is not None for m in mods):
                bias = torch.cat([m.bias.float() if m.bias is not None else sz.new_zeros(m.out_features) for m in mods])
            if row_scale is not None:
                sz = sz * row_scale.float()[None, :, None]
                bias = None if bias is None else bias * row_scale.float()
            w = torch.cat([m.weight for m in mods]).contiguous()
            self.q4 = (w, sz.to(mods[0].scales_and_zeros.dtype), bias, mods[0].group_size)

    def pack(self) -> bool:
        """Also hold the fused weight in oneDNN's blocked layout (see PACKED_DTYPES); False where this
        torch cannot."""
        try:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.contiguous(), None)
        except (RuntimeError, AttributeError):
            return False
        return True

    @property
    def fused(self) -> bool:
        """Whether the layers run as one matmul on a fused weight (else each layer's own forward)."""
        return self.weight is not None or self.packed is not None

    def _use_packed(self, x: torch.Tensor) -> bool:
        return self.packed is not None and (self.weight_t is None or x.shape[0] > TRANSPOSED_MAX_ROWS)

    def keep_transposed(self) -> None:
        """Hold the fused weight as (in, out), contiguous, and compute x @ W_t (see TRANSPOSE_MAX_BYTES)."""
        self.weight_t = self.weight.t().contiguous()
        self.weight = self.weight_t.t()  # a view: a fused copy is not kept twice

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_packed(x):
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        if self.weight_t is not None:
            return torch.mm(x, self.weight_t) if self.bias is None else torch.addmm(self.bias, x, self.weight_t)
        if self.weight is not None:
            return self.linear(x, self.weight, self.bias)
        if self.col_scale is not None:
            x = x * self._cast("col_scale", self.col_scale, x.dtype)
        # the quantized kernels: casts only where the dtypes differ (a no-op .to() still costs a dispatch)
        if self.q8 is not None and x.dim() == 2 and x.shape[0] <= Int8Linear.KERNEL_MAX_ROWS:
            w, sc, bias, cd = self.q8
            return self._restore(
                torch.ops.aten._weight_int8pack_mm(x if x.dtype == cd else x.to(cd), w, sc), bias, x.dtype
            )
        if self.q4 is not None and x.dim() == 2:
            w, sz, bias, group = self.q4
            xb = x if x.dtype == torch.bfloat16 and x.is_contiguous() else x.to(torch.bfloat16).contiguous()
            return self._restore(torch.ops.aten._weight_int4pack_mm_for_cpu(xb, w, group, sz), bias, x.dtype)
        out = torch.cat([m(x) for m in self.mods], dim=-1) if len(self.mods) > 1 else self.mods[0](x)
        return out * self._cast("row_scale", self.row_scale, out.dtype) if self.row_scale is not None else out

    def _cast(self, name: str, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`t`, one of this projection's constant tensors (`name`), in `dtype`: cast once, not on every call."""
        if t.dtype == dtype:
            return t
        out = self._casts.get((name, dtype))
        if out is None:
            out = self._casts[(name, dtype)] = t.to(dtype)
        return out

    def _restore(self, out: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """A quantized kernel's output in the step's dtype, plus the bias."""
        out = out if out.dtype == dtype else out.to(dtype)
        return out if bias is None else out + self._cast("bias", bias, dtype)

    def add_into(self, x: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        """x + self(inp), one addmm (or one packed matmul with the add fused) when fused (2-D x and inp)."""
        if self._use_packed(inp):
            return torch.ops.mkldnn._linear_pointwise.binary(inp, x, self.packed, self.bias, "add")
        if (
            self.weight is not None
            and self.bias is None
            and (self.linear is F.linear or inp.shape[0] < UPCAST_MIN_ROWS)
        ):
            return torch.addmm(x, inp, self.weight.t() if self.weight_t is None else self.weight_t)
        return x + self(inp)


#: fused fp32 weights up to this size (small models, whose decode steps are mostly few-row matmuls)
#: are kept transposed, (in, out) contiguous, for x @ W_t: on the 2-core AVX2 machine (MKL, one
#: thread, all projections of a 3M-parameter model) that takes 0.6x the time of F.linear(x, W) at
#: 1 row and 0.8-0.9x at 4-64 rows; whole `generate` calls of 32 tokens ran 15% (1 row) and 5%
#: (4 rows) faster
TRANSPOSE_MAX_BYTES = 256 << 20


#: fused weights of these dtypes are also held in oneDNN's blocked layout on CPU (`_Proj.pack`): a matmul
#: then skips the weight reorder that F.linear pays on every call. It is much faster for the weights of
#: 100M+ models, in fp32 too (see the README's speed section); for small fp32 models the transposed copy
#: below is still faster at a row or two, so they keep both.
PACKED_DTYPES = (torch.float32, torch.bfloat16)

#: few-row calls use the transposed fp32 copy where one is kept; more rows use the packed weight
TRANSPOSED_MAX_ROWS = 2

#: bf16 models on CPU keep the KV cache of batches up to this many rows in float32 (`cache_dtype`): at
#: 32 rows of the 0.5B shape a rollout was slower so (its prefill's attention then runs in fp32)
FP32_CACHE_MAX_ROWS = 8


class FusedDecoder:
    """One decode step for a `CausalLM`, on re-arranged weights (see the module docstring).

    `step(tok, pos, cache, bias)`: tok, pos (rows,) long; `cache` a KVCache whose next slot
    is `cache.pos` (in the step's dtype, or float32: see `cache_dtype`); `bias` None or a float
    (rows, >= cache.pos + 1) additive mask (0 attend, -inf padding). Writes the new K/V, advances
    the cache and returns logits (rows, vocab).

    RMSNorm runs as x * rsqrt(|x|^2 + D eps), one vector norm and three cheap ops, with
    sqrt(D) and the norm's weight folded into the next matmul; rotary embedding is one
    batched matmul by a per-row (head_dim x head_dim) rotation built once per step.
    """

    def __init__(self, model, dtype: torch.dtype | None = None):
        self.model = model
        self.cast = dtype  # compute in this dtype instead of the weights' (see `compute_dtype`)
        c = model.config
        self.n_heads, self.n_kv, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.hidden = c.hidden_size
        self.inter = c.intermediate_size
        self.eps = c.rms_norm_eps
        self.share = c.layer_share
        t = c.traits
        self.norm_offset, self.act = t.norm_offset, ACT_FNS[t.activation]
        self.embed_scale = math.sqrt(c.hidden_size) if t.scale_embeddings else None
        self._key = None
        self._rope = None

    #: trait values this step implements (see srlm.model.config.Traits); a model with any other value
    #: is refused, with a one-time warning, and decodes through its own forward instead
    IMPLEMENTS = {"rope": ("half",), "activation": tuple(ACT_FNS)}
    _warned: set = set()

    @classmethod
    def unsupported_traits(cls, config) -> list[str]:
        t = config.traits
        return [f"{k}={getattr(t, k)!r}" for k, ok in cls.IMPLEMENTS.items() if getattr(t, k) not in ok]

    @classmethod
    def supported(cls, model) -> bool:
        inner = getattr(model, "model", None)
        if not (
            inner is not None
            and hasattr(inner, "layers")
            and isinstance(getattr(inner, "embed_tokens", None), nn.Embedding)
            and all(type(p) in (nn.Parameter, torch.Tensor) for p in model.parameters())
        ):
            return False
        refused = cls.unsupported_traits(model.config)
        if refused:
            key = (model.config.model_type, tuple(refused))
            if key not in cls._warned:
                cls._warned.add(key)
                warnings.warn(
                    f"the fused decode step does not implement {', '.join(refused)} "
                    f"({model.config.model_type}); decoding through the model's own forward",
                    stacklevel=2,
                )
            return False
        return True

    @staticmethod
    def compute_dtype(model, dtype: torch.dtype | None = None) -> torch.dtype:
        """The dtype a step computes in: `dtype` where every projection is a plain (fusable) float layer
        that can be cast to it (a trainer's fp32 policy sampled in bf16), else the weights' own."""
        own = model.model.embed_tokens.weight.dtype
        own = own if own.is_floating_point else torch.float32
        if dtype is None or dtype == own:
            return own
        projs = [model.lm_head]
        for layer in model.model.layers:
            a, mlp = layer.self_attn, layer.mlp
            projs += [a.q_proj, a.k_proj, a.v_proj, a.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        if all(_plain_kind(m) is not None and m.weight.is_floating_point() for m in projs):
            return dtype
        return own

    def cache_dtype(self, rows: int) -> torch.dtype:
        """The KV cache's dtype for a batch of `rows`: float32 for a few bf16 rows on CPU, whose attention
        matmuls are then 2-3x faster (oneDNN's bf16 batched matmul has a high fixed cost at these sizes;
        see the README's speed section), else the step's own dtype."""
        if self.dtype == torch.bfloat16 and self.embed.device.type == "cpu" and rows <= FP32_CACHE_MAX_ROWS:
            return torch.float32
        return self.dtype

    def _version(self):
        return tuple((p.data_ptr(), p._version) for p in self.model.parameters())

    @torch.no_grad()
    def refresh(self, max_len: int) -> None:
        """(Re)build the fused weights when any parameter changed, and the rotary table up to `max_len`."""
        key = self._version()
        if key != self._key:
            self._build()
            self._key = key
        if self._rope is None or self._rope.shape[0] < max_len:
            self._build_rope(max_len)

    def _build(self):
        m, d = self.model, self.head_dim
        inner = m.model
        self.embed = inner.embed_tokens.weight
        dev = self.embed.device
        self.dtype = self.compute_dtype(m, self.cast)
        if self.embed.dtype != self.dtype:
            self.embed = self.embed.detach().to(self.dtype)
        cast = self.dtype if self.cast is not None else None
        # _rms leaves out sqrt(D): fold it, with the norm weight, into whatever reads the normed vector
        root = math.sqrt(self.hidden)
        self._c_hidden = torch.tensor(self.hidden * self.eps, dtype=torch.float32, device=dev)
        self._c_head = torch.tensor(d * self.eps, dtype=torch.float32, device=dev)
        scale = 1.0 / math.sqrt(d)
        off = self.norm_offset

        def gain(norm):  # what a RMSNorm multiplies by, in fp32
            return norm.weight.float() + off

        self.layers = []
        for layer in inner.layers:
            a, mlp = layer.self_attn, layer.mlp
            qk_norm = qkv_rows = None
            if a.q_norm is not None:
                # q/k RMSNorm over the head dimension: one norm over q and k heads, weights per head row;
                # 1/sqrt(d) goes into q's norm weight (a norm would undo it if folded before)
                qk_norm = (
                    torch.cat([(gain(a.q_norm) * scale).expand(self.n_heads, d), gain(a.k_norm).expand(self.n_kv, d)])
                    * math.sqrt(d)
                ).to(self.dtype)
            else:
                n_q = a.q_proj.out_features
                qkv_rows = torch.ones(n_q + a.k_proj.out_features + a.v_proj.out_features, device=dev)
                qkv_rows[:n_q] = scale
            self.layers.append(
                dict(
                    qkv=_Proj([a.q_proj, a.k_proj, a.v_proj], gain(layer.input_layernorm) * root, qkv_rows, cast),
                    qk_norm=qk_norm,
                    o=_Proj([a.o_proj], dtype=cast),
                    gate_up=_Proj(
                        [mlp.gate_proj, mlp.up_proj], gain(layer.post_attention_layernorm) * root, None, cast
                    ),
                    down=_Proj([mlp.down_proj], dtype=cast),
                )
            )
        self.head = _Proj([m.lm_head], gain(inner.norm) * root, dtype=cast)
        projs = [self.head] + [L[k] for L in self.layers for k in ("qkv", "o", "gate_up", "down")]
        if dev.type == "cpu" and torch.backends.mkldnn.is_available():
            for p in projs:
                if p.weight is not None and p.weight.dtype in PACKED_DTYPES and p.linear is F.linear:
                    p.pack()
        few_rows_t = (
            dev.type == "cpu"
            and all(p.weight is not None and p.weight.dtype == torch.float32 and p.linear is F.linear for p in projs)
            and sum(p.weight.numel() * 4 for p in projs) <= TRANSPOSE_MAX_BYTES
        )
        for p in projs:
            if few_rows_t:
                p.keep_transposed()
            elif p.packed is not None:
                p.weight = None  # the packed copy is all a step reads

    def _build_rope(self, max_len: int):
        # the same fp32 products as RotaryEmbedding, so the table equals what a forward computes
        d = self.head_dim
        half = d // 2
        inv = rope_inv_freq(self.model.config).to(self.embed.device)
        freqs = torch.arange(max_len, device=self.embed.device).float()[:, None] * inv.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        # rope(x)_j = x_j cos_j + x_{(j + d/2) mod d} sin'_j with sin' = (-sin[:d/2], sin[d/2:]): as x @ R,
        # R = diag(cos) + P diag(sin'), P[i, j] = 1 where i = (j + d/2) mod d
        sin = emb.sin()
        sin[:, :half] = -sin[:, :half]
        table = torch.stack((emb.cos(), sin), dim=1)  # (max_len, 2, d)
        self._rope = table.to(self.dtype)
        j = torch.arange(d, device=self.embed.device)
        perm = torch.zeros(d, d, device=self.embed.device)
        perm[(j + half) % d, j] = 1
        # the step's rotation is built in the dtype its q and k are rotated in: the KV cache's (see `step`)
        self._rot_tables = {torch.float32: (table, perm), self.dtype: (self._rope, perm.to(self.dtype))}

    def _rms(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x / |x| up to eps (the rest of RMSNorm is folded into the next matmul); fp32 inside, as transformers."""
        xf = x if x.dtype == torch.float32 else x.float()  # no no-op casts on the fp32 hot path
        n = torch.linalg.vector_norm(xf, dim=-1, keepdim=True)
        y = xf * torch.rsqrt(torch.addcmul(c, n, n))
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def _rope_rows(self, qk: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Rotary embedding of qk (rows, heads, d) at positions pos (rows,), elementwise (many rows)."""
        cs = self._rope[pos]  # (rows, 2, d): cos, and sin with the first half negated
        half = self.head_dim // 2
        swapped = torch.cat((qk.narrow(-1, half, half), qk.narrow(-1, 0, half)), dim=-1)
        return qk * cs[:, None, 0] + swapped * cs[:, None, 1]

    def prefill(self, ids: torch.Tensor, pos: torch.Tensor, cache: KVCache, mask: torch.Tensor | None) -> torch.Tensor:
        """Run prompts ids (b, T) at positions pos (b, T) into `cache` from its write position; return the
        logits (b, vocab) at each row's last position. `mask` None (no padding: causal attention) or the
        bool (b, cache.pos + T) mask of real tokens over every slot, as `CausalLM.forward` takes it.

        Left-padded prompts into an empty cache run ragged: only their real tokens go through the
        matmuls, and each row attends over its own (its padding slots in the cache stay zero, masked)."""
        b, T = ids.shape
        H, KV, d = self.n_heads, self.n_kv, self.head_dim
        past = cache.pos
        end = past + T
        if end > cache.max_len:
            raise RuntimeError(f"KV cache overflow: {end} > {cache.max_len} slots")
        ks, vs = cache.k.unbind(0), cache.v.unbind(0)  # per-layer (rows, kv, L, d) views
        ragged = mask is not None and past == 0
        tokens, flat_pos = ids.reshape(-1), pos.reshape(-1)
        if ragged:
            lens = mask.sum(1).tolist()
            keep = mask.reshape(-1)
            tokens, flat_pos = tokens[keep], flat_pos[keep]
        n = tokens.shape[0]
        x = F.embedding(tokens, self.embed)  # (n, hidden)
        if self.embed_scale is not None:
            x = x * torch.tensor(self.embed_scale, dtype=x.dtype)
        attn = None if mask is None and past == 0 else build_mask(mask, b, T, past, ids.device, decode=False)
        ch, cd = self._c_hidden, self._c_head
        qk_end = (H + KV) * d
        idx = 0
        for L in self.layers:
            for _ in range(self.share):
                qkv = L["qkv"](self._rms(x, ch))
                qk = qkv.narrow(1, 0, qk_end).view(n, H + KV, d)
                if L["qk_norm"] is not None:
                    qk = self._rms(qk, cd) * L["qk_norm"]
                qk = self._rope_rows(qk, flat_pos)
                v = qkv.narrow(1, qk_end, KV * d).view(n, KV, d)
                if ragged:
                    out = self._ragged_attention(qk, v, ks[idx], vs[idx], lens, T)
                else:
                    out = self._padded_attention(qk, v, ks[idx], vs[idx], attn, b, past, T)
                x = L["o"].add_into(x, out.to(x.dtype))
                gu = L["gate_up"](self._rms(x, ch))
                x = L["down"].add_into(x, self.act(gu.narrow(1, 0, self.inter)) * gu.narrow(1, self.inter, self.inter))
                idx += 1
        cache.advance(T)
        if ragged:
            last = x[torch.tensor(lens, device=x.device).cumsum(0) - 1]
        else:
            last = x.view(b, T, -1)[:, -1].contiguous()
        return self.head(self._rms(last, ch))

    def _padded_attention(self, qk, v, kc, vc, attn, b, past, T) -> torch.Tensor:
        """Prefill attention of b rows of T tokens each (qk (b T, H + KV, d), v (b T, KV, d)), written into
        the layer's cache views at `past` and attended over the filled slots; (b T, H d)."""
        H, KV, d = self.n_heads, self.n_kv, self.head_dim
        qk = qk.view(b, T, H + KV, d).transpose(1, 2)
        kc.narrow(2, past, T).copy_(qk.narrow(1, H, KV))
        vc.narrow(2, past, T).copy_(v.view(b, T, KV, d).transpose(1, 2))
        out = F.scaled_dot_product_attention(
            qk.narrow(1, 0, H).to(kc.dtype),
            kc.narrow(2, 0, past + T),
            vc.narrow(2, 0, past + T),
            attn_mask=attn,
            is_causal=attn is None,
            scale=1.0,  # q is pre-scaled
            enable_gqa=KV != H,
        )
        return out.transpose(1, 2).reshape(b * T, H * d)

    def _ragged_attention(self, qk, v, kc, vc, lens: list[int], T: int) -> torch.Tensor:
        """Prefill attention of rows of `lens` real tokens each, packed one after another in qk
        (sum(lens), H + KV, d) and v; each row's K/V go to the last lens[i] of its T cache slots
        (left padding), and it attends causally over them alone; (sum(lens), H d)."""
        H, KV, d = self.n_heads, self.n_kv, self.head_dim
        outs, s = [], 0
        for i, n in enumerate(lens):
            q_i = qk.narrow(0, s, n).transpose(0, 1)  # (H + KV, n, d)
            k_slots, v_slots = kc[i].narrow(1, T - n, n), vc[i].narrow(1, T - n, n)  # (KV, n, d)
            k_slots.copy_(q_i.narrow(0, H, KV))
            v_slots.copy_(v.narrow(0, s, n).transpose(0, 1))
            o = F.scaled_dot_product_attention(
                q_i.narrow(0, 0, H).unsqueeze(0).to(kc.dtype),
                k_slots.unsqueeze(0),
                v_slots.unsqueeze(0),
                is_causal=True,
                scale=1.0,  # q is pre-scaled
                enable_gqa=KV != H,
            )
            outs.append(o[0].transpose(0, 1).reshape(n, H * d))
            s += n
        return torch.cat(outs)

    def step(self, tok: torch.Tensor, pos: torch.Tensor, cache: KVCache, bias: torch.Tensor | None) -> torch.Tensor:
        b = tok.shape[0]
        H, KV, d = self.n_heads, self.n_kv, self.head_dim
        t = cache.pos
        if t + 1 > cache.max_len:
            raise RuntimeError(f"KV cache overflow: {t + 1} > {cache.max_len} slots")
        # every layer's views for this step, made by a few ops on the whole cache instead of several per layer:
        # the new slot (b, KV, d), and the filled keys (b KV, d, t+1) and values (b KV, t+1, d) as bmm reads them
        k_slot, v_slot = cache.k.select(3, t).unbind(0), cache.v.select(3, t).unbind(0)
        keys = cache.k.narrow(3, 0, t + 1).flatten(1, 2).transpose(2, 3).unbind(0)
        values = cache.v.narrow(3, 0, t + 1).flatten(1, 2).unbind(0)
        x = F.embedding(tok, self.embed)  # (b, hidden)
        if self.embed_scale is not None:
            x = x * torch.tensor(self.embed_scale, dtype=x.dtype)
        # casts decided once a step, not as no-op .to() calls per layer (see `cache_dtype`)
        kv_dtype = cache.k.dtype
        cast = kv_dtype != self.dtype
        # q and k are rotated in the cache's dtype: with a float32 cache for a bf16 model (a few rows) that
        # is one cast and a float32 bmm, 3-4x faster at these sizes than oneDNN's bf16 bmm
        tables = self._rot_tables.get(kv_dtype)
        if tables is None:  # a cache of another dtype, given by a caller: rotate in that dtype too
            tables = self._rot_tables[kv_dtype] = tuple(t.to(kv_dtype) for t in self._rot_tables[torch.float32])
        table, perm = tables
        cs = table[pos]  # (b, 2, d)
        rot = torch.diag_embed(cs.select(1, 0)).addcmul_(perm, cs.narrow(1, 1, 1))  # (b, d, d)
        if bias is not None:
            bias = bias.narrow(1, 0, t + 1)[:, None, None]
        ch, cd = self._c_hidden, self._c_head
        qk_end, G, inter, dtype = (H + KV) * d, H // KV, self.inter, self.dtype
        rms, act, bmm = self._rms, self.act, torch.bmm  # locals: this loop runs once per layer and token
        idx = 0
        for L in self.layers:
            for _ in range(self.share):
                qkv = L["qkv"](rms(x, ch))  # (b, (H + 2 KV) d), q pre-scaled
                qk = qkv.narrow(1, 0, qk_end).view(b, H + KV, d)
                if L["qk_norm"] is not None:
                    qk = rms(qk, cd) * L["qk_norm"]
                qk = bmm(qk.to(kv_dtype) if cast else qk, rot)  # rotary on q and k at once
                k_slot[idx].copy_(qk.narrow(1, H, KV))
                v_slot[idx].copy_(qkv.narrow(1, qk_end, KV * d).view(b, KV, d))
                # (b KV) as one batch dimension of 3-D views into the cache: bmm reads it in place
                scores = bmm(qk.narrow(1, 0, H).reshape(b * KV, G, d), keys[idx])  # (b KV, G, t+1)
                if bias is not None:
                    scores = (scores.view(b, KV, G, t + 1) + bias).view(b * KV, G, t + 1)
                probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
                if kv_dtype != torch.float32:
                    probs = probs.to(kv_dtype)
                out = bmm(probs, values[idx]).view(b, H * d)
                x = L["o"].add_into(x, out.to(dtype) if cast else out)
                gu = L["gate_up"](rms(x, ch))
                x = L["down"].add_into(x, act(gu.narrow(1, 0, inter)) * gu.narrow(1, inter, inter))
                idx += 1
        cache.advance(1)
        return self.head(self._rms(x, ch))


def prefill(model, fused: FusedDecoder | None, ids: torch.Tensor, mask: torch.Tensor | None, cache: KVCache):
    """Run left-padded prompts ids (b, P) into an empty `cache`; the logits (b, vocab) at their last position.

    `mask` (b, P) marks real tokens (None: no padding); positions count from each row's first real
    token. Through the fused step's weights where it applies, else the model's forward."""
    pos = None if mask is None else (mask.long().cumsum(-1) - 1).clamp(min=0)
    if fused is not None:
        if pos is None:
            pos = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        return fused.prefill(ids, pos, cache, mask)
    return model(ids, position_ids=pos, attention_mask=mask, kv_cache=cache, logits_to_keep=1)[:, -1]
