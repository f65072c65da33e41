"""`srlm info PATH|--preset NAME`: what a checkpoint is, without loading its weights.

Shapes come from `config.json` or a GGUF's metadata (a model built on the meta device), so
even a multi-GB checkpoint is described instantly; for a Hub id only the config and tokenizer
files are downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from srlm.errors import SrlmError
from srlm.model.config import ModelConfig
from srlm.model.transformer import CausalLM


def describe(config: ModelConfig, path: Path | None = None) -> dict:
    with torch.device("meta"):
        model = CausalLM(config)
    total = model.num_parameters  # tied lm_head counted once
    embed = config.vocab_size * config.hidden_size
    lm_head = 0 if config.tie_word_embeddings else embed
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)) - lm_head
    other = total - linear - embed - lm_head  # norms, biases
    info = {
        "architecture": f"{config.model_type} ({_arch_summary(config)})",
        "parameters": total,
        "embedding_parameters": embed + lm_head,
        "non_embedding_parameters": total - embed - lm_head,
        "dtype": config.dtype,
        "weight_memory_mb": {
            "fp32": round(total * 4 / 2**20, 2),
            "bf16": round(total * 2 / 2**20, 2),
            # int8 weight-only: Linear weights in int8 + fp32 per-channel scales; embeddings and norms in bf16
            "int8": round(
                (
                    linear
                    + 4 * sum(m.weight.shape[0] for m in model.modules() if isinstance(m, torch.nn.Linear))
                    + 2 * (embed + other)
                )
                / 2**20,
                2,
            ),
        },
        "vocab_size": config.vocab_size,
        "context_length": config.max_position_embeddings,
        "layers": config.effective_layers,
        "layer_share": config.layer_share,
        "tied_embeddings": config.tie_word_embeddings,
    }
    if path is not None:
        info["tokenizer"] = (path / "tokenizer.json").exists()
        info["chat_template"] = _has_chat_template(path)
    return info


def _arch_summary(c: ModelConfig) -> str:
    parts = [
        f"{c.effective_layers} layers x {c.hidden_size}",
        f"heads {c.num_attention_heads}/{c.num_key_value_heads} (q/kv)",
        f"head_dim {c.head_dim}",
        f"mlp {c.intermediate_size}",
        f"rope {c.rope_type} theta={c.rope_theta:g}",
    ]
    if c.layer_share > 1:
        parts.append(f"{c.num_hidden_layers} blocks each shared x{c.layer_share}")
    if c.qk_norm:
        parts.append("q/k norm")
    if c.qkv_bias:
        parts.append("qkv bias")
    return ", ".join(parts)


def _has_chat_template(path: Path) -> bool:
    if (path / "chat_template.jinja").exists():
        return True
    cfg = path / "tokenizer_config.json"
    if not cfg.exists():
        return False
    try:
        return bool(json.loads(cfg.read_text(encoding="utf-8")).get("chat_template"))
    except json.JSONDecodeError as e:
        raise SrlmError(f"{cfg}: line {e.lineno}: invalid JSON ({e.msg})") from None
