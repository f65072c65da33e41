"""The one training loop every stage shares: optimizer, schedule, accumulation, checkpoints, resume, DDP/FSDP.

    train(config, model, tokenizer, stage, evaluate=None) -> dict

A *stage* (pretrain, SFT, KD, GRPO) supplies the data and the loss; the loop owns everything else.
Required stage methods:

    batches(start: int, micro_batch_size: int) -> Iterator[dict]
        An endless, deterministic stream of micro-batches of the *global* stream (every rank sees the
        same stream; the loop hands each rank its share). It must begin at micro-batch `start`
        (the saved data position), which is how resume is exact.
    loss(model, batch) -> (loss_sum: Tensor, stats: dict[str, float | Tensor])
        The loss *summed* over the batch's units (e.g. supervised tokens). The loop divides by the
        total units of the whole optimizer step (all micro-batches, all ranks), so accumulation is
        exactly token-weighted. `model` is the plain CausalLM (already wrapped by DDP/FSDP outside).
Optional:
    weight(batch) -> float          units of `batch` (default: batch["num_tokens"]); same on every rank
    before_step(step, model)        e.g. GRPO generates rollouts here (all ranks call it)
    validate(model) -> dict         validation metrics (e.g. val loss, bits per byte), under no_grad
    state_dict() / load_state_dict(d)  stage state saved in the checkpoint (tensors and plain Python values)

The loop: AdamW (fused where available; weight decay on matrices only), linear warmup then
cosine/linear/constant decay to lr*min_lr_ratio, gradient accumulation, clipping, bf16
autocast (CPU and GPU), activation checkpointing, per-step reseeding (RNG state is a pure
function of seed, step and rank, so resume needs no RNG files), checkpoints, `metrics.jsonl`
(plus TensorBoard when installed), tqdm progress, evaluation every `eval_every` steps through
`stage.validate` and the caller's `evaluate(model, tokenizer, step) -> dict` (the eval harness
sits above train, so the caller passes it in).

Checkpoints: `out_dir/checkpoint-NNNNNN/` is an HF folder (LoRA merged; the adapter in PEFT's
format under `adapter/`) + `train_config.yaml` + `training_state.pt` (optimizer, step, data
position, stage state, LoRA weights; loaded with weights_only=True) + `training_state.json`.
It is written as a hidden temporary folder and renamed into place, so a kill never leaves a
half checkpoint under a name a later run would load. The newest `keep_last` are kept;
`out_dir/final/` holds the last model. Under `torchrun` the loop uses DDP (gloo on CPU, NCCL on
GPU), or FSDP2 `fully_shard` with `fsdp=true`; only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from srlm.errors import SrlmError
from srlm.model.checkpoint import fast_bf16
from srlm.train.config import TrainConfig, to_dict, to_yaml
from srlm.train.lora import LoRALinear, lora_state_dict, merged_model, save_adapter

# keys that may change between a run and its resumption
RESUMABLE_CHANGES = {"steps", "save_every", "keep_last", "eval_every", "eval_tasks", "eval_limit", "log_every",
                     "resume", "num_threads", "progress", "device", "out_dir"}

_CKPT = re.compile(r"^checkpoint-(\d+)$")


# ----------------------------------------------------------------------------- model / tokenizer

def build_model(config: TrainConfig, need_tokenizer: bool = True):
    """(model in fp32 on CPU, tokenizer) from `config.model` / `init_from` / `tokenizer`.

    `init_from` (a checkpoint) gives architecture and weights; else `model` is a checkpoint or
    a preset (random init seeded by `config.seed`, vocabulary and special ids from the tokenizer).
    A checkpoint is a folder, a .gguf file or a Hub id (at `config.revision`).
    """
    from srlm.model import load_model, load_tokenizer, preset

    source = (_checkpoint(config.init_from, config.revision, "init_from") if config.init_from
              else _checkpoint(config.model, config.revision, "model"))
    tokenizer = None
    if config.tokenizer:
        tokenizer = load_tokenizer(config.tokenizer)
        if tokenizer is None:
            raise SrlmError(f"tokenizer={config.tokenizer}: no tokenizer.json there")
    elif source is not None:
        tokenizer = load_tokenizer(source)
    if tokenizer is None and need_tokenizer:
        raise SrlmError(f"no tokenizer: model={config.model!r} is a preset (or its folder has no tokenizer.json); "
                        f"pass tokenizer=FOLDER (train one with `srlm tokenizer train`)")
    if source is not None:
        if config.model_overrides:
            raise SrlmError(f"model_overrides={config.model_overrides} reshapes a preset, but the model comes from "
                            f"the checkpoint folder {source}; drop model_overrides or start from a preset")
        model = load_model(source, dtype="float32")
    else:
        overrides = {}
        if tokenizer is not None:
            overrides = dict(vocab_size=tokenizer.vocab_size, eos_token_id=tokenizer.eos_token_id,
                             bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(config.seed)
        from srlm.model import CausalLM

        model = CausalLM(preset(config.model, **{**overrides, **config.model_overrides}))
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise SrlmError(f"tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
                        f"{model.config.vocab_size}; use the tokenizer the model was trained with")
    return model, tokenizer


def _checkpoint(ref: str, revision: str | None, key: str) -> Path | None:
    """The local checkpoint `ref` names (downloading a Hub id), or None for a preset name."""
    from srlm.model import PRESETS
    from srlm.model.hub import is_hub_id, resolve

    if ref in PRESETS:
        return None
    if Path(ref).exists() or is_hub_id(ref):
        return resolve(ref, revision)
    if "/" in ref or ref.startswith("."):
        raise SrlmError(f"{key}={ref}: no such checkpoint folder or .gguf file")
    return None  # an unknown preset name: preset() says which exist


def export_model(model: nn.Module) -> nn.Module:
    """The plain CausalLM to save: LoRA adapters merged."""
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        return merged_model(model)
    return model


# ----------------------------------------------------------------------------- distributed

class _Dist:
    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        self.owns_group = False

    def init(self, device: torch.device):
        import torch.distributed as dist

        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.owns_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.enabled:
            torch.distributed.barrier()

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            torch.distributed.all_reduce(t)
        return t

    def close(self):
        if self.owns_group:
            torch.distributed.destroy_process_group()


class _LossModule(nn.Module):
    """Routes the stage's loss through forward(), so DDP/FSDP hooks see every micro-batch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, batch):
        return fn(self.model, batch)


