"""LoRA (Hu et al. 2021, arXiv 2106.09685) for srlm's CausalLM, saved in PEFT's format.

`apply_lora(model, LoRAConfig)` swaps the targeted `nn.Linear`s for `LoRALinear`s
(frozen base weight, trainable `lora_A` (r x in) and `lora_B` (out x r), B zero-initialised,
output += dropout(x) A^T B^T * alpha / r) and freezes every other parameter. Parameter
names follow PEFT: `<module>.lora_A.weight`, `<module>.lora_B.weight`; the adapter file
prefixes them with `base_model.model.`, so `peft.PeftModel.from_pretrained(hf_model, dir)`
loads it onto the transformers model. `merged_model(model)` is a plain `CausalLM` with
W + B A * alpha / r (sharing untouched tensors), which `srlm.model.save` writes as usual.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from srlm.errors import SrlmError

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoRAConfig:
    #: train low-rank adapters instead of all weights
    enabled: bool = False
    rank: int = 16
    #: scale = alpha / rank
    alpha: float = 32.0
    dropout: float = 0.0
    #: module names (last path component) to adapt; "all-linear" = every projection but lm_head
    target_modules: list[str] = field(default_factory=lambda: list(ALL_LINEAR))

    def __post_init__(self):
        if self.rank <= 0:
            raise SrlmError(f"lora.rank must be a positive integer, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise SrlmError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if self.target_modules == ["all-linear"]:
            self.target_modules = list(ALL_LINEAR)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Linear):
    """An nn.Linear (weight, bias frozen) plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=dev, dtype=dt)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=dev, dtype=dt)
        # PEFT's default init: kaiming-uniform A, zero B, so training starts at the base model
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scale = alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scale

    def delta(self) -> torch.Tensor:
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scale


def apply_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Replace targeted linears in place, freeze the rest; returns the adapted module names."""
    for p in model.parameters():
        p.requires_grad_(False)
    names = []
    for name, module in list(model.named_modules()):
        if (
            isinstance(module, nn.Linear)
            and not isinstance(module, LoRALinear)
            and name.split(".")[-1] in config.target_modules
        ):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], LoRALinear(module, config.rank, config.alpha, config.dropout))
            names.append(name)
    if not names:
        known = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise SrlmError(
            f"lora.target_modules {config.target_modules} match no linear layer; the model has: {', '.join(known)}"
        )
    model.lora_config = config  # the loop saves the adapter (and merges) when this is set
    return names


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter weights under srlm names (`model.layers.0.self_attn.q_proj.lora_A.weight`)."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


def merged_model(model: nn.Module):
    """A plain CausalLM with the adapters folded in; unadapted tensors are shared, not copied."""
    from srlm.model.transformer import CausalLM

    sd = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            sd[f"{name}.weight"] = (module.weight.float() + module.delta()).to(module.weight.dtype).detach()
    for k, v in model.state_dict().items():
        if ".lora_" in k or k in sd:
            continue
        sd[k] = v
    with torch.device("meta"):
        plain = CausalLM(model.config)
    plain.load_state_dict(sd, strict=False, assign=True)
    if model.config.tie_word_embeddings:
        plain.lm_head.weight = plain.model.embed_tokens.weight
    plain.model.rotary_emb.inv_freq = model.model.rotary_emb.inv_freq
    return plain.eval()


def save_adapter(model: nn.Module, config: LoRAConfig, path: str | Path, base_model: str | None = None) -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` as PEFT does."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = {f"base_model.model.{k}": v.detach().contiguous().cpu() for k, v in lora_state_dict(model).items()}
    save_file(sd, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": sorted(set(config.target_modules)),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
    }
    (path / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return path
