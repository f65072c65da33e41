"""Int8 and int4 weight-only quantization of the Linear layers, applied at load time.

Each `nn.Linear` weight W (out, in) becomes int8 Q with one scale per output channel,
s = max|W_row| / 127, Q = round(W / s), so W ~ Q * s (symmetric, no zero point).
Activations stay in floating point. The matmul uses torch's int8 weight-only kernel
(`torch.ops.aten._weight_int8pack_mm`, bf16 activations) when this build has it, and
falls back to dequantise-then-matmul otherwise; both give the same result up to
rounding. Module names do not change (`q_proj` stays `q_proj`), only their class.
Inference only: quantized layers hold buffers, not trainable parameters.

`int4` is group-wise and asymmetric, as llama.cpp's q4_1 and torchao's int4 weight-only: each
group of `group_size` (32) input weights of a row gets a scale and a zero point,
W ~ (Q - 8) * s + z with Q in 0..15, packed two to a byte by torch's CPU int4 kernel
(`_weight_int4pack_mm_for_cpu`, bf16 activations). Layers whose input size is not a multiple
of the group size, or whose output size is not a multiple of 16 (the kernel's tiles), stay int8.

`UpcastLinear` is the other load-time choice of how weights are computed: bf16 weights on a CPU
without native bf16 (no AVX-512-BF16/AMX) stay bf16 in memory, but a matmul over many rows (a
prefill, a batch of evaluation prompts) runs in fp32 on an upcast copy, 3-4x faster there from 16
rows up; one or a few rows (batch-1 decode) keep the bf16 kernel, which is fine at that shape.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from srlm.errors import SrlmError
from srlm.model.checkpoint import fast_bf16

QUANT_MODES = ("int8", "int4")


@functools.lru_cache(maxsize=None)
def _int8_kernel_available(device_type: str) -> bool:
    try:
        x = torch.ones(2, 32, dtype=torch.bfloat16, device=device_type)
        q = torch.ones(8, 32, dtype=torch.int8, device=device_type)
        s = torch.ones(8, dtype=torch.bfloat16, device=device_type)
        out = torch.ops.aten._weight_int8pack_mm(x, q, s)
        return bool(torch.allclose(out.float(), torch.full((2, 8), 32.0, device=device_type)))
    except Exception:  # missing op, or no kernel for this device / shape
        return False


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: returns (int8 weight (out, in), float32 scales (out,))."""
    w = w.detach().float()
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


