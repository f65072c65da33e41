"""Turning next-token logits into tokens: penalties, temperature, truncation, a seeded draw.

`SamplingParams` validates the knobs once (bad values raise `SrlmError`, naming the
field); `sample(logits, params, generator, seen)` is vectorised over the batch:
(rows, vocab) logits in, (rows,) token ids and their log-probabilities out. The
log-probability is that of the chosen token under softmax(logits / temperature) with
the repetition penalty applied and no truncation — the quantity a trainer recomputes
from a forward pass (GRPO's old-policy log-probs); greedy reports it at temperature 1.
Randomness comes only from the `torch.Generator` passed in, so a seed reproduces a run.

`sample_rows` is the same draw with settings that differ from row to row (a server's running
batch mixes requests): per-row temperature, top-k, top-p and min-p tensors, and the uniform draws
given by the caller, who owns the generators (one per seeded request).

A draw is one uniform number per row, by inverse CDF: the token whose interval of the cumulative
distribution holds it (`draw`). Vocabularies run to 150k tokens and rollouts to dozens of rows, so
nothing per step touches a random number per vocabulary entry (an exponential race did: 71 ms a step
at 32 x 151,936, more than the model's step) or sorts the vocabulary (top-p looks at the top 1,024
first, and sorts everything only for rows whose nucleus is wider).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from srlm.errors import SrlmError


@dataclass(frozen=True)
class SamplingParams:
    #: 0 = greedy (argmax); > 0 divides the logits
    temperature: float = 1.0
    #: keep only the k most likely tokens (0 / None = off)
    top_k: int | None = None
    #: nucleus sampling: the smallest set of tokens whose probability reaches top_p (1.0 = off)
    top_p: float = 1.0
    #: drop tokens less likely than min_p x the most likely one (0 = off; arXiv 2407.01082)
    min_p: float = 0.0
    #: CTRL-style (arXiv 1909.05858): logits of tokens already in prompt or output are divided
    #: by the penalty when positive, multiplied when negative (1.0 = off), as transformers does
    repetition_penalty: float = 1.0
    #: new tokens at most per completion
    max_new_tokens: int = 256

    def __post_init__(self):
        def bad(name, msg):
            raise SrlmError(f"sampling parameter {name}={getattr(self, name)!r} {msg}")

        if (
            not isinstance(self.temperature, (int, float))
            or self.temperature != self.temperature
            or self.temperature < 0
        ):
            bad("temperature", "must be >= 0 (0 = greedy)")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
            bad("top_k", "must be a non-negative integer (0 or None = off)")
        if not isinstance(self.top_p, (int, float)) or not (0 < self.top_p <= 1):
            bad("top_p", "must be in (0, 1] (1 = off)")
        if not isinstance(self.min_p, (int, float)) or not (0 <= self.min_p < 1):
            bad("min_p", "must be in [0, 1) (0 = off)")
        if not isinstance(self.repetition_penalty, (int, float)) or not (self.repetition_penalty > 0):
            bad("repetition_penalty", "must be > 0 (1 = off)")
        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 1:
            bad("max_new_tokens", "must be a positive integer")

    def replace(self, **changes) -> "SamplingParams":
        """A copy with `changes` (checked like the original)."""
        return dataclasses.replace(self, **changes) if changes else self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def truncates(self) -> bool:
        return bool(self.top_k) or self.top_p < 1 or self.min_p > 0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """`seen` (rows, vocab) bool marks tokens already in each row's prompt or output."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


#: top-p looks for the nucleus among this many most likely tokens, then among the second number; a full
#: sort of the vocabulary is the last resort (at 32 x 151,936: top 1,024 in 10 ms, 16,384 in 33, all 172)
TOP_P_CANDIDATES = (1024, 16384)


