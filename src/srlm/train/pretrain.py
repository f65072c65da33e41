"""Pretraining on raw text: next-token loss over a packed token stream.

Supports: plain text files (one document per non-blank line) and `.jsonl` files (the
`text` field); documents joined into one stream with the tokenizer's eos between them;
fixed rows of `max_seq_len` tokens cut from the stream. Attention crosses document
boundaries inside a row: SDPA's causal kernel cannot reset per document, and the eos
separator tells the model where a document ends (GPT-2/nanoGPT make the same choice).
The last `val_fraction` of documents is held out; validation reports loss and bits per
byte (nats per token x tokens per byte of validation text / ln 2). Row order is a seeded
permutation per epoch, a pure function of the micro-batch index, so resume is exact.

    srlm train pretrain --config src/srlm/recipes/configs/pretrain-tiny.yaml data=[corpus.txt]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from srlm.data.io import read_texts
from srlm.errors import SrlmError
from srlm.train.config import TrainConfig
from srlm.train.loop import build_model, train
from srlm.train.stage import Stage


@dataclass
class PretrainConfig(TrainConfig):
    #: text files (a document per line) and/or .jsonl files with a "text" field
    data: list[str] = field(default_factory=list)
    #: fraction of documents (the last ones) held out for validation
    val_fraction: float = 0.02
    #: validate on at most this many rows (0: all)
    val_rows: int = 64
    lr: float = 3e-3
    warmup_steps: int = 50


class PretrainStage(Stage):
    name = "pretrain"

    def __init__(self, config: PretrainConfig, tokenizer, documents: list[str] | None = None):
        if documents is None:
            if not config.data:
                raise SrlmError("pretrain: no data; pass data=[FILE, ...] (text or .jsonl with 'text')")
            documents = list(read_texts(config.data))
        if not documents:
            raise SrlmError(f"pretrain: {config.data} hold no non-blank document")
        if not 0 <= config.val_fraction < 1:
            raise SrlmError(f"val_fraction must be in [0, 1), got {config.val_fraction}")
        eos = tokenizer.eos_token_id
        if eos is None:
            raise SrlmError("pretrain: the tokenizer has no eos token to separate documents")
        n_val = int(round(len(documents) * config.val_fraction))
        if config.val_fraction > 0 and n_val == 0 and len(documents) > 1:
            n_val = 1
        train_docs, val_docs = documents[: len(documents) - n_val], documents[len(documents) - n_val :]
        self.config = config
        self.L = config.max_seq_len
        self.train_ids = self._stream(tokenizer, train_docs, eos)
        self.rows = len(self.train_ids) // self.L
        if self.rows == 0:
            raise SrlmError(
                f"pretrain: only {len(self.train_ids)} training tokens, fewer than one row of "
                f"max_seq_len={self.L}; add data or lower max_seq_len"
            )
        self.val_ids = self._stream(tokenizer, val_docs, eos) if val_docs else None
        self.val_bytes = sum(len(d.encode("utf-8")) + 1 for d in val_docs)  # +1: the separator

    @staticmethod
    def _stream(tokenizer, docs: list[str], eos: int) -> torch.Tensor:
        out: list[int] = []
        for ids in tokenizer.encode_batch(docs):
            out.extend(ids)
            out.append(eos)
        return torch.tensor(out, dtype=torch.long)

    def batches(self, start: int, micro_batch_size: int) -> Iterator[dict]:
        pos = start * micro_batch_size
        epoch, perm = -1, None
        while True:
            idx = []
            for _ in range(micro_batch_size):
                e, off = divmod(pos, self.rows)
                if e != epoch:
                    epoch, perm = e, np.random.default_rng([self.config.seed, e]).permutation(self.rows)
                idx.append(int(perm[off]))
                pos += 1
            starts = torch.tensor(idx) * self.L
            ids = self.train_ids[starts[:, None] + torch.arange(self.L)]
            yield {"input_ids": ids, "labels": ids, "num_tokens": ids.numel() - len(idx)}

    def loss(self, model, batch):
        return model.loss(batch["input_ids"], batch["labels"], reduction="sum"), {}

    def validate(self, model) -> dict:
        if self.val_ids is None or len(self.val_ids) < 2:
            return {}
        device = next(model.parameters()).device
        L = self.L
        n = len(self.val_ids)
        n_rows = math.ceil(n / L)
        if self.config.val_rows:
            n_rows = min(n_rows, self.config.val_rows)
        ids = torch.full((n_rows * L,), 0, dtype=torch.long)
        labels = torch.full((n_rows * L,), -100, dtype=torch.long)
        m = min(n, n_rows * L)
        ids[:m], labels[:m] = self.val_ids[:m], self.val_ids[:m]
        ids, labels = ids.view(n_rows, L), labels.view(n_rows, L)
        total, count = 0.0, 0
        for s in range(0, n_rows, 8):
            total += float(model.loss(ids[s : s + 8].to(device), labels[s : s + 8].to(device), reduction="sum"))
            count += int((labels[s : s + 8, 1:] != -100).sum())
        loss = total / max(count, 1)
        tokens_per_byte = n / max(self.val_bytes, 1)
        return {"val_loss": loss, "val_bpb": loss * tokens_per_byte / math.log(2)}


def run(config: PretrainConfig, evaluate=None) -> dict:
    model, tokenizer = build_model(config)
    stage = PretrainStage(config, tokenizer)
    return train(config, model, tokenizer, stage, evaluate=evaluate, stage_name="pretrain")


# ---------------------------------------------------------------------------------------------
# What `srlm run` asks of a stage module


def recipe_config(config: dict, task: str, task_options: dict) -> dict:
    """Pretraining reads its own text files (`data`); the recipe's task does not apply."""
    return config


def report_notes(result: dict, out_dir: Path) -> dict:
    return {}


Config = PretrainConfig
