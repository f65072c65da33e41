"""GRPO: reinforcement learning from a task's verifier (DeepSeekMath, arXiv 2402.03300).

Supports: prompts from any registered generate-kind task (synthetic suites, GSM8K files); G
completions per prompt sampled by srlm's engine with the policy being trained; rewards = a
weighted sum of named reward functions (`correct`: the task's verifier; `format`: a
`<think>...</think>` block then the answer line); group-normalised advantages, with or without
the std division (Dr. GRPO); the clipped surrogate with clip-higher (DAPO); `grpo` / `dr_grpo` /
`dapo` loss aggregation; masking of truncated completions; an optional k3 KL penalty to a frozen
reference (`beta`; at 0 no reference model is kept); `num_iterations` optimisation passes per
rollout batch (old log-probs recomputed once after sampling, so importance ratios are exact);
LoRA; resume (the rollout buffer and counters live in the checkpoint).

A reward function or verifier that raises, or takes longer than `verifier_timeout_s`, scores 0
for that completion; the run goes on and the counts are logged (`reward_errors`,
`verifier_timeouts`). Logged per step: reward, accuracy, format, completion length, truncated
fraction, clip fraction, KL, entropy, generation vs optimisation seconds.

    srlm train grpo --config src/srlm/recipes/configs/grpo-tiny.yaml init_from=runs/sft/final

`batch_size` counts completions per optimizer step (prompts x num_generations). Rollouts are
made in `before_step` every `num_iterations` steps; the loop then runs its micro-batches over
that buffer.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from srlm.errors import SrlmError
from srlm.infer.sampling import SamplingParams
from srlm.train.config import TrainConfig
from srlm.train.distributed import SamplingPolicy, world_and_rank
from srlm.train.loop import train, uses_bf16
from srlm.train.lora import LoRAConfig
from srlm.train.losses import ADVANTAGE_SCALES, LOSS_TYPES, group_advantages, grpo_loss, token_logprobs
from srlm.train.rewards import REWARDS, reward_correct, reward_format, score  # noqa: F401  (GRPO's rewards)
from srlm.train.rollout import pad_rows, sample
from srlm.train.sft import prepare  # the base model, with LoRA adapters when enabled
from srlm.train.stage import Stage


@dataclass
class GRPOConfig(TrainConfig):
    #: registered task supplying prompts and the verifier (e.g. synth-gsm, gsm8k)
    task: str = "synth-gsm"
    #: keyword options for the task, e.g. {difficulties: [1, 2, 3]}; {data: FILE} for file-backed tasks
    task_options: dict = field(default_factory=dict)
    #: train prompts to draw from (null: all the task gives)
    num_prompts: int | None = 2000
    #: system message before each prompt (null: none)
    system: str | None = None
    #: completions per prompt (the group size G)
    num_generations: int = 8
    #: how rollouts are sampled: {temperature, top_p, top_k, min_p, max_new_tokens}; the loss's log-probs
    #: read the temperature from this same object
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=1.0, max_new_tokens=256))
    #: reward name -> weight; names: correct (the task's verifier), format (<think>...</think> then the answer)
    rewards: dict = field(default_factory=lambda: {"correct": 1.0, "format": 0.1})
    #: seconds a verifier may take before its completion scores 0 (0: no limit)
    verifier_timeout_s: float = 5.0
    #: KL coefficient to the frozen starting policy (0: no reference model, the DAPO / Dr. GRPO default)
    beta: float = 0.0
    #: lower clip range of the importance ratio
    epsilon: float = 0.2
    #: upper clip range (null: = epsilon); DAPO's clip-higher uses 0.28
    epsilon_high: float | None = None
    #: grpo (per-sequence mean) | dr_grpo (sum / (G * max_new_tokens)) | dapo (token mean over the batch)
    loss_type: str = "dapo"
    #: divide advantages by the group's std (group), the batch's (batch), or not at all (none: Dr. GRPO)
    scale_rewards: str = "group"
    #: optimizer steps per rollout batch (PPO epochs, mu in the paper); > 1 makes importance ratios matter
    num_iterations: int = 1
    #: drop completions cut at max_new_tokens from the loss (DAPO overlong filtering)
    mask_truncated_completions: bool = False
    #: LoRA adapters instead of full fine-tuning (`lora.enabled=true`)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    batch_size: int = 32
    lr: float = 1e-5
    warmup_steps: int = 0
    schedule: str = "constant"
    max_grad_norm: float = 1.0
    log_every: int = 1


# ---------------------------------------------------------------------------------------------
# The stage


def _check(config: GRPOConfig, world: int = 1) -> None:
    if config.loss_type not in LOSS_TYPES:
        raise SrlmError(f"loss_type={config.loss_type!r}: use one of {', '.join(LOSS_TYPES)}")
    if config.scale_rewards not in ADVANTAGE_SCALES:
        raise SrlmError(f"scale_rewards={config.scale_rewards!r}: use one of {', '.join(ADVANTAGE_SCALES)}")
    if config.num_generations < 2:
        raise SrlmError(f"num_generations={config.num_generations}: GRPO compares completions within a group; use >= 2")
    if config.batch_size % config.num_generations:
        raise SrlmError(
            f"batch_size={config.batch_size} (completions per step) must be a multiple of "
            f"num_generations={config.num_generations}"
        )
    if config.num_iterations < 1:
        raise SrlmError(f"num_iterations={config.num_iterations} must be >= 1")
    unknown = [n for n in config.rewards if n not in REWARDS]
    if unknown or not config.rewards:
        raise SrlmError(f"rewards: unknown reward(s) {unknown}; known: {', '.join(REWARDS)}")
    if config.beta < 0:
        raise SrlmError(f"beta={config.beta} must be >= 0")


class GRPOStage(Stage):
    name = "grpo"

    def __init__(self, config: GRPOConfig, tokenizer, model=None, examples: list | None = None):
        from srlm.data.tasks import get_task

        _check(config)
        self.config = config
        self.tokenizer = tokenizer
        options = dict(config.task_options)
        data = options.pop("data", None)
        self.task = get_task(config.task, **options)
        if self.task.kind != "generate":
            raise SrlmError(
                f"task {config.task!r} is scored by log-likelihood; GRPO needs a task whose answers "
                f"are generated and verified"
            )
        self.examples = (
            examples if examples is not None else self.task.load(split="train", data=data, limit=config.num_prompts)
        )
        if not self.examples:
            raise SrlmError(f"task {config.task!r} gave no training prompts")
        self.prompt_ids = [self._prompt(ex) for ex in self.examples]
        self.pad_id = tokenizer.pad_token_id
        self.ref = None
        if config.beta > 0:
            if model is None:
                raise SrlmError("beta > 0 needs the starting model for the reference policy")
            self.ref = copy.deepcopy(model).eval().requires_grad_(False)
        self.sampling_policy = SamplingPolicy(model, config.fsdp)
        self.buffer: dict[str, Any] | None = None
        self.rollout_index = -1
        self.totals = {"reward_errors": 0, "verifier_timeouts": 0, "rollouts": 0}
        self._opt_t0: float | None = None
        self._last_opt_s = 0.0

    def _prompt(self, ex) -> list[int]:
        msgs = [{"role": "system", "content": self.config.system}] if self.config.system else []
        msgs.append({"role": "user", "content": ex.prompt})
        return self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)

    @property
    def prompts_per_step(self) -> int:
        return self.config.batch_size // self.config.num_generations

    def _prompt_indices(self, rollout: int) -> list[int]:
        n, p = len(self.examples), self.prompts_per_step
        out = []
        for k in range(rollout * p, (rollout + 1) * p):
            epoch, off = divmod(k, n)
            perm = np.random.default_rng([self.config.seed, epoch]).permutation(n)
            out.append(int(perm[off]))
        return out

    # ---- rollouts ------------------------------------------------------------------------
    @torch.no_grad()
    def _rollout(self, model, rollout: int) -> dict[str, Any]:

        cfg, G = self.config, self.config.num_generations
        dist = torch.distributed
        device = next(model.parameters()).device
        t0 = time.perf_counter()
        idx = self._prompt_indices(rollout)
        # under DDP each rank samples its share of the prompts and the groups are gathered, so every
        # rank holds the same buffer; under FSDP the ranks sample from replicas and all sample
        # everything, with the same seed
        world, rank = world_and_rank()
        n_gen, gen_rank = (1, 0) if cfg.fsdp else (world, rank)
        mine = idx[gen_rank::n_gen]
        policy = self.sampling_policy(model)
        groups = sample(
            policy,
            self.tokenizer,
            [self.prompt_ids[i] for i in mine],
            sampling=cfg.sampling,
            n=G,
            seed=(cfg.seed * 100_003 + rollout) * n_gen + gen_rank,
            dtype=torch.bfloat16 if uses_bf16(cfg, device) else None,
        )
        if n_gen > 1:
            shares = [None] * n_gen
            dist.all_gather_object(shares, groups)
            groups = [shares[k % n_gen][k // n_gen] for k in range(len(idx))]  # back in prompt order
        t_gen = time.perf_counter() - t0
        comps = [c for g in groups for c in g]
        examples = [self.examples[i] for i in idx for _ in range(G)]
        prompts = [self.prompt_ids[i] for i in idx for _ in range(G)]
        t1 = time.perf_counter()
        # correctness is always measured for the logs, weighted 0 when it is not a reward
        weights = {"correct": 0.0, **cfg.rewards}
        rewards, per, counts = score(
            [c.text or "" for c in comps], examples, self.task, weights, cfg.verifier_timeout_s
        )
        if world > 1:
            # a verifier's time limit can trip on one rank and not another: rank 0's scores count
            for t in (rewards, *per.values()):
                on_dev = t.to(device)  # NCCL broadcasts device tensors only
                dist.broadcast(on_dev, 0)
                t.copy_(on_dev.cpu())
        t_score = time.perf_counter() - t1
        self.totals["reward_errors"] += counts["errors"]
        self.totals["verifier_timeouts"] += counts["timeouts"]
        self.totals["rollouts"] += 1

        ids, mask = pad_rows(prompts, [c.token_ids for c in comps], self.pad_id)
        truncated = torch.tensor([c.finish_reason == "length" for c in comps])
        adv = group_advantages(rewards, G, cfg.scale_rewards)
        if world > 1:
            # the loop hands each rank its rows of one global buffer: a buffer that differed between
            # ranks would train on a silently wrong batch, so compare fingerprints once per rollout
            w = torch.arange(1, ids.numel() + 1, dtype=torch.float64).view_as(ids)
            mine_fp = (float((ids.double() * w).sum()), float(rewards.double().sum()))
            fps = [None] * world
            dist.all_gather_object(fps, mine_fp)
            if any(fp != fps[0] for fp in fps):
                raise RuntimeError(f"GRPO rollout {rollout}: the ranks' rollout buffers differ ({fps})")
        buf = {
            "input_ids": ids,
            "mask": mask,
            "advantages": adv,
            "truncated": truncated,
            "rewards": rewards,
            "prompt_len": torch.tensor([len(p) for p in prompts]),
        }
        if cfg.num_iterations > 1:  # rows whose advantage is 0 are never run (see `_informative`)
            buf["old_logps"] = self._logps(
                policy, ids, mask, buf["prompt_len"], device, rows=(adv != 0) if cfg.beta == 0 else None
            )
        if self.ref is not None:
            self.ref.to(device)
            buf["ref_logps"] = self._logps(self.ref, ids, mask, buf["prompt_len"], device)
        n_tok = mask.sum(1).float()
        buf["stats"] = {
            "reward": float(rewards.mean()),
            **{f"reward_{k}": float(v.mean()) for k, v in per.items()},
            "accuracy": float(per["correct"].mean()),
            "completion_len": float(n_tok.mean()),
            "truncated": float(truncated.float().mean()),
            "solved_groups": float((per["correct"].view(-1, G).max(1).values > 0).float().mean()),
            "time_generate_s": t_gen,
            "generation_ranks": float(n_gen),
            "time_score_s": t_score,
            "reward_errors": float(self.totals["reward_errors"]),
            "verifier_timeouts": float(self.totals["verifier_timeouts"]),
        }
        return buf

    def _logps(self, model, ids, mask, prompt_len, device, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probs of the completion tokens (0 elsewhere, and on rows not in `rows`)."""
        was = model.training
        model.eval()
        try:
            # the same precision as the loop's forward, so importance ratios start at exactly 1
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(self.config, device)):
                out = torch.zeros(mask.shape, dtype=torch.float32)
                idx = torch.arange(ids.shape[0]) if rows is None else rows.nonzero().squeeze(1)
                mb = max(1, self.config.batch_size // max(1, self.config.grad_accum))
                for s in range(0, len(idx), mb):
                    sel = idx[s : s + mb]
                    x, m = ids[sel].to(device), mask[sel].to(device)
                    lp, _ = self._completion_logps(model, x, m, prompt_len[sel])
                    part = torch.zeros(m.shape, dtype=torch.float32)
                    part[m.cpu()] = lp.float().cpu()
                    out[sel] = part
        finally:
            model.train(was)
        return out

    def _completion_logps(self, model, ids, mask, prompt_len=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p, entropy) of the completion tokens, in the order of `mask.nonzero()`.

        Rows of one group share their prompt: each run of rows with the same prompt runs it once
        (`shared_prefix_hidden_states`) instead of once per completion -- the same numbers for
        about half the work at GRPO's usual prompt and completion lengths. One plain forward instead
        without prompt lengths (a buffer from an older checkpoint), under gradient checkpointing, and
        under FSDP (whose per-layer collectives need the same number of layer calls on every rank).
        """
        w, temp = model.lm_head.weight, self.config.sampling.temperature
        if prompt_len is None or self.config.fsdp or (model.model.gradient_checkpointing and model.training):
            h = model.hidden_states(ids)[:, :-1][mask]
            return token_logprobs(h, w, ids[:, 1:][mask], temp)
        hs, r = [], 0
        plens, ids_host = prompt_len.tolist(), ids.cpu()  # the grouping is worked out on the host
        while r < ids.shape[0]:
            p = plens[r]
            e = r + 1  # rows r..e-1: the same prompt, one after another in the buffer
            while e < ids.shape[0] and plens[e] == p and torch.equal(ids_host[e, :p], ids_host[r, :p]):
                e += 1
            m = mask[r:e, p - 1 :]
            s = int(m.any(0).nonzero()[-1]) + 1 if bool(m.any()) else 1  # completion columns needed
            h_pre, h_suf = model.shared_prefix_hidden_states(ids[r : r + 1, :p], ids[r:e, p : p + s])
            # position p - 1 (the prompt's last) predicts the first completion token, and so on
            h = torch.cat([h_pre[:, -1:].expand(e - r, 1, -1), h_suf[:, : s - 1]], dim=1)
            hs.append(h[m[:, :s]])
            r = e
        return token_logprobs(torch.cat(hs), w, ids[:, 1:][mask], temp)

    def before_step(self, step: int, model) -> None:
        now = time.perf_counter()
        if self._opt_t0 is not None:
            self._last_opt_s = now - self._opt_t0
        rollout = step // self.config.num_iterations
        if rollout != self.rollout_index or self.buffer is None:
            self.buffer = self._rollout(model, rollout)
            self.rollout_index = rollout
        self._opt_t0 = time.perf_counter()

    # ---- loop interface --------------------------------------------------------------------
    def batches(self, start: int, micro_batch_size: int) -> Iterator[dict]:
        per_step = self.config.batch_size // micro_batch_size
        k = start
        while True:
            j = k % per_step
            buf = self.buffer
            if buf is None:
                raise RuntimeError("GRPO batches() read before before_step() made rollouts")
            sl = slice(j * micro_batch_size, (j + 1) * micro_batch_size)
            batch = {
                key: buf[key][sl]
                for key in ("input_ids", "mask", "advantages", "truncated", "old_logps", "ref_logps", "prompt_len")
                if key in buf
            }
            k += 1
            yield batch

    def _units(self, batch) -> float:
        cfg = self.config
        mask = batch["mask"]
        if cfg.mask_truncated_completions:
            mask = mask & ~batch["truncated"][:, None]
        return float(LOSS_TYPES[cfg.loss_type].units(mask.float(), cfg.sampling.max_new_tokens))

    def weight(self, batch) -> float:
        return self._units(batch)

    def _informative(self, batch) -> dict:
        """`batch` cut to the rows and columns that can move the policy.

        With no KL term (beta 0) a completion whose advantage is 0 (its whole group scored alike)
        adds exactly 0 to the loss and its gradient, so it is not run through the model (DAPO
        filters such groups for the same reason); one row is kept when all are 0, so every
        parameter still takes part in the backward pass (DDP/FSDP expect it). Columns past the
        longest kept sequence are dropped. Callers weight the result by the *whole* batch's units,
        so the step is exactly the one over every row.
        """
        if self.config.beta == 0:
            keep = batch["advantages"] != 0
            if not bool(keep.any()):
                keep[0] = True
                # idle rows have no old log-probs (never computed): ratios of 1 keep the logged stats sane
                batch = {k: v for k, v in batch.items() if k != "old_logps"}
            if not bool(keep.all()):
                batch = {k: v[keep] for k, v in batch.items()}
        cols = batch["mask"].any(0).nonzero()
        last = int(cols[-1]) + 1 if len(cols) else 1  # mask[:, t] marks token t + 1
        if last < batch["mask"].shape[1]:
            batch = {
                k: (v[:, : last + 1] if k == "input_ids" else v[:, :last] if v.dim() == 2 else v)
                for k, v in batch.items()
            }
        return batch

    def loss(self, model, batch):
        cfg = self.config
        batch = self._informative(batch)
        ids, mask = batch["input_ids"], batch["mask"]
        lp, ent = self._completion_logps(model, ids, mask, batch.get("prompt_len"))
        logps = torch.zeros(mask.shape, dtype=lp.dtype, device=lp.device).masked_scatter(mask, lp)
        old = batch.get("old_logps")
        ref = batch.get("ref_logps")
        eps_hi = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
        loss, stats = grpo_loss(
            logps,
            old,
            batch["advantages"],
            mask,
            ref_logps=ref,
            beta=cfg.beta,
            epsilon_low=cfg.epsilon,
            epsilon_high=eps_hi,
            loss_type=cfg.loss_type,
            max_len=cfg.sampling.max_new_tokens,
            truncated=batch["truncated"] if cfg.mask_truncated_completions else None,
        )
        stats = {
            **self.buffer["stats"],
            **stats,
            "entropy": float(ent.mean()) if ent.numel() else 0.0,
            "time_optimize_s": self._last_opt_s,
        }
        # loss * its own units is the sum over the kept rows; the skipped rows' terms are exactly 0
        return loss * self._units(batch), stats

    def state_dict(self) -> dict:
        buf = None
        if self.buffer is not None:
            buf = {k: v for k, v in self.buffer.items() if torch.is_tensor(v)}
            buf["stats"] = {k: float(v) for k, v in self.buffer["stats"].items()}
        return {"totals": dict(self.totals), "rollout_index": self.rollout_index, "buffer": buf}

    def load_state_dict(self, d: dict) -> None:
        self.totals.update(d.get("totals", {}))
        self.rollout_index = int(d.get("rollout_index", -1))
        self.buffer = d.get("buffer")


def run(config: GRPOConfig, evaluate=None) -> dict:
    model, tokenizer = prepare(config)
    stage = GRPOStage(config, tokenizer, model=model)
    return train(config, model, tokenizer, stage, evaluate=evaluate, stage_name="grpo")


# ---------------------------------------------------------------------------------------------
# What `srlm run` asks of a stage module


def recipe_config(config: dict, task: str, task_options: dict) -> dict:
    """A recipe stage's config with the recipe's task as its prompts (its training-set size aside)."""
    config.setdefault("task", task)
    config["task_options"] = {
        **{k: v for k, v in task_options.items() if k != "n_train"},
        **(config.get("task_options") or {}),
    }
    return config


def report_notes(result: dict, out_dir: Path) -> dict:
    """Rewards that failed or timed out over the run, from its metrics log, for the run's report."""
    from srlm.train.checkpointing import METRICS, read_metrics

    path = Path(out_dir) / METRICS
    if not path.is_file():
        return {}
    _, records, _, _ = read_metrics(path)
    last = next((r for r in reversed(records) if "reward_errors" in r), {})
    return {k: int(last[k]) for k in ("reward_errors", "verifier_timeouts") if k in last}


Config = GRPOConfig