def _device(config: TrainConfig, dist: _Dist) -> torch.device:
    if config.device == "auto":
        return torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")
    if config.device == "cuda":
        if not torch.cuda.is_available():
            raise SrlmError("device=cuda but no CUDA device is available; use device=cpu")
        return torch.device(f"cuda:{dist.local_rank}")
    if config.device != "cpu":
        raise SrlmError(f"device={config.device!r}: use cpu, cuda or auto")
    return torch.device("cpu")


# ----------------------------------------------------------------------------- schedule / optimizer

def lr_at(config: TrainConfig, step: int) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.lr * config.min_lr_ratio
    if config.schedule == "cosine":
        return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return config.lr - (config.lr - floor) * progress


def uses_bf16(config: TrainConfig, device: torch.device) -> bool:
    """Whether the loop trains `config` under bf16 autocast on `device` (dtype bf16, or auto where bf16 is fast)."""
    return config.dtype in ("bf16", "bfloat16") or (config.dtype == "auto" and fast_bf16(device))


def _optimizer(config: TrainConfig, model: nn.Module, device: torch.device, fsdp: bool):
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise SrlmError("no trainable parameters (everything is frozen)")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    kw = dict(lr=config.lr, betas=tuple(config.betas), eps=config.eps)
    if not fsdp and all(p.dtype in (torch.float32, torch.bfloat16) for p in params):
        try:
            return torch.optim.AdamW(groups, fused=True, **kw)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(groups, **kw)


def _validate_config(config: TrainConfig, world: int) -> int:
    if config.schedule not in ("cosine", "linear", "constant"):
        raise SrlmError(f"schedule={config.schedule!r}: use cosine, linear or constant")
    if config.dtype not in ("auto", "bf16", "fp32", "bfloat16", "float32"):
        raise SrlmError(f"dtype={config.dtype!r}: use auto, bf16 or fp32")
    if config.steps <= 0:
        raise SrlmError(f"steps must be positive, got {config.steps}")
    if config.grad_accum <= 0 or config.batch_size <= 0:
        raise SrlmError("batch_size and grad_accum must be positive")
    per = config.grad_accum * world
    if config.batch_size % per:
        raise SrlmError(f"batch_size={config.batch_size} must be a multiple of grad_accum x world size "
                        f"= {config.grad_accum} x {world}")
    return config.batch_size // per


# ----------------------------------------------------------------------------- checkpoints

def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `out_dir`, oldest first."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir()
             if (m := _CKPT.match(p.name)) and (p / "training_state.json").is_file()]
    return [p for _, p in sorted(found)]


