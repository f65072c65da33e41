"""Supervised fine-tuning on chat conversations, full or LoRA.

Supports: data from registered tasks (synthetic suites with options, GSM8K files) or jsonl
(`messages`, GSM8K, synthetic records) via `srlm.data.chat`; loss on assistant tokens only;
length bucketing (examples sorted by length inside windows of `bucket_window`, then cut into
micro-batches, so padding stays small; no packing: SDPA's causal kernel cannot keep packed
conversations apart); right padding without an attention mask (causal attention never looks
right, so real tokens never see padding); truncation at `max_seq_len`; optional held-out
validation loss; full fine-tuning or LoRA (`lora.enabled=true`), saved merged plus a PEFT
adapter. Data order is a pure function of (seed, micro-batch index), so resume is exact and
1 process or N under torchrun see the same global batches. Tokenized sources are kept for the
life of the process (keyed by the tokenizer's content and the data options), so the stages of one
`srlm run` pipeline (teacher, SFT, KD on the same data) tokenize it once.

    srlm train sft --config src/srlm/recipes/configs/sft-tiny.yaml [key=value ...]
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from srlm.data.collate import pad_right
from srlm.errors import SrlmError
from srlm.train.config import TrainConfig
from srlm.train.loop import build_model, train
from srlm.train.lora import LoRAConfig, apply_lora
from srlm.train.stage import Stage


@dataclass
class SFTConfig(TrainConfig):
    #: data sources: registered task names (synth-gsm, gsm8k, ...) and/or jsonl files
    data: list[str] = field(default_factory=lambda: ["synth-gsm"])
    #: keyword options for task sources, e.g. {difficulties: [1, 2], n_train: 5000}; `data: FILE` for file-backed tasks
    data_options: dict = field(default_factory=dict)
    #: at most this many conversations per source (null: all)
    data_limit: int | None = None
    #: wrap the worked solution in <think>...</think> before the final line
    think: bool = True
    #: optional system message prepended to every task-built conversation
    system: str | None = None
    #: conversations held out for validation loss (0: none)
    val_size: int = 0
    #: sort by length inside windows of this many conversations (0: no bucketing)
    bucket_window: int = 256
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    lr: float = 1e-4
    warmup_steps: int = 10


# source key -> [(ids, labels)] of its conversations, untruncated. A pipeline's teacher, SFT and KD stages
# read the same 20k synthetic conversations; tokenizing them (the chat template rendered and encoded
# three times per conversation, 1.4-2.7 ms each on a shared core) was most of each stage's ~35 s start-up.
_TOKENIZED: dict[str, list[tuple[list[int], list[int]]]] = {}
_TOKENIZED_KEEP = 4


def _source_key(tokenizer, source: str, config: SFTConfig) -> str:
    h = hashlib.sha1(tokenizer.backend.to_str().encode())
    files = [Path(p) for p in (source, config.data_options.get("data")) if isinstance(p, str)]
    stamps = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files if p.is_file()]  # edited files miss
    h.update(
        json.dumps(
            [
                tokenizer.chat_template,
                tokenizer.special_tokens,
                source,
                stamps,
                config.data_options,
                config.think,
                config.system,
                config.data_limit,
            ],
            sort_keys=True,
            default=str,
        ).encode()
    )
    return h.hexdigest()


def tokenized_source(tokenizer, source: str, config: SFTConfig) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) of every conversation of one data source, tokenized once per process."""
    from srlm.data.chat import load_conversations, tokenize_conversation

    key = _source_key(tokenizer, source, config)
    if key not in _TOKENIZED:
        convs = load_conversations(
            source, config.data_options, think=config.think, system=config.system, limit=config.data_limit
        )
        while len(_TOKENIZED) >= _TOKENIZED_KEEP:
            _TOKENIZED.pop(next(iter(_TOKENIZED)))
        from srlm.progress import Progress
        from srlm.train.distributed import is_main

        out = []
        with Progress(
            len(convs),
            desc=f"{Path(config.out_dir).name}: tokenizing {source}",
            unit="conv",
            enabled=config.progress and is_main() and len(convs) >= 1000,
            every=max(1, len(convs) // 4),
        ) as bar:
            for k, msgs in enumerate(convs):
                out.append(tokenize_conversation(tokenizer, msgs, where=f"{source} #{k}"))
                bar.update(1)
        _TOKENIZED[key] = out
    return _TOKENIZED[key]


class SFTStage(Stage):
    """Tokenized conversations -> padded micro-batches; loss = summed CE over assistant tokens."""

    name = "sft"

    def __init__(self, config: SFTConfig, tokenizer, conversations: list[list[dict]] | None = None):
        from srlm.data.chat import tokenize_conversation

        self.config = config
        self.pad_id = tokenizer.pad_token_id
        if conversations is None:
            tokenized = [pair for src in config.data for pair in tokenized_source(tokenizer, src, config)]
        else:
            tokenized = [
                tokenize_conversation(tokenizer, msgs, where=f"conversation #{k}")
                for k, msgs in enumerate(conversations)
            ]
        seqs, truncated, empty = [], 0, 0
        for ids, labels in tokenized:
            if len(ids) > config.max_seq_len:
                truncated += 1
                ids, labels = ids[: config.max_seq_len], labels[: config.max_seq_len]
            if not any(x != -100 for x in labels[1:]):
                empty += 1
                continue
            seqs.append((torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)))
        if not seqs:
            raise SrlmError(
                f"SFT data {config.data} gave no trainable conversation ({len(tokenized)} read, "
                f"{empty} with no assistant tokens within max_seq_len={config.max_seq_len})"
            )
        self.truncated, self.dropped = truncated, empty
        order = np.random.default_rng(config.seed).permutation(len(seqs))
        n_val = min(config.val_size, len(seqs) - 1)
        self.val = [seqs[i] for i in order[:n_val]]
        self.train = [seqs[i] for i in sorted(order[n_val:])]
        self.lengths = np.array([len(s[0]) for s in self.train])
        self.n_sup = np.array([int((s[1][1:] != -100).sum()) for s in self.train])

    def _order(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.config.seed, epoch]).permutation(len(self.train))
        w = self.config.bucket_window
        if w and w > 1:
            for s in range(0, len(perm), w):
                chunk = perm[s : s + w]
                perm[s : s + w] = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
        return perm

    def _collate(self, idx: list[int]) -> dict:
        rows = [self.train[i] for i in idx]
        ids, labels = pad_right([a for a, _ in rows], self.pad_id), pad_right([b for _, b in rows], -100)
        return {"input_ids": ids, "labels": labels, "num_tokens": int(self.n_sup[idx].sum())}

    def batches(self, start: int, micro_batch_size: int) -> Iterator[dict]:
        n = len(self.train)
        pos = start * micro_batch_size
        epoch, cached = -1, None
        while True:
            idx = []
            while len(idx) < micro_batch_size:
                e, off = divmod(pos, n)
                if e != epoch:
                    epoch, cached = e, self._order(e)
                take = min(micro_batch_size - len(idx), n - off)
                idx += cached[off : off + take].tolist()
                pos += take
            yield self._collate(idx)

    def loss(self, model, batch):
        return model.loss(batch["input_ids"], batch["labels"], reduction="sum"), {}

    def validate(self, model) -> dict:
        if not self.val:
            return {}
        device = next(model.parameters()).device
        total, count = 0.0, 0
        bs = max(1, self.config.batch_size)
        for s in range(0, len(self.val), bs):
            part = self.val[s : s + bs]
            ids, labels = pad_right([a for a, _ in part], self.pad_id), pad_right([b for _, b in part], -100)
            total += float(model.loss(ids.to(device), labels.to(device), reduction="sum"))
            count += int((labels[:, 1:] != -100).sum())
        return {"val_loss": total / max(count, 1)}


def prepare(config: SFTConfig):
    """(model, tokenizer) for a stage (SFT, KD, GRPO): the base model, with LoRA adapters applied when enabled."""
    model, tokenizer = build_model(config)
    if config.lora.enabled:
        apply_lora(model, config.lora)
    return model, tokenizer


def run(config: SFTConfig, evaluate=None) -> dict:
    model, tokenizer = prepare(config)
    stage = SFTStage(config, tokenizer)
    return train(config, model, tokenizer, stage, evaluate=evaluate, stage_name="sft")


# ---------------------------------------------------------------------------------------------
# What `srlm run` asks of a stage module


def recipe_config(config: dict, task: str, task_options: dict) -> dict:
    """A recipe stage's config with the recipe's task as its training data (unless the stage names its own)."""
    config.setdefault("data", [task])
    config["data_options"] = {**task_options, **(config.get("data_options") or {})}
    return config


def report_notes(result: dict, out_dir: Path) -> dict:
    """Figures worth a line in the run's report besides loss and accuracy (none for SFT)."""
    return {}


Config = SFTConfig
