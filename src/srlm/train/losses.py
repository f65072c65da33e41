"""Losses for distillation and GRPO: pure functions of tensors, no model, no loop.

- `token_logprobs(h, weight, targets)`: log p(target) (and the entropy) per row of hidden states,
  computed `chunk_size` rows at a time with each chunk checkpointed, so memory never holds more than
  a budget of logits (`srlm.model.transformer.logit_chunk_rows`; a small vocabulary fits in one
  chunk, which is then not recomputed) -- the same trick as `chunked_cross_entropy`.
- `distill_loss(h_s, w_s, h_t, w_t, kind, beta, temperature)`: logit-level distillation between a
  student and a teacher over the same token positions, from the two models' final hidden states and
  `lm_head` weights, chunked the same way. `kind` is "forward_kl" KL(teacher || student) (Hinton et
  al. 2015, arXiv 1503.02531), "reverse_kl" KL(student || teacher) (MiniLLM, arXiv 2306.08543), or
  "jsd", the generalised Jensen-Shannon divergence JSD(beta) of GKD (Agarwal et al. 2024,
  arXiv 2306.13649). Sums over rows; the caller divides.
- `group_advantages(rewards, group_size, scale)`: GRPO's group-relative advantages (DeepSeekMath,
  arXiv 2402.03300), optionally without the division by the group std (Dr. GRPO, arXiv 2503.20783).
- `grpo_loss(logps, old_logps, advantages, mask, ...)`: the clipped-ratio policy loss with separate
  low / high clip ranges (DAPO clip-higher, arXiv 2503.14476), an optional k3 KL estimate to a
  reference policy (Schulman 2020, "Approximating KL divergence"), and the three loss aggregations
  `grpo`, `dr_grpo` and `dapo`. Returns (loss, stats).

Shapes: hidden rows are (N, hidden), selected token positions already gathered by the caller;
per-token GRPO tensors are (B, T) with a 0/1 (or bool) `mask` marking completion tokens.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from srlm.model.transformer import logit_chunk_rows, over_row_chunks

DISTILL_KINDS = ("forward_kl", "reverse_kl", "jsd")


class LossType(NamedTuple):
    """How a GRPO loss type aggregates per-token terms: sum over rows of `row_weight(mask) *`
    (each row's token sum), divided by `units(mask, max_len)`. The training loop weighs
    micro-batches by the same `units`, so a loss type is defined in exactly one place."""

    row_weight: Callable[[torch.Tensor], torch.Tensor]  # mask (B, T) -> (B,)
    units: Callable[[torch.Tensor, int], torch.Tensor]  # (mask (B, T), max_len) -> scalar


LOSS_TYPES: dict[str, LossType] = {
    # mean over each sequence's tokens, then over sequences
    "grpo": LossType(lambda m: 1.0 / m.sum(-1).clamp(min=1.0), lambda m, max_len: m.new_tensor(float(m.shape[0]))),
    # every token over a constant: sequences x the length limit
    "dr_grpo": LossType(lambda m: m.new_ones(m.shape[0]), lambda m, max_len: m.new_tensor(float(m.shape[0] * max_len))),
    # every token over the batch's token count
    "dapo": LossType(lambda m: m.new_ones(m.shape[0]), lambda m, max_len: m.sum()),
}
ADVANTAGE_SCALES = ("group", "batch", "none")


# ---------------------------------------------------------------------------------------------
# Per-token log-probabilities (policy-gradient losses)


def _logp_chunk(h, targets, weight, temperature: float):
    logits = F.linear(h, weight).float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def token_logprobs(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(targets), entropy) per row of `h` (N, hidden) under logits `h @ weight.T / temperature`.

    Float32 results of shape (N,). The entropy is returned for logging; it carries no gradient
    worth using (callers detach it). The temperature must match the one used for sampling, or the
    importance ratios of GRPO are biased.
    """
    n = h.shape[0]
    if n == 0:
        z = h.sum(-1).float() * 0.0
        return z, z.detach()
    outs = over_row_chunks(
        _logp_chunk, (h, targets), (weight, temperature), chunk_size or logit_chunk_rows(weight.shape[0])
    )
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs]).detach()