def _resume_point(config: TrainConfig) -> Path | None:
    r = config.resume
    ckpts = list_checkpoints(config.out_dir)
    if r in (False, None, "false", "no"):
        if ckpts:
            raise SrlmError(f"{config.out_dir} already has checkpoints (newest {ckpts[-1].name}); pass resume=true "
                            f"(or --resume) to continue, or choose another out_dir")
        return None
    if r in (True, "true", "auto", "yes"):
        if not ckpts:
            if r == "auto":
                return None
            raise SrlmError(f"resume=true but {config.out_dir} has no complete checkpoint-N folder")
        return ckpts[-1]
    p = Path(str(r))
    if not (p / "training_state.json").is_file():
        raise SrlmError(f"resume={r}: not a checkpoint folder (no training_state.json)")
    return p


def _check_compatible(config: TrainConfig, ckpt: Path, stage_name: str) -> dict:
    import yaml

    meta = json.loads((ckpt / "training_state.json").read_text())
    if meta.get("stage") != stage_name:
        raise SrlmError(f"{ckpt} was written by a {meta.get('stage')!r} run, not {stage_name!r}; "
                        f"use a fresh out_dir")
    saved = yaml.safe_load((ckpt / "train_config.yaml").read_text()) or {}
    now = to_dict(config)
    diff = [k for k in sorted(set(saved) | set(now)) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k)]
    if diff:
        shown = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff[:5])
        raise SrlmError(f"{ckpt} was made by another config ({shown}); resume with the same config "
                        f"(only {', '.join(sorted(RESUMABLE_CHANGES))} may change) or use a fresh out_dir")
    return meta


# ----------------------------------------------------------------------------- the loop

