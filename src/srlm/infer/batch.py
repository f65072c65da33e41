"""Continuous batching over token ids: a running batch that sequences join and leave between steps.

A server cannot wait for a whole batch to finish before starting the next request. `DecodeBatch`
holds one KV cache for every live row; `add` prefills new prompts (one left-padded batch,
each prompt once for its `n` rows) and appends their rows; `step` samples one token for every
row with that row's own settings (temperature, top-k/p, min-p, seed, stop ids, token limit,
logprobs, thinking budget), drops the rows that hit a stop id or their limit, and feeds the rest
one token forward; `remove` drops rows at once (a stop string seen in the text, a client gone).
Between calls the cache holds every live row's tokens and `logits` its next-token scores.

All rows share the cache's write slot: a row's tokens are right-aligned at it, the slots before
its first token are masked out, and its positions count from its own first token, so a row
computes what it would alone. A prompt longer than the filled part shifts the cache right; when
the cache is full, slots that no live row uses are dropped on the left, and it grows (up to
`max_len`) only when that is not enough. Decode steps run on the engine's fused step.

    batch = DecodeBatch(engine)
    [[a, b]] = batch.add([RowRequest(prompt_ids, n=2, sampling=SamplingParams(temperature=0.7, max_new_tokens=64),
                                     seed=1)])
    while len(batch):
        for out in batch.step():   # RowStep(key, token, logprob, top_logprobs, finish)
            ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from srlm.errors import SrlmError
from srlm.infer.decode import prefill
from srlm.infer.sampling import SamplingParams, sample_rows
from srlm.model.cache import KVCache


@dataclass
class RowRequest:
    """One prompt and how to continue it; `n` rows share its prefill."""

    prompt: Sequence[int]
    n: int = 1
    #: how to draw: temperature, top-k/p, min-p and max_new_tokens (also capped by the batch's `max_len`);
    #: the repetition penalty is not applied in a shared batch
    sampling: SamplingParams = field(default_factory=SamplingParams)
    #: a seed makes the request's draws its own: the same tokens whatever else is in the batch
    seed: int | None = None
    #: None = the engine's stop ids (eos, end of turn); [] = never stop on an id
    stop_token_ids: Sequence[int] | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    #: at most this many tokens inside <think>...</think>, then </think> is forced
    thinking_budget: int | None = None


@dataclass
class RowStep:
    key: int
    token: int
    #: log-probability of `token` (see srlm.infer.sampling), when the row asked for it
    logprob: float | None
    #: [(token id, logprob)] of the most likely tokens, when the row asked for them
    top_logprobs: list[tuple[int, float]] | None
    #: "stop" (a stop id, included as `token`), "length" (max_new_tokens or max_len), None = the row goes on
    finish: str | None


# per-row state, kept aligned with the cache's rows
_ROW_FIELDS = (
    "lens",
    "produced",
    "limit",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "stops",
    "want_lp",
    "top_n",
    "budget",
    "in_think",
    "think_count",
    "group",
    "logits",
)


class DecodeBatch:
    def __init__(self, engine, max_len: int | None = None, seed: int | None = None):
        """`max_len`: most tokens (prompt + new) a row may hold; default the model's context."""
        self.engine = engine
        self.model = engine.model
        self.device = engine.device
        self.vocab_size = engine.vocab_size
        self.max_len = engine.max_context if max_len is None else int(max_len)
        if not 2 <= self.max_len <= engine.max_context:
            raise SrlmError(
                f"max_len={max_len}: must be between 2 and the model's context "
                f"(max_position_embeddings = {engine.max_context})"
            )
        self.keys: list[int] = []
        self.cache: KVCache | None = None
        self._next_key = 0
        self._next_group = 0
        self._generators: dict[int, torch.Generator] = {}
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(int(seed) if seed is not None else int(torch.seed() % (2**63)))
        self._fused = engine.fused_decoder(self.max_len)
        self._clear()

    def __len__(self) -> int:
        return len(self.keys)

    def _refresh(self) -> None:
        """Python-side summaries of the rows, so a step asks the tensors nothing it can know beforehand."""
        self._sampling = bool((self.temperature > 0).any())
        self._want_lp = bool(self.want_lp.any())
        self._top_n = int(self.top_n.max()) if len(self.keys) else 0
        self._budgets = self.engine.think_ids is not None and bool((self.budget >= 0).any())
        # a seeded request's rows are contiguous (added together, and removals keep the order): each run of
        # rows draws its noise from its own generator, unseeded runs from the batch's
        groups = self.group.tolist()
        self._draws = []
        start = 0
        for i in range(1, len(groups) + 1):
            if i == len(groups) or groups[i] != groups[start]:
                g = groups[start]
                self._draws.append((start, i, self._generators[g] if g >= 0 else self._gen))
                start = i

    def _clear(self) -> None:
        dev = self.device
        self.keys = []
        self.cache = None
        self._generators.clear()

        def long():
            return torch.zeros(0, dtype=torch.long, device=dev)

        self.lens, self.produced, self.limit, self.top_k, self.top_n = long(), long(), long(), long(), long()
        self.budget, self.think_count, self.group = long(), long(), long()
        self.temperature = torch.zeros(0, device=dev)
        self.top_p, self.min_p = torch.zeros(0, device=dev), torch.zeros(0, device=dev)
        self.want_lp = torch.zeros(0, dtype=torch.bool, device=dev)
        self.in_think = torch.zeros(0, dtype=torch.bool, device=dev)
        self.stops = torch.zeros(0, 0, dtype=torch.long, device=dev)
        self.logits = torch.zeros(0, self.vocab_size, device=dev)
        self._refresh()

    # ------------------------------------------------------------------ joining
    def _check(self, i: int, r: RowRequest) -> list[int]:
        where = f"request {i}"
        prompt = [int(t) for t in r.prompt]
        if not prompt:
            raise SrlmError(f"{where}: the prompt is empty: give at least one token")
        bad = next((t for t in prompt if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise SrlmError(f"{where}: token id {bad} is outside the model's vocabulary [0, {self.vocab_size})")
        if len(prompt) >= self.max_len:
            raise SrlmError(
                f"{where}: the prompt has {len(prompt)} tokens; at most {self.max_len - 1} fit "
                f"(max_len {self.max_len}) with room for one new token"
            )
        if not isinstance(r.n, int) or r.n < 1:
            raise SrlmError(f"{where}: n={r.n!r} must be a positive integer")
        if not isinstance(r.sampling, SamplingParams):
            raise SrlmError(f"{where}: sampling must be a SamplingParams, got {type(r.sampling).__name__}")
        if r.sampling.repetition_penalty != 1.0:
            raise SrlmError(f"{where}: repetition_penalty is not supported in a shared batch; leave it at 1")
        if not isinstance(r.top_logprobs, int) or r.top_logprobs < 0:
            raise SrlmError(f"{where}: top_logprobs={r.top_logprobs!r} must be a non-negative integer")
        if r.thinking_budget is not None:
            if not isinstance(r.thinking_budget, int) or r.thinking_budget < 0:
                raise SrlmError(f"{where}: thinking_budget={r.thinking_budget!r} must be a non-negative integer")
            if self.engine.think_ids is None:
                raise SrlmError(
                    "thinking_budget needs a tokenizer with single-token <think> and </think>; "
                    "this checkpoint's tokenizer has none"
                )
        return prompt

    def _in_thought(self, prompt: list[int]) -> bool:
        """The prompt ends inside a thought when its last <think> comes after its last </think> (Qwen3 templates)."""
        if self.engine.think_ids is None:
            return False
        start, end = self.engine.think_ids
        s = max((i for i, t in enumerate(prompt) if t == start), default=-1)
        e = max((i for i, t in enumerate(prompt) if t == end), default=-1)
        return s > e

    @torch.inference_mode()
    def add(self, requests: Sequence[RowRequest]) -> list[list[int]]:
        """Prefill the prompts together and append their rows; returns the row keys of each request (n each).

        Every request is checked before anything changes: a bad one raises `SrlmError` and adds nothing.
        """
        prompts = [self._check(i, r) for i, r in enumerate(requests)]
        if not prompts:
            return []
        self._fused = self.engine.fused_decoder(self.max_len)  # rebuilt if the weights changed since
        dev, model = self.device, self.model
        B = len(prompts)
        lens = [len(p) for p in prompts]
        P = max(lens)
        tokenizer = self.engine.tokenizer
        pad = tokenizer.pad_token_id if tokenizer is not None else 0
        ids = torch.full((B, P), pad, dtype=torch.long, device=dev)
        mask = torch.ones(B, P, dtype=torch.bool, device=dev)
        for i, p in enumerate(prompts):
            ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long, device=dev)
            mask[i, : P - len(p)] = False
        fresh = KVCache.for_model(model, B, P, dtype=self.engine.cache_dtype, device=dev)
        logits = prefill(model, self._fused, ids, mask if min(lens) != P else None, fresh)
        ns = [r.n for r in requests]
        rows = torch.arange(B, device=dev).repeat_interleave(torch.tensor(ns, device=dev))
        fresh.select(rows)

        if not self.keys:
            self._clear()
            cap = min(self.max_len, max(2 * P, P + 64))
            self.cache = KVCache.for_model(model, 0, cap, dtype=self.engine.cache_dtype, device=dev)
            self.cache.pos = P
        elif P > self.cache.pos:
            self.cache.realign(P, max(self.cache.max_len, min(self.max_len, P + 64)))
        self.cache.extend(fresh)

        keys, new = [], {name: [] for name in _ROW_FIELDS if name not in ("stops", "logits")}
        default_stops = self.engine.stop_token_ids
        stop_lists = []
        for r, p in zip(requests, prompts):
            group = -1
            if r.seed is not None:
                group = self._next_group
                self._next_group += 1
                g = torch.Generator(device=dev)
                g.manual_seed(int(r.seed) % (2**63))
                self._generators[group] = g
            stops = list(default_stops if r.stop_token_ids is None else [int(t) for t in r.stop_token_ids])
            thought = self._in_thought(p)
            row_keys = list(range(self._next_key, self._next_key + r.n))
            self._next_key += r.n
            keys.append(row_keys)
            for _ in range(r.n):
                new["lens"].append(len(p))
                new["produced"].append(0)
                sp = r.sampling
                new["limit"].append(min(sp.max_new_tokens, self.max_len - len(p)))
                new["temperature"].append(float(sp.temperature))
                new["top_k"].append(int(sp.top_k or 0))
                new["top_p"].append(float(sp.top_p))
                new["min_p"].append(float(sp.min_p))
                new["want_lp"].append(bool(r.logprobs or r.top_logprobs))
                new["top_n"].append(int(r.top_logprobs))
                new["budget"].append(-1 if r.thinking_budget is None else int(r.thinking_budget))
                new["in_think"].append(thought)
                new["think_count"].append(0)
                new["group"].append(group)
                stop_lists.append(stops)
        for name, values in new.items():
            old = getattr(self, name)
            setattr(self, name, torch.cat([old, torch.tensor(values, dtype=old.dtype, device=dev)]))
        width = max([self.stops.shape[1]] + [len(s) for s in stop_lists])
        stops = torch.full((len(stop_lists), width), -1, dtype=torch.long, device=dev)
        for i, s in enumerate(stop_lists):
            stops[i, : len(s)] = torch.tensor(s, dtype=torch.long, device=dev)
        old = torch.full((len(self.keys), width), -1, dtype=torch.long, device=dev)
        old[:, : self.stops.shape[1]] = self.stops
        self.stops = torch.cat([old, stops])
        self.logits = torch.cat([self.logits, logits[rows].float()])
        self.keys = self.keys + [k for ks in keys for k in ks]
        self._refresh()
        return keys

    # ------------------------------------------------------------------ leaving
    def _keep(self, keep: torch.Tensor) -> None:
        """Keep only the rows at indices `keep` (sorted)."""
        if keep.numel() == 0:
            self._clear()
            return
        kept = keep.tolist()
        self.keys = [self.keys[i] for i in kept]
        for name in _ROW_FIELDS:
            setattr(self, name, getattr(self, name)[keep])
        self.cache.select(keep)
        alive = set(self.group.tolist())
        for g in [g for g in self._generators if g not in alive]:
            del self._generators[g]
        self._refresh()

    def remove(self, keys) -> None:
        """Drop these rows now (unknown keys are ignored)."""
        gone = set(keys)
        if not gone & set(self.keys):
            return
        self._keep(
            torch.tensor([i for i, k in enumerate(self.keys) if k not in gone], dtype=torch.long, device=self.device)
        )

    # ------------------------------------------------------------------ one step
    def _noise(self) -> torch.Tensor | None:
        if not self._sampling:
            return None
        noise = torch.empty(len(self.keys), device=self.device)
        for start, end, g in self._draws:  # once per run of rows (a seeded request, or unseeded ones), not per row
            noise[start:end] = torch.rand(end - start, generator=g, device=self.device)
        return noise

    @torch.inference_mode()
    def step(self) -> list[RowStep]:
        """One new token for every live row; rows that stop leave the batch, the rest move one token on."""
        if not self.keys:
            return []
        think = self.engine.think_ids
        force = None
        if self._budgets:  # thoughts are only followed while some row has a budget (rows join with their state)
            force = self.in_think & (self.budget >= 0) & (self.think_count >= self.budget)
        tok, lp, top = sample_rows(
            self.logits,
            self.temperature,
            self.top_k,
            self.top_p,
            self.min_p,
            self._noise(),
            force=force,
            force_token=think[1] if think else 0,
            want_logprobs=self._want_lp,
            top_logprobs=self._top_n,
        )
        if self._budgets:
            is_start, is_end = tok == think[0], tok == think[1]
            self.think_count = torch.where(
                is_start, 0, torch.where(self.in_think & ~is_end, self.think_count + 1, self.think_count)
            )
            self.in_think = (self.in_think | is_start) & ~is_end
        self.produced += 1
        hit = (tok[:, None] == self.stops).any(dim=1) if self.stops.shape[1] else torch.zeros_like(self.want_lp)
        done = hit | (self.produced >= self.limit)

        toks, hits, dones, wants = tok.tolist(), hit.tolist(), done.tolist(), self.want_lp.tolist()
        lps = lp.tolist() if lp is not None else None
        tops = None
        if top is not None:
            tops = (top[0].tolist(), top[1].tolist())
            counts = self.top_n.tolist()
        out = []
        for i, key in enumerate(self.keys):
            finish = ("stop" if hits[i] else "length") if dones[i] else None
            row_top = None
            if tops is not None and counts[i]:
                row_top = list(zip(tops[0][i][: counts[i]], tops[1][i][: counts[i]]))
            out.append(RowStep(key, toks[i], lps[i] if lps is not None and wants[i] else None, row_top, finish))
        if any(dones):
            keep = (~done).nonzero().squeeze(1)
            tok = tok[keep]
            self._keep(keep)
        if self.keys:
            self._forward(tok)
        return out

    def _forward(self, tok: torch.Tensor) -> None:
        cache = self.cache
        if cache.pos + 1 > cache.max_len:
            live = int(self.lens.max())  # every slot before the longest row's first one is unused
            cap = cache.max_len
            if live + 1 > cap // 2:
                cap = min(self.max_len, max(2 * cap, live + 1))
            cache.realign(live, cap)
        t = cache.pos
        start = t - self.lens
        bias = None
        if bool((start > 0).any()):
            slots = torch.arange(t + 1, device=self.device)
            bias = torch.zeros(len(self.keys), t + 1, device=self.device).masked_fill_(
                slots[None, :] < start[:, None], float("-inf")
            )
        if self._fused is not None:
            logits = self._fused.step(tok, self.lens, cache, bias)
        else:
            mask = bias == 0 if bias is not None else None
            logits = self.model(tok[:, None], position_ids=self.lens[:, None], attention_mask=mask, kv_cache=cache)[
                :, -1
            ]
        self.lens = self.lens + 1
        self.logits = logits.float()