# ---------------------------------------------------------------------------------------------
# Distillation


def _divergence(s_logp: torch.Tensor, t_logp: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    """Per-row divergence between the teacher's and the student's log-distributions (N, V) -> (N,)."""
    if kind == "jsd" and beta == 0.0:
        kind = "forward_kl"
    elif kind == "jsd" and beta == 1.0:
        kind = "reverse_kl"
    if kind == "forward_kl":  # KL(T || S) = sum_v T (log T - log S): mode-covering
        return (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    if kind == "reverse_kl":  # KL(S || T): mode-seeking
        return (s_logp.exp() * (s_logp - t_logp)).sum(-1)
    # GKD's JSD(beta) = beta KL(T || M) + (1 - beta) KL(S || M), M = beta T + (1 - beta) S.
    # Near beta = 0 it behaves like beta * KL(T || S), near 1 like (1 - beta) * KL(S || T).
    m_logp = torch.logsumexp(torch.stack([t_logp + math.log(beta), s_logp + math.log1p(-beta)]), dim=0)
    kl_t = (t_logp.exp() * (t_logp - m_logp)).sum(-1)
    kl_s = (s_logp.exp() * (s_logp - m_logp)).sum(-1)
    return beta * kl_t + (1.0 - beta) * kl_s


def _distill_chunk(h_s, h_t, w_s, w_t, kind: str, beta: float, temperature: float):
    s_logits = F.linear(h_s, w_s).float() / temperature
    with torch.no_grad():
        t_logits = F.linear(h_t.to(w_t.dtype), w_t).float() / temperature
    v = min(s_logits.shape[-1], t_logits.shape[-1])
    # Qwen pads the embedding past the tokenizer; ids beyond the shared range are never real tokens.
    s_logp = torch.log_softmax(s_logits[:, :v], dim=-1)
    t_logp = torch.log_softmax(t_logits[:, :v], dim=-1)
    return _divergence(s_logp, t_logp, kind, beta).sum()


def distill_loss(
    h_student: torch.Tensor,
    w_student: torch.Tensor,
    h_teacher: torch.Tensor,
    w_teacher: torch.Tensor,
    kind: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Sum over rows of the divergence between teacher and student next-token distributions.

    `h_student` (N, Hs) and `h_teacher` (N, Ht) are final hidden states at the same N token
    positions; `w_*` the `lm_head` weights (V, H). The teacher side never gets gradients. Both
    distributions are softened by `temperature` and the result is scaled by temperature**2 so
    gradient magnitudes stay comparable across temperatures (Hinton et al. 2015). When the two
    vocabularies differ in padded size, the shared first min(V_s, V_t) ids are compared (the
    caller checks the tokenizers match).
    """
    if kind not in DISTILL_KINDS:
        raise ValueError(f"distillation kind {kind!r}; choose one of {', '.join(DISTILL_KINDS)}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"JSD beta must be in [0, 1], got {beta}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if h_student.shape[0] != h_teacher.shape[0]:
        raise ValueError(f"student has {h_student.shape[0]} positions, teacher {h_teacher.shape[0]}")
    n = h_student.shape[0]
    if n == 0:
        return h_student.sum() * 0.0
    h_teacher = h_teacher.detach()
    w_teacher = w_teacher.detach()
    # two vocabularies' logits per row (student and teacher)
    parts = over_row_chunks(
        _distill_chunk,
        (h_student, h_teacher),
        (w_student, w_teacher, kind, beta, temperature),
        chunk_size or logit_chunk_rows(w_student.shape[0] + w_teacher.shape[0]),
    )
    return sum(parts[1:], parts[0]) * (temperature**2)


# ---------------------------------------------------------------------------------------------
# GRPO


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """Advantages of B = prompts * group_size rewards, laid out group after group.

    A_i = r_i - mean(group), divided by the group's std (`scale="group"`, GRPO), by the whole
    batch's std (`"batch"`, as TRL's scale_rewards="batch"), or not at all (`"none"`, Dr. GRPO,
    arXiv 2503.20783, which shows the division biases updates towards too-easy / too-hard
    questions). A group whose rewards all tie gets advantage 0 and so no gradient.
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"advantage scale {scale!r}; choose one of {', '.join(ADVANTAGE_SCALES)}")
    r = rewards.float().view(-1, group_size)
    adv = r - r.mean(dim=1, keepdim=True)
    if scale == "group":
        adv = adv / (r.std(dim=1, keepdim=True, unbiased=True).nan_to_num(0.0) + eps)
    elif scale == "batch":
        adv = adv / (rewards.float().std().nan_to_num(0.0) + eps)
    return adv.view(-1)


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    loss_type: str = "grpo",
    max_len: int | None = None,
    truncated: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO's clipped surrogate loss over completion tokens.

    logps      (B, T) log-probs of the sampled tokens under the policy being trained (with grad).
    old_logps  (B, T) the same under the policy that sampled them; None = `logps.detach()`
               (one optimisation pass per rollout batch: ratios are exactly 1, clipping never bites).
    advantages (B,)   one per completion (see `group_advantages`).
    mask       (B, T) 1 on completion tokens, 0 on padding.
    ref_logps  (B, T) log-probs under a frozen reference, needed when `beta > 0`.
    truncated  (B,)   bool, completions cut at the length limit; their tokens are masked out
               (DAPO's overlong filtering: a cut answer is neither right nor wrong).

    Per token: ratio = exp(logp - old), loss = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)
    + beta * k3, with k3 = exp(ref - logp) - (ref - logp) - 1 >= 0, an unbiased low-variance
    estimate of KL(policy || ref) (DeepSeekMath, arXiv 2402.03300). Aggregation (`loss_type`):
      "grpo"     mean over each sequence's tokens, then mean over sequences (the original paper;
                 long wrong answers are penalised less per token -- a length bias);
      "dr_grpo"  sum over all tokens / (B * max_len), a constant (Dr. GRPO, arXiv 2503.20783);
      "dapo"     sum over all tokens / number of tokens in the batch (DAPO, arXiv 2503.14476).
    Stats (floats): kl, clip_fraction (tokens whose clipped term was the active one),
    clip_low / clip_high fractions, ratio_mean.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    if beta > 0 and ref_logps is None:
        raise ValueError("beta > 0 needs ref_logps from the reference policy")
    mask = mask.to(logps.dtype)
    if truncated is not None:
        mask = mask * (~truncated.bool()).to(mask.dtype)[:, None]
    if old_logps is None:
        old_logps = logps.detach()
    adv = advantages.to(logps.dtype)[:, None]
    log_ratio = (logps - old_logps).clamp(max=20.0)  # exp overflows long before any useful ratio
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = None
    if beta > 0:
        d = ref_logps - logps
        kl = torch.exp(d) - d - 1.0
        per_token = per_token + beta * kl
    masked = per_token * mask
    n_tok = mask.sum()
    agg = LOSS_TYPES[loss_type]
    units = agg.units(mask, max_len if max_len is not None else logps.shape[1])
    loss = (masked.sum(-1) * agg.row_weight(mask)).sum() / units.clamp(min=1.0)

    with torch.no_grad():
        denom = n_tok.clamp(min=1.0)
        low = ((ratio < 1.0 - epsilon_low) & (adv < 0)).to(mask.dtype) * mask
        high = ((ratio > 1.0 + epsilon_high) & (adv > 0)).to(mask.dtype) * mask
        stats = {
            "clip_low": float(low.sum() / denom),
            "clip_high": float(high.sum() / denom),
            "clip_fraction": float((low + high).sum() / denom),
            "ratio_mean": float((ratio * mask).sum() / denom),
            "kl": float((kl * mask).sum() / denom) if kl is not None else 0.0,
        }
    return loss, stats
