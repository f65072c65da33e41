"""The one training loop every stage shares: optimizer, schedule, accumulation, checkpoints, resume, DDP/FSDP.

    train(config, model, tokenizer, stage, evaluate=None) -> dict

A *stage* (pretrain, SFT, KD, GRPO) supplies the data and the loss; the loop owns everything else.
The contract is `srlm.train.stage.Stage`: `batches` and `loss`, with `weight`, `before_step`,
`validate` and `state_dict` / `load_state_dict` defaulted. Process groups, DDP / FSDP wrapping and
sampling replicas are in `srlm.train.distributed`; checkpoint files and resume in
`srlm.train.checkpointing`.

The loop: AdamW (fused where available; weight decay on matrices only), linear warmup then
cosine/linear/constant decay to lr*min_lr_ratio, gradient accumulation, clipping, bf16
autocast (CPU and GPU), activation checkpointing, per-step reseeding (RNG state is a pure
function of seed, step and rank, so resume needs no RNG files), checkpoints, `metrics.jsonl`
(plus TensorBoard when installed), progress (`srlm.progress`), evaluation every `eval_every` steps through
`stage.validate` and the caller's `evaluate(model, tokenizer, step) -> dict` (the eval harness
sits above train, so the caller passes it in).

Checkpoints (`srlm.train.checkpointing`): `out_dir/checkpoint-NNNNNN/` is an HF folder (LoRA merged;
the adapter in PEFT's format under `adapter/`) + `train_config.yaml` + `training_state.pt` (optimizer,
step, data position, stage state, LoRA weights; loaded with weights_only=True) + `training_state.json`
(the manifest: sizes and checksums of the other files). Each is written as a hidden temporary folder,
flushed and renamed into place, so a kill never leaves a half checkpoint under a name a later run
would load; resume verifies a checkpoint before loading it and falls back past a damaged one. The
newest `keep_last` are kept; `out_dir/final/` holds the last model (a run resumed at its last step
only writes it). Under `torchrun` the loop uses DDP (gloo on CPU, NCCL on GPU), or FSDP2 `fully_shard`
with `fsdp=true`; only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from srlm.atomic import check_writable, clean_temporaries, write_text_atomic
from srlm.errors import SrlmError
from srlm.model.checkpoint import fast_bf16
from srlm.train import checkpointing as ckpt_io
from srlm.train.checkpointing import RESUMABLE_CHANGES, DamagedCheckpoint, list_checkpoints  # noqa: F401 (re-exported)
from srlm.train.config import TrainConfig, check_limits, to_yaml
from srlm.train.distributed import ProcessGroup, device_for, wrap
from srlm.train.lora import LoRALinear, lora_state_dict, merged_model, save_adapter
from srlm.train.stage import Stage

# ----------------------------------------------------------------------------- model / tokenizer


def build_model(config: TrainConfig, need_tokenizer: bool = True):
    """(model in fp32 on CPU, tokenizer) from `config.model` / `init_from` / `tokenizer`.

    `init_from` (a checkpoint) gives architecture and weights; else `model` is a checkpoint or
    a preset (random init seeded by `config.seed`, vocabulary and special ids from the tokenizer).
    A checkpoint is a folder, a .gguf file or a Hub id (at `config.revision`).
    """
    from srlm.model import load_model, load_tokenizer, preset

    source = (
        _checkpoint(config.init_from, config.revision, "init_from")
        if config.init_from
        else _checkpoint(config.model, config.revision, "model")
    )
    tokenizer = None
    if config.tokenizer:
        tokenizer = load_tokenizer(config.tokenizer)
        if tokenizer is None:
            raise SrlmError(f"tokenizer={config.tokenizer}: no tokenizer.json there")
    elif source is not None:
        tokenizer = load_tokenizer(source)
    if tokenizer is None and need_tokenizer:
        raise SrlmError(
            f"no tokenizer: model={config.model!r} is a preset (or its folder has no tokenizer.json); "
            f"pass tokenizer=FOLDER (train one with `srlm tokenizer train`)"
        )
    if source is not None:
        if config.model_overrides:
            raise SrlmError(
                f"model_overrides={config.model_overrides} reshapes a preset, but the model comes from "
                f"the checkpoint folder {source}; drop model_overrides or start from a preset"
            )
        model = load_model(source, dtype="float32")
    else:
        overrides = {}
        if tokenizer is not None:
            overrides = dict(
                vocab_size=tokenizer.vocab_size,
                eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        torch.manual_seed(config.seed)
        from srlm.model import CausalLM

        model = CausalLM(preset(config.model, **{**overrides, **config.model_overrides}))
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise SrlmError(
            f"tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
            f"{model.config.vocab_size}; use the tokenizer the model was trained with"
        )
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
    check_limits(config)
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
        raise SrlmError(
            f"batch_size={config.batch_size} must be a multiple of grad_accum x world size "
            f"= {config.grad_accum} x {world}"
        )
    return config.batch_size // per


# ----------------------------------------------------------------------------- the loop


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        model: nn.Module,
        tokenizer,
        stage: Stage,
        evaluate: Callable | None = None,
        stage_name: str | None = None,
    ):
        self.config, self.model, self.tokenizer, self.stage, self.evaluate = config, model, tokenizer, stage, evaluate
        self.stage_name = stage_name or getattr(stage, "name", type(stage).__name__)
        self.dist = ProcessGroup()
        self.out = Path(config.out_dir)
        self.lora = getattr(model, "lora_config", None)
        self.wrapped: nn.Module | None = None

    # -- files
    def _save(self, step: int, position: int, final: bool = False) -> Path:
        """Rank 0 writes; every rank calls (FSDP gathers the full state on all ranks)."""
        state_model = self._full_model()
        optim_state = None if final else self._optim_state()
        path = self.out / ("final" if final else f"checkpoint-{step:06d}")
        if self.dist.main:
            training_state = None
            if not final:
                stage_state = self.stage.state_dict()
                training_state = {
                    "optimizer": optim_state,
                    "stage": stage_state,
                    "lora": lora_state_dict(state_model) if self.lora else {},
                }
            adapter = None
            if self.lora is not None:

                def adapter(folder):
                    save_adapter(
                        state_model,
                        self.lora,
                        folder / "adapter",
                        base_model=self.config.init_from or self.config.model,
                    )

            meta = {"stage": self.stage_name, "step": step, "data_position": position, "world_size": self.dist.world}
            ckpt_io.write_checkpoint(
                path,
                export_model(state_model),
                self.tokenizer,
                to_yaml(self.config),
                meta,
                training_state,
                write_extra=adapter,
            )
            if not final:
                ckpt_io.rotate(self.out, path, self.config.keep_last)
        self.dist.barrier()
        return path

    def _full_model(self) -> nn.Module:
        if not self.config.fsdp or self.wrapped is None:
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

        return get_optimizer_state_dict(
            self.wrapped, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    def _load(self, ckpt: Path) -> tuple[int, int]:
        """Load `ckpt` into the model (and stage); `DamagedCheckpoint` when its files are not what it recorded."""
        meta = ckpt_io.verify(ckpt)
        ckpt_io.check_compatible(self.config, ckpt, self.stage_name, meta)
        try:
            state = torch.load(ckpt / ckpt_io.STATE, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated or garbled: torch raises RuntimeError, EOFError, pickle errors, ...
            raise DamagedCheckpoint(f"{ckpt_io.STATE} cannot be read ({str(e).splitlines()[0][:200]})") from None
        if self.lora is not None:
            missing = set(lora_state_dict(self.model)) - set(state["lora"])
            if missing:
                raise SrlmError(
                    f"{ckpt}: training_state.pt lacks LoRA weights {sorted(missing)[:2]}; not a LoRA run of this config"
                )
            self.model.load_state_dict(state["lora"], strict=False)
        else:
            from srlm.model import load_model

            try:
                saved = load_model(ckpt, dtype="float32")
            except SrlmError as e:  # the config matched, so unreadable or misshapen weights mean damage
                raise DamagedCheckpoint(str(e).removeprefix(f"{ckpt}: ")) from None
            self.model.load_state_dict(saved.state_dict(), strict=True)
        self._optim_load = state["optimizer"]
        self.stage.load_state_dict(state.get("stage", {}))
        return int(meta["step"]), int(meta["data_position"])

    def _resume(self) -> tuple[Path | None, int, int]:
        """(checkpoint, step, data position) to continue from: the newest intact one (see checkpointing)."""
        candidates, explicit = ckpt_io.resume_candidates(self.config)
        ckpt, loaded, damaged = ckpt_io.choose(candidates, explicit, self._load)
        if ckpt is None:
            return None, 0, 0
        self.dist.barrier()  # every rank has chosen before rank 0 renames anything
        if damaged and self.dist.main:
            ckpt_io.set_aside(damaged, ckpt)
        if self.dist.main and ckpt.parent.resolve() == self.out.resolve():
            ckpt_io.rotate(
                self.out, ckpt, self.config.keep_last
            )  # a kill may have come between a save and its rotation
        step, position = loaded
        return ckpt, step, position

    def _log(self, record: dict):
        if not self.dist.main:
            return
        ckpt_io.append_metrics(self.out / ckpt_io.METRICS, record)
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    # -- evaluation
    def _run_eval(self, step: int) -> dict:
        out: dict[str, Any] = {}
        self.model.eval()
        try:
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
        self.device = device_for(self.config.device, self.dist)
        self.dist.init(self.device)
        try:
            return self._run()
        finally:
            self.dist.close()

    def _run(self) -> dict:
        cfg, dist = self.config, self.dist
        micro = self._check_and_prepare()
        self._optim_load = None
        ckpt, step, position = self._resume()
        if step > cfg.steps:
            raise SrlmError(f"{ckpt} is already at step {step} > steps={cfg.steps}; raise steps to train further")
        logged = ckpt_io.start_metrics(self.out, step if ckpt is not None else None) if dist.main else []
        if step == cfg.steps:
            # killed after the last checkpoint, before (or while) writing final/: only final/ is missing
            if dist.main:
                print(
                    f"srlm train: {ckpt.name} is at the last step ({step}); writing {self.out / 'final'}",
                    file=sys.stderr,
                    flush=True,
                )
            self.wrapped = None  # every rank holds the whole model, loaded from the checkpoint
            final = self._save(step, position, final=True)
            return {**_last_logged(logged, step), "step": step, "final": str(final)}
        model = self._wrap_and_optimizer()
        from srlm.progress import Progress

        batches = self.stage.batches(position, micro)
        per_step = cfg.grad_accum * dist.world
        bar = Progress(
            cfg.steps,
            desc=self.out.name or self.stage_name,
            initial=step,
            enabled=dist.main and cfg.progress,
            every=cfg.log_every * max(1, -(-(cfg.steps - step) // (20 * cfg.log_every))),
        )
        window = _Window()
        last: dict[str, Any] = {}
        while step < cfg.steps:
            lr = self._step(model, step, batches, position, window)
            position += per_step
            step += 1
            saving = bool(cfg.save_every) and (step % cfg.save_every == 0 or step == cfg.steps)
            # a checkpoint's log is complete up to its step: a run resumed from it re-logs only later steps
            if step % cfg.log_every == 0 or step == cfg.steps or saving:
                last = self._log_window(step, lr, window, bar)
            bar.update(1)
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                last.update(self._evaluate_and_log(step, bar))
            if saving:
                self._save(step, position)
        bar.close()
        final = self._save(step, position, final=True)
        if self.tb is not None:
            self.tb.close()
        return {**last, "step": step, "final": str(final)}

    def _check_and_prepare(self) -> int:
        """Check the config, set threads, check and clean the output folder; returns the micro-batch size."""
        cfg, dist = self.config, self.dist
        micro = _validate_config(cfg, dist.world)
        self.bf16 = uses_bf16(cfg, self.device)
        if cfg.dtype in ("bf16", "bfloat16") and not fast_bf16(self.device) and dist.main:
            print(
                "srlm train: warning: this CPU has no fast bf16 (no AVX-512-BF16/AMX); bf16 autocast will be "
                "far slower than dtype=fp32",
                flush=True,
            )
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        self.tb = None
        if dist.main:
            # before any work: an unwritable out_dir fails now, not at the first save
            check_writable(self.out, "checkpoints and metrics")
            clean_temporaries(self.out)
        return micro

    def _wrap_and_optimizer(self) -> nn.Module:
        """The model on its device, wrapped for DDP/FSDP, with its optimizer (state restored on resume)."""
        cfg, dist = self.config, self.dist
        if dist.main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out / "tb"))
            except Exception:  # tensorboard not installed
                self.tb = None
        model = self.model.to(self.device).train()
        model.model.gradient_checkpointing = cfg.gradient_checkpointing
        fsdp = cfg.fsdp and dist.enabled
        self.wrapped = wrap(model, dist, self.device, cfg.fsdp)
        self.optimizer = _optimizer(cfg, model, self.device, fsdp)
        if self._optim_load is not None:
            if fsdp:
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

                set_optimizer_state_dict(
                    self.wrapped, self.optimizer, self._optim_load, options=StateDictOptions(full_state_dict=True)
                )
            else:
                self.optimizer.load_state_dict(self._optim_load)
            self._optim_load = None
        if dist.main:
            write_text_atomic(self.out / "train_config.yaml", to_yaml(cfg))
        self.params = [p for p in model.parameters() if p.requires_grad]
        return model

    def _next(self, batches, index: int) -> dict:
        try:
            return next(batches)
        except StopIteration:
            raise SrlmError(
                f"stage {self.stage_name!r} ran out of data at micro-batch {index}; its batches() must be endless"
            ) from None

    def _step(self, model: nn.Module, step: int, batches, position: int, window: "_Window") -> float:
        """Optimizer step `step` over the next global group of micro-batches (this rank runs its share,
        the stage's `before_step` first); returns the lr."""
        cfg, dist = self.config, self.dist
        self.stage.before_step(step, model)
        torch.manual_seed(cfg.seed * 1_000_003 + step * 1_009 + dist.rank)
        lr = lr_at(cfg, step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        group = [self._next(batches, position + i) for i in range(cfg.grad_accum * dist.world)]
        total = sum(self.stage.weight(b) for b in group)
        scale = dist.world / max(total, 1e-8)
        mine = group[dist.rank * cfg.grad_accum : (dist.rank + 1) * cfg.grad_accum]
        step_loss = torch.zeros((), device=self.device)
        for i, batch in enumerate(mine):
            batch = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
            sync = i == len(mine) - 1 or not (dist.enabled and not cfg.fsdp)
            with contextlib.nullcontext() if sync else self.wrapped.no_sync():
                with self._autocast():
                    loss_sum, stats = self.wrapped(self.stage.loss, batch)
                (loss_sum * scale).backward()
            step_loss += loss_sum.detach().float()
            if "input_ids" in batch:
                window.tokens += batch["input_ids"].numel()
            for k, v in stats.items():
                window.stats.setdefault(k, []).append(v.detach().float() if torch.is_tensor(v) else float(v))
        if cfg.max_grad_norm > 0:
            window.grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        window.losses.append(step_loss / max(total, 1e-8))
        return lr

    def _log_window(self, step: int, lr: float, window: "_Window", bar) -> dict:
        """Log each step of the window (the last with lr, throughput and the stats' means); reset it."""
        dist = self.dist
        losses = dist.all_reduce(torch.stack(window.losses)).tolist()
        dt = time.perf_counter() - window.t0
        tps = window.tokens * dist.world / max(dt, 1e-9)
        first = step - len(losses) + 1
        for j, lv in enumerate(losses):
            rec = {"step": first + j, "loss": lv}
            if first + j == step:
                rec.update(lr=lr, tokens_per_s=tps, step_time_s=dt / len(losses))
                if window.grad_norm is not None:
                    rec["grad_norm"] = float(window.grad_norm)
                for k, vs in window.stats.items():
                    rec[k] = float(sum(float(v) for v in vs) / len(vs))
            self._log(rec)
        shown = {"loss": losses[-1]}
        if "reward" in rec:
            shown["reward"] = rec["reward"]  # the window mean, logged with the last step
        bar.set(**shown, tok_s=tps)
        window.reset()
        return {"step": step, "loss": losses[-1]}

    def _evaluate_and_log(self, step: int, bar) -> dict:
        metrics = self._run_eval(step)
        if not metrics:
            return {}
        self._log({"step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
        if self.dist.main:
            bar.write(
                f"step {step}: "
                + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
            )
        return {f"eval/{k}": v for k, v in metrics.items()}


class _Window:
    """What the loop gathers between two log lines."""

    def __init__(self):
        self.grad_norm = None
        self.reset()

    def reset(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.stats: dict[str, list] = {}
        self.tokens, self.t0 = 0, time.perf_counter()


def _last_logged(records: list[dict], step: int) -> dict:
    """What `train` returns for a run that ended at `step`, rebuilt from its metrics log."""
    out: dict[str, Any] = {}
    for r in records:
        if r.get("step") == step:
            if "loss" in r:
                out["loss"] = r["loss"]
            out.update({k: v for k, v in r.items() if k.startswith("eval/")})
    return out


def train(
    config: TrainConfig,
    model: nn.Module,
    tokenizer,
    stage: Stage,
    evaluate: Callable | None = None,
    stage_name: str | None = None,
) -> dict:
    """Run the loop; returns the last logged metrics plus `final` (the saved model folder)."""
    return Trainer(config, model, tokenizer, stage, evaluate, stage_name).run()
