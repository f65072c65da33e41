"""Shared fixtures for the train tests: a tiny BPE tokenizer and tiny configs (no downloads)."""

from __future__ import annotations

from pathlib import Path

from srlm.data.synthetic import corpus_lines
from srlm.tokenizer import train_bpe

TINY_MODEL = (
    "{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1}"
)


def make_tokenizer(folder: Path) -> Path:
    tok = train_bpe(list(corpus_lines(200)), 400)
    tok.save(folder)
    return folder


def sft_overrides(out_dir, tok_dir, **extra) -> list[str]:
    base = {
        "out_dir": str(out_dir),
        "tokenizer": str(tok_dir),
        "model": "tiny",
        "model_overrides": TINY_MODEL,
        "data": "[synth-arith]",
        "data_options": "{n_train: 64, difficulties: [1, 2]}",
        "steps": 6,
        "batch_size": 4,
        "lr": 3e-3,
        "warmup_steps": 2,
        "dtype": "fp32",
        "num_threads": 1,
        "log_every": 1,
        "progress": "false",
        "max_seq_len": 128,
    }
    if "model" in extra:  # another model (a checkpoint folder): the preset's reshaping does not apply
        del base["model_overrides"]
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]