class Trainer:
    def __init__(self, config: TrainConfig, model: nn.Module, tokenizer, stage, evaluate: Callable | None = None,
                 stage_name: str | None = None):
        self.config, self.model, self.tokenizer, self.stage, self.evaluate = config, model, tokenizer, stage, evaluate
        self.stage_name = stage_name or getattr(stage, "name", type(stage).__name__)
        self.dist = _Dist()
        self.out = Path(config.out_dir)
        self.lora = getattr(model, "lora_config", None)

    # -- files
    def _save(self, step: int, position: int, final: bool = False) -> Path:
        """Rank 0 writes; every rank calls (FSDP gathers the full state on all ranks)."""
        from srlm.model import save

        state_model = self._full_model()
        optim_state = self._optim_state()
        path = self.out / ("final" if final else f"checkpoint-{step:06d}")
        if self.dist.main:
            tmp = self.out / f".{path.name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            save(export_model(state_model), tmp, tokenizer=self.tokenizer,
                 extra_files={"train_config.yaml": to_yaml(self.config)})
            if self.lora is not None:
                save_adapter(state_model, self.lora, tmp / "adapter", base_model=self.config.init_from or self.config.model)
            if not final:
                stage_state = self.stage.state_dict() if hasattr(self.stage, "state_dict") else {}
                torch.save({"optimizer": optim_state, "lora": lora_state_dict(state_model) if self.lora else {},
                            "stage": stage_state}, tmp / "training_state.pt")
            # written last: its presence marks a complete checkpoint
            (tmp / "training_state.json").write_text(json.dumps(
                {"stage": self.stage_name, "step": step, "data_position": position, "world_size": self.dist.world,
                 "time": time.time()}, indent=2) + "\n")
            if path.exists():
                old = self.out / f".{path.name}.old-{os.getpid()}"
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
            if not final and self.config.keep_last > 0:
                for old in list_checkpoints(self.out)[:-self.config.keep_last]:
                    shutil.rmtree(old, ignore_errors=True)
        self.dist.barrier()
        return path

    def _full_model(self) -> nn.Module:
        if not self.config.fsdp:
            return self.model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        from srlm.model import CausalLM

        sd = get_model_state_dict(self.wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        sd = {k.removeprefix("model."): v for k, v in sd.items()}
        if not self.dist.main:
            return self.model
        with torch.device("meta"):
            plain = CausalLM(self.model.config)
        plain.load_state_dict(sd, strict=False, assign=True)
        if plain.config.tie_word_embeddings:
            plain.lm_head.weight = plain.model.embed_tokens.weight
        plain.model.rotary_emb.inv_freq = self.model.model.rotary_emb.inv_freq.detach().cpu()
        return plain

    def _optim_state(self):
        if not self.config.fsdp:
            return self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.wrapped, self.optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def _load(self, ckpt: Path) -> tuple[int, int]:
        meta = _check_compatible(self.config, ckpt, self.stage_name)
        state = torch.load(ckpt / "training_state.pt", map_location="cpu", weights_only=True)
        if self.lora is not None:
            missing = set(lora_state_dict(self.model)) - set(state["lora"])
            if missing:
                raise SrlmError(f"{ckpt}: training_state.pt lacks LoRA weights {sorted(missing)[:2]}; not a LoRA run of this config")
            self.model.load_state_dict(state["lora"], strict=False)
        else:
            from srlm.model import load_model

            saved = load_model(ckpt, dtype="float32")
            self.model.load_state_dict(saved.state_dict(), strict=True)
        self._optim_load = state["optimizer"]
        if hasattr(self.stage, "load_state_dict"):
            self.stage.load_state_dict(state.get("stage", {}))
        return int(meta["step"]), int(meta["data_position"])

    def _log(self, record: dict):
        if not self.dist.main:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def _truncate_metrics(self, step: int):
        path = self.out / "metrics.jsonl"
        if not self.dist.main or not path.exists():
            return
        keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
        path.write_text("".join(line + "\n" for line in keep))

    # -- evaluation
    def _run_eval(self, step: int) -> dict:
        out: dict[str, Any] = {}
        self.model.eval()
        try:
            if hasattr(self.stage, "validate"):
                with torch.no_grad(), self._autocast():
                    out.update(self.stage.validate(self.model))
            if self.evaluate is not None and (self.dist.main or self.config.fsdp):
                out.update(self.evaluate(export_model(self.model), self.tokenizer, step))
        finally:
            self.model.train()
        return out

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    # -- main
    def run(self) -> dict:
        cfg, dist = self.config, self.dist
        self.device = _device(cfg, dist)
        dist.init(self.device)
        try:
            return self._run()
        finally:
            dist.close()

    def _run(self) -> dict:
        cfg, dist = self.config, self.dist
        micro = _validate_config(cfg, dist.world)
        self.bf16 = uses_bf16(cfg, self.device)
        if cfg.dtype in ("bf16", "bfloat16") and not fast_bf16(self.device) and dist.main:
            print("srlm train: warning: this CPU has no fast bf16 (no AVX-512-BF16/AMX); bf16 autocast will be "
                  "far slower than dtype=fp32", flush=True)
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        self.tb = None
        if dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in self.out.glob(".checkpoint-*.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out / "tb"))
            except Exception:  # tensorboard not installed
                self.tb = None
        ckpt = _resume_point(cfg)
        step, position = 0, 0
        self._optim_load = None
        if ckpt is not None:
            step, position = self._load(ckpt)
            self._truncate_metrics(step)
        if step >= cfg.steps:
            raise SrlmError(f"{ckpt} is already at step {step} >= steps={cfg.steps}; raise steps to train further")
        model = self.model.to(self.device).train()
        model.model.gradient_checkpointing = cfg.gradient_checkpointing
        wrapped: nn.Module = _LossModule(model)
        if dist.enabled and cfg.fsdp:
            from torch.distributed.fsdp import fully_shard

            for layer in model.model.layers:
                fully_shard(layer)
            fully_shard(wrapped)
        elif dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            wrapped = DDP(wrapped, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.wrapped = wrapped
        self.optimizer = _optimizer(cfg, model, self.device, cfg.fsdp and dist.enabled)
        if self._optim_load is not None:
            if cfg.fsdp and dist.enabled:
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

                set_optimizer_state_dict(wrapped, self.optimizer, self._optim_load,
                                         options=StateDictOptions(full_state_dict=True))
            else:
                self.optimizer.load_state_dict(self._optim_load)
            self._optim_load = None
        if dist.main:
            (self.out / "train_config.yaml").write_text(to_yaml(cfg))

        weight = getattr(self.stage, "weight", None) or (lambda b: float(b["num_tokens"]))
        batches = self.stage.batches(position, micro)
        per_step = cfg.grad_accum * dist.world
        params = [p for p in model.parameters() if p.requires_grad]

        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=step, disable=not (dist.main and cfg.progress), dynamic_ncols=True,
                   desc=self.stage_name)
        window_losses: list[torch.Tensor] = []
        window_stats: dict[str, list] = {}
        window_tokens, window_t0 = 0, time.perf_counter()
        grad_norm = None
        last: dict[str, Any] = {}
        while step < cfg.steps:
            if hasattr(self.stage, "before_step"):
                self.stage.before_step(step, model)
            torch.manual_seed(cfg.seed * 1_000_003 + step * 1_009 + dist.rank)
            lr = lr_at(cfg, step)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            group = []
            for _ in range(per_step):
                try:
                    group.append(next(batches))
                except StopIteration:
                    raise SrlmError(f"stage {self.stage_name!r} ran out of data at micro-batch {position + len(group)}; "
                                    f"its batches() must be endless") from None
            position += per_step
            total = sum(weight(b) for b in group)
            scale = dist.world / max(total, 1e-8)
            mine = group[dist.rank * cfg.grad_accum:(dist.rank + 1) * cfg.grad_accum]
            step_loss = torch.zeros((), device=self.device)
            for i, batch in enumerate(mine):
                batch = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
                sync = i == len(mine) - 1 or not (dist.enabled and not cfg.fsdp)
                ctx = contextlib.nullcontext() if sync else wrapped.no_sync()
                with ctx:
                    with self._autocast():
                        loss_sum, stats = wrapped(self.stage.loss, batch)
                    (loss_sum * scale).backward()
                step_loss += loss_sum.detach().float()
                if "input_ids" in batch:
                    window_tokens += batch["input_ids"].numel()
                for k, v in stats.items():
                    window_stats.setdefault(k, []).append(v.detach().float() if torch.is_tensor(v) else float(v))
            if cfg.max_grad_norm > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            window_losses.append(step_loss / max(total, 1e-8))
            step += 1
            bar.update(1)

            if step % cfg.log_every == 0 or step == cfg.steps:
                losses = dist.all_reduce(torch.stack(window_losses)).tolist()
                dt = time.perf_counter() - window_t0
                tps = window_tokens * dist.world / max(dt, 1e-9)
                first = step - len(losses) + 1
                for j, lv in enumerate(losses):
                    rec = {"step": first + j, "loss": lv}
                    if first + j == step:
                        rec.update(lr=lr, tokens_per_s=tps, step_time_s=dt / len(losses))
                        if grad_norm is not None:
                            rec["grad_norm"] = float(grad_norm)
                        for k, vs in window_stats.items():
                            rec[k] = float(sum(float(v) for v in vs) / len(vs))
                    self._log(rec)
                last = {"step": step, "loss": losses[-1]}
                bar.set_postfix(loss=f"{losses[-1]:.4f}", tok_s=f"{tps:,.0f}", lr=f"{lr:.2e}")
                window_losses, window_stats, window_tokens, window_t0 = [], {}, 0, time.perf_counter()
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                metrics = self._run_eval(step)
                if metrics:
                    self._log({"step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
                    last.update({f"eval/{k}": v for k, v in metrics.items()})
                    if dist.main:
                        bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                              for k, v in metrics.items()))
            if cfg.save_every and (step % cfg.save_every == 0 or step == cfg.steps):
                self._save(step, position)
        bar.close()
        final = self._save(step, position, final=True)
        if self.tb is not None:
            self.tb.close()
        return {**last, "step": step, "final": str(final)}


class SamplingPolicy:
    """The model a stage samples from while it trains (GRPO's rollouts, on-policy distillation).

    Plainly the model itself. Under FSDP its parameters are shards that only the loop's wrapped
    forward gathers, and every rank would have to run the same forward passes in step (sampled
    lengths differ), so sampling runs on a plain replica, copied from the model before it is
    sharded and refreshed from the shards before each use (every rank gathers every tensor, in the
    same order).
    """

    def __init__(self, model: nn.Module | None, fsdp: bool):
        self.replica = copy.deepcopy(model).eval().requires_grad_(False) if fsdp and model is not None else None

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> nn.Module:
        if self.replica is None:
            return model
        from torch.distributed.tensor import DTensor

        # parameters, not state_dict(): inside the wrapped forward (on-policy distillation) the root's
        # parameters are gathered plain tensors, and FSDP's state-dict hooks would reshard them
        own = dict(self.replica.to(next(model.parameters()).device).named_parameters())
        for k, v in model.named_parameters():
            own[k].copy_(v.full_tensor() if isinstance(v, DTensor) else v)
        return self.replica


def train(config: TrainConfig, model: nn.Module, tokenizer, stage, evaluate: Callable | None = None,
          stage_name: str | None = None) -> dict:
    """Run the loop; returns the last logged metrics plus `final` (the saved model folder)."""
    return Trainer(config, model, tokenizer, stage, evaluate, stage_name).run()