class Int8Linear(nn.Module):
    """A Linear with int8 weights and per-output-channel scales (inference only)."""

    #: torch's int8 kernel wins at matrix-vector shapes (decode: 1.8x a bf16 matmul at 1 row) and is still
    #: better than dequantising at 8 rows (~0.7x vs ~0.45x of bf16), but loses badly on a prefill's many rows
    KERNEL_MAX_ROWS = 16

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scales = quantize_weight(linear.weight)
        self.register_buffer("weight", q.contiguous())
        self.compute_dtype = compute_dtype
        self.register_buffer("scales", scales.to(compute_dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.fast = compute_dtype == torch.bfloat16 and _int8_kernel_available(q.device.type)
        # a prefill's many rows dequantise to fp32 where bf16 matmuls are slow (see UpcastLinear)
        self.upcast = compute_dtype == torch.bfloat16 and q.device.type == "cpu" and not fast_bf16("cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        x2 = x.reshape(-1, self.in_features).to(self.compute_dtype)
        if self.fast and x2.shape[0] <= self.KERNEL_MAX_ROWS:
            out = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.weight, self.scales)
        elif self.upcast:
            out = F.linear(x2.float(), self.weight.float()) * self.scales.float()
        else:
            out = F.linear(x2, self.weight.to(self.compute_dtype)) * self.scales
        out = out.to(dtype).view(*shape[:-1], self.out_features)
        return out + self.bias.to(dtype) if self.bias is not None else out

    def dequantized(self) -> torch.Tensor:
        return self.weight.float() * self.scales.float()[:, None]

    def extra_repr(self) -> str:
        kernel = "int8pack" if self.fast else "dequant"
        return f"in_features={self.in_features}, out_features={self.out_features}, int8, kernel={kernel}"


@functools.lru_cache(maxsize=None)
def _int4_kernel_available() -> bool:
    try:
        q = torch.full((32, 64), 9, dtype=torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2)
        sz = torch.stack([torch.ones(2, 32), torch.zeros(2, 32)], -1).to(torch.bfloat16)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(torch.ones(1, 64, dtype=torch.bfloat16), packed, 32, sz)
        return bool(torch.allclose(out.float(), torch.full((1, 32), 64.0)))
    except Exception:  # an older torch, or no CPU kernel in this build
        return False


def quantize_weight_int4(w: torch.Tensor, group_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric group-wise uint4: (Q int32 (out, in) in 0..15, scales_and_zeros float32 (groups, out, 2)),
    with W ~ (Q - 8) * scale + zero in every group."""
    w = w.detach().float()
    out_f, in_f = w.shape
    g = w.view(out_f, in_f // group_size, group_size)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15).clamp(min=1e-8)
    q = torch.round((g - lo) / scale).clamp(0, 15)
    zero = lo + 8 * scale
    sz = torch.stack([scale.squeeze(-1), zero.squeeze(-1)], -1).transpose(0, 1).contiguous()
    return q.to(torch.int32).view(out_f, in_f), sz


class Int4Linear(nn.Module):
    """A Linear with group-wise int4 weights (see the module docstring; inference only)."""

    def __init__(self, linear: nn.Linear, group_size: int = 32):
        super().__init__()
        self.in_features, self.out_features, self.group_size = linear.in_features, linear.out_features, group_size
        q, sz = quantize_weight_int4(linear.weight, group_size)
        self.register_buffer("weight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2))
        self.register_buffer("scales_and_zeros", sz.to(torch.bfloat16))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.weight, self.group_size, self.scales_and_zeros)
        out = out.to(dtype).view(*shape[:-1], self.out_features)
        return out + self.bias.to(dtype) if self.bias is not None else out

    def dequantized(self) -> torch.Tensor:
        """The weight (out, in) the kernel computes with (through the kernel itself: x = I)."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16, device=self.weight.device)
        return (
            torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.weight, self.group_size, self.scales_and_zeros)
            .float()
            .t()
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4, group_size={self.group_size}"


#: from this many rows, upcasting bf16 weights to fp32 beats torch's bf16 kernel on CPUs without bf16
UPCAST_MIN_ROWS = 16


def upcast_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear, in fp32 when `x` has many rows (see UpcastLinear); the result keeps x's dtype."""
    if x.numel() >= UPCAST_MIN_ROWS * x.shape[-1]:
        return F.linear(x.float(), weight.float(), None if bias is None else bias.float()).to(x.dtype)
    return F.linear(x, weight, bias)


class UpcastLinear(nn.Linear):
    """An nn.Linear (same parameters, same names) whose many-row matmuls run in fp32. Inference only."""

    #: plain x @ W.T + b: the fused decode step may concatenate it with its neighbours
    fusable = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upcast_linear(x, self.weight, self.bias)


def upcast_slow_bf16(model: nn.Module) -> int:
    """Turn every bf16 nn.Linear of a CPU model into an UpcastLinear when this CPU has no fast bf16;
    returns how many changed (0 where bf16 is fast or the model is not bf16)."""
    p = next(model.parameters())
    if p.dtype != torch.bfloat16 or p.device.type != "cpu" or fast_bf16(p.device):
        return 0
    n = 0
    for m in model.modules():
        if type(m) is nn.Linear and m.weight.dtype == torch.bfloat16:
            m.__class__ = UpcastLinear  # same parameters and state-dict names, another forward
            n += 1
    return n


def quantize_model(
    model: nn.Module, mode: str = "int8", include_lm_head: bool = True, compute_dtype: torch.dtype | None = None
) -> nn.Module:
    """Replace every nn.Linear of `model` in place (lm_head too unless `include_lm_head=False`).

    A tied lm_head gets its own int8 copy; the embedding keeps its floating-point table.
    """
    if mode not in QUANT_MODES:
        raise SrlmError(f"--quantize {mode!r} is not supported; choose one of: {', '.join(QUANT_MODES)}")
    p = next(model.parameters())
    if mode == "int4" and not (p.device.type == "cpu" and _int4_kernel_available()):
        raise SrlmError(
            "--quantize int4 needs torch's CPU int4 kernel (_weight_int4pack_mm_for_cpu), which this "
            f"torch {torch.__version__} on {p.device.type} lacks; use --quantize int8"
        )
    compute_dtype = compute_dtype or (torch.bfloat16 if p.dtype == torch.float32 else p.dtype)
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and (include_lm_head or not name.endswith("lm_head"))
    ]
    for name, lin in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if mode == "int4" and lin.in_features % 32 == 0 and lin.out_features % 16 == 0:  # the kernel's tiles
            setattr(parent, child, Int4Linear(lin))
        else:
            setattr(parent, child, Int8Linear(lin, compute_dtype=compute_dtype))
    return model


def load_for_inference(path, dtype=None, device="cpu", quantize: str | None = None, revision: str | None = None):
    """`srlm.load` (a folder, .gguf file or Hub id) plus optional quantization: (model, tokenizer).
    int8 runs activations in bf16 by default;
    unquantized bf16 models on CPUs without fast bf16 get UpcastLinear layers."""
    from srlm.model.checkpoint import load

    if quantize is not None and quantize not in QUANT_MODES:
        raise SrlmError(f"--quantize {quantize!r} is not supported; choose one of: {', '.join(QUANT_MODES)}")
    if quantize and dtype is None:
        dtype = "bfloat16"
    model, tokenizer = load(path, dtype=dtype, device=device, revision=revision)
    if quantize:
        quantize_model(model, quantize)
    else:
        upcast_slow_bf16(model)
    return model, tokenizer