def _drop_outside_nucleus(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """logits set to the dtype's lowest value where top-p drops a token: the tokens before it, most likely
    first, already reach top_p (rows,) in probability; the first one always stays."""
    neg = torch.finfo(logits.dtype).min
    vocab = logits.shape[-1]
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    for k in (*(k for k in TOP_P_CANDIDATES if k < vocab), vocab):
        values, order = torch.topk(logits, k, dim=-1) if k < vocab else torch.sort(logits, dim=-1, descending=True)
        p_sorted = torch.exp(values - lse)  # most likely first
        cum = p_sorted.cumsum(dim=-1)
        if k == vocab or bool((cum[:, -1] >= top_p).all()):  # every row's nucleus is among these k
            break
    keep = (cum - p_sorted) < top_p[:, None]
    out = torch.full_like(logits, neg)
    return out.scatter_(-1, order, torch.where(keep, values, neg))


def draw(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Tokens (rows,) drawn from probs (rows, vocab) by inverse CDF, with one uniform [0, 1) draw per row:
    token i when uniform x the row's total falls in [cum_{i-1}, cum_i). Tokens of probability 0 are never drawn."""
    cum = probs.cumsum(dim=-1)
    target = uniform.to(cum.dtype)[:, None] * cum[:, -1:]
    tokens = torch.searchsorted(cum, target, right=True).squeeze(-1)
    return tokens.clamp(max=probs.shape[-1] - 1)


def truncate(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Set to -inf every token that top-k, top-p and min-p exclude (always keeping the best one)."""
    neg = torch.finfo(logits.dtype).min
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, neg)
    if params.min_p > 0:
        probs = torch.softmax(logits, dim=-1)
        floor = probs.amax(dim=-1, keepdim=True) * params.min_p
        logits = logits.masked_fill(probs < floor, neg)
    if params.top_p < 1:
        logits = _drop_outside_nucleus(logits, logits.new_full((logits.shape[0],), params.top_p))
    return logits


def sample(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None,
    want_logprobs: bool = False,
    force: tuple[torch.Tensor, int] | None = None,
):
    """(rows, vocab) logits -> (token ids (rows,), logprobs (rows,) float32 or None).

    `force=(rows_mask, token)` replaces the draw by `token` where `rows_mask` is set (the
    thinking budget's forced </think>); its log-probability is reported like any other.
    """
    logits = logits.float()
    if params.repetition_penalty != 1.0 and seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        tokens = logits.argmax(dim=-1)
        scaled = logits
    else:
        scaled = logits / params.temperature if params.temperature != 1.0 else logits
        kept = truncate(scaled, params) if params.truncates else scaled
        probs = torch.softmax(kept, dim=-1)
        tokens = draw(probs, torch.rand(probs.shape[0], generator=generator, device=probs.device))
    if force is not None:
        tokens = torch.where(force[0], force[1], tokens)
    logprobs = None
    if want_logprobs:
        logprobs = torch.log_softmax(scaled, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    return tokens, logprobs


def truncate_rows(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """`truncate` with per-row settings: top_k (rows,) long (0 = off), top_p and min_p (rows,) float."""
    neg = torch.finfo(logits.dtype).min
    vocab = logits.shape[-1]
    if bool((top_k > 0).any()):
        k = torch.where((top_k > 0) & (top_k < vocab), top_k, vocab)
        kth = torch.topk(logits, int(k.max()), dim=-1).values.gather(1, (k - 1)[:, None])
        logits = logits.masked_fill(logits < kth, neg)
    if bool((min_p > 0).any()):
        probs = torch.softmax(logits, dim=-1)
        floor = probs.amax(dim=-1, keepdim=True) * min_p[:, None]
        logits = logits.masked_fill(probs < floor, neg)
    if bool((top_p < 1).any()):
        logits = _drop_outside_nucleus(logits, top_p.to(logits.dtype))
    return logits


def sample_rows(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    noise: torch.Tensor | None,
    force: torch.Tensor | None = None,
    force_token: int = 0,
    want_logprobs: bool = False,
    top_logprobs: int = 0,
):
    """`sample` with one setting per row: (rows, vocab) logits -> (tokens, logprobs or None, top or None).

    temperature (rows,) float (0 = greedy for that row); top_k (rows,) long; top_p, min_p (rows,) float.
    `noise`: (rows,) uniform [0, 1) draws (None when every row is greedy); row i then draws exactly
    what `sample` draws from a generator whose next uniform is noise[i]. `force` (rows,) bool replaces the
    draw by `force_token`. `top_logprobs` > 0 also returns the (ids, logprobs) of that many most
    likely tokens per row, (rows, top_logprobs) each, under the same distribution as the logprobs.
    """
    logits = logits.float()
    greedy = temperature <= 0
    tokens = logits.argmax(dim=-1)
    scaled = logits
    if not bool(greedy.all()):
        if noise is None:
            raise ValueError("sample_rows: rows with temperature > 0 need noise (a uniform draw per row)")
        scaled = logits / torch.where(greedy, 1.0, temperature.float())[:, None]
        kept = truncate_rows(scaled, top_k, top_p, min_p)
        probs = torch.softmax(kept, dim=-1)
        tokens = torch.where(greedy, tokens, draw(probs, noise))
    if force is not None:
        tokens = torch.where(force, force_token, tokens)
    logprobs = top = None
    if want_logprobs or top_logprobs:
        logp = torch.log_softmax(scaled, dim=-1)
        logprobs = logp.gather(-1, tokens[:, None]).squeeze(-1)
        if top_logprobs:
            values, ids = torch.topk(logp, min(top_logprobs, logp.shape[-1]), dim=-1)
            top = (ids, values)
    return tokens, logprobs, top
