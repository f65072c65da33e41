"""Batched generation over token ids with a preallocated KV cache.

The engine's core knows nothing about tokenization: prompts are lists of token ids,
completions are lists of token ids. Each distinct prompt is prefilled once (prompts of
different lengths left-padded in one batch, with per-row positions and masks, so a
row's tokens are those it would get alone) and its cache rows are copied for its `n`
samples. Every decode step feeds one token per row; a row stops on a stop id, on
`max_new_tokens`, or on a text condition; once half the rows have stopped, the batch
is compacted (`KVCache.select`) so finished rows stop costing compute.

The thin text layer on top (needs a tokenizer): stop strings, a stop callback or regex
on the text so far, `generate_text` (strings or chat messages in), `stream` (text deltas
out, via the tokenizer's streaming decoder), and a thinking budget (at most N tokens
inside <think>...</think>; at the budget the engine forces </think>).

    engine = Engine(model, tokenizer)
    out = engine.generate([[1, 2, 3], [4, 5]], n=4, max_new_tokens=64, temperature=0.8, seed=0,
                          return_logprobs=True)   # list (per prompt) of list (n) of Completion
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from srlm.errors import SrlmError
from srlm.infer.decode import FusedDecoder, prefill
from srlm.infer.sampling import SamplingParams, sample
from srlm.model.cache import KVCache

THINK_START, THINK_END = "<think>", "</think>"


@dataclass
class Completion:
    #: generated ids; a stop id that ended the row is included (the model chose it)
    token_ids: list[int]
    #: decoded text without the final stop id, cut before a matched stop string (None without a tokenizer)
    text: str | None
    #: "stop" (stop id, stop string or stop condition) or "length" (max_new_tokens or the context end)
    finish_reason: str
    #: log-probability of each token in token_ids (see srlm.infer.sampling), when requested
    logprobs: list[float] | None = None


class _TextStops:
    """Per-row incremental text for stop strings and stop conditions (only built when asked for)."""

    def __init__(self, tokenizer, rows: int, prompt_tails: list[list[int]], stop_strings, stop_condition):
        self.decoders = [tokenizer.stream_decoder(tail) for tail in prompt_tails]
        self.texts = [""] * rows
        self.stop_strings = list(stop_strings or [])
        self.longest = max((len(s) for s in self.stop_strings), default=0)
        self.condition = stop_condition

    def check(self, row_ids: list[int], tokens: list[int], active: list[bool]) -> list[bool]:
        out = []
        for r, tok, live in zip(row_ids, tokens, active):
            if not live:
                out.append(False)
                continue
            delta = self.decoders[r].push(tok)
            if not delta:
                out.append(False)
                continue
            text = self.texts[r] = self.texts[r] + delta
            tail = text[-(self.longest + len(delta)) :]
            hit = any(s in tail for s in self.stop_strings)
            if not hit and self.condition is not None:
                hit = bool(self.condition(text))
            out.append(hit)
        return out


def _regex_condition(pattern: str | re.Pattern) -> Callable[[str], bool]:
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern
    return lambda text: rx.search(text) is not None


class Engine:
    """Generation, streaming and log-likelihoods for a `CausalLM` (optionally with its tokenizer).

    `dtype`: decode in this dtype instead of the weights' (e.g. torch.bfloat16 for a trainer's fp32
    policy under bf16 autocast: its rollouts then read half the bytes), where the fused step runs and
    every projection is a plain float layer; elsewhere the weights' dtype. `loglikelihood` is unaffected.
    """

    def __init__(self, model, tokenizer=None, dtype: torch.dtype | None = None):
        # the train/eval mode is left alone (a trainer's model stays in training mode; srlm's decoder
        # has no dropout, so outputs do not depend on it)
        self.model = model
        self.tokenizer = tokenizer
        self._fused = None
        self.config = model.config
        p = next(model.parameters())
        self.device = p.device
        self.cache_dtype = p.dtype if p.is_floating_point() else torch.float32
        self.dtype = None
        if dtype is not None and FusedDecoder.supported(model):
            self.cache_dtype = FusedDecoder.compute_dtype(model, dtype)
            self.dtype = self.cache_dtype
        self.vocab_size = self.config.vocab_size
        self.max_context = self.config.max_position_embeddings
        self.think_ids = None
        if tokenizer is not None:
            start, end = tokenizer.token_to_id(THINK_START), tokenizer.token_to_id(THINK_END)
            if start is not None and end is not None:
                self.think_ids = (start, end)

    # ------------------------------------------------------------------ helpers
    @property
    def stop_token_ids(self) -> list[int]:
        """Default stop ids: the tokenizer's (eos, end-of-turn) and the model config's eos ids."""
        ids = set(self.config.eos_token_ids)
        if self.tokenizer is not None:
            ids |= set(self.tokenizer.eos_token_ids)
        return sorted(ids)

    def fused_decoder(self, max_len: int) -> FusedDecoder | None:
        """The eager decode step on fused weights (srlm.infer.decode), made once and refreshed when a
        parameter changed, with rotary tables up to `max_len` positions; None where the model does not
        support it (its layers then run their own forward)."""
        if not FusedDecoder.supported(self.model):
            return None
        if self._fused is None:
            self._fused = FusedDecoder(self.model, self.dtype)
        self._fused.refresh(max_len)
        return self._fused

    def _check_prompts(self, prompts) -> list[list[int]]:
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
            raise SrlmError("prompts must be a non-empty list of token-id lists (use generate_text for strings)")
        out = []
        for i, p in enumerate(prompts):
            if isinstance(p, torch.Tensor):
                p = p.tolist()
            if isinstance(p, (str, bytes)) or not isinstance(p, Sequence):
                raise SrlmError(
                    f"prompt {i} is a {type(p).__name__}, expected a list of token ids (use generate_text for strings)"
                )
            if len(p) == 0:
                raise SrlmError(f"prompt {i} is empty: give at least one token (e.g. the BOS token)")
            p = [int(t) for t in p]
            if min(p) < 0 or max(p) >= self.vocab_size:
                bad = next(t for t in p if t < 0 or t >= self.vocab_size)
                raise SrlmError(f"prompt {i} has token id {bad}, outside the model's vocabulary [0, {self.vocab_size})")
            if len(p) >= self.max_context:
                raise SrlmError(
                    f"prompt {i} has {len(p)} tokens; the model's context (max_position_embeddings) is "
                    f"{self.max_context}: shorten the prompt to leave room for new tokens"
                )
            out.append(p)
        return out

    def _initial_think_state(self, prompts: list[list[int]]) -> list[bool]:
        """A prompt ends inside a thought when its last <think> comes after its last </think> (e.g. Qwen3 templates)."""
        start, end = self.think_ids
        state = []
        for p in prompts:
            s = max((i for i, t in enumerate(p) if t == start), default=-1)
            e = max((i for i, t in enumerate(p) if t == end), default=-1)
            state.append(s > e)
        return state

    # ------------------------------------------------------------------ core loop
    def _steps(
        self,
        prompts,
        n,
        max_new_tokens,
        params: SamplingParams,
        seed,
        stop_ids,
        return_logprobs,
        thinking_budget,
        text_stops,
        state: dict,
        emit: bool = False,
    ) -> Iterator:
        """Generator over decode steps; with `emit`, yields (row ids, their new tokens, stopped-now flags)
        for the rows live at the start of the step.

        Fills `state` with out tokens, lengths, finish codes and logprobs for the caller.
        """
        model, dev = self.model, self.device
        B = len(prompts)
        R = B * n
        lens = [len(p) for p in prompts]
        P = max(lens)
        limits_b = [min(max_new_tokens, self.max_context - L) for L in lens]
        T = max(limits_b)
        pad = self.tokenizer.pad_token_id if self.tokenizer is not None else 0
        padded = min(lens) != P

        ids = torch.full((B, P), pad, dtype=torch.long, device=dev)
        mask = torch.ones(B, P + T, dtype=torch.bool, device=dev)
        for i, p in enumerate(prompts):  # once per call, not per step
            ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long, device=dev)
            mask[i, : P - len(p)] = False
        lens_t = torch.tensor(lens, dtype=torch.long, device=dev)
        cache_len = P + T
        fused = self.fused_decoder(cache_len)
        cache_dtype = self.cache_dtype if fused is None else fused.cache_dtype(R)
        cache = KVCache.for_model(model, B, cache_len, dtype=cache_dtype, device=dev)
        logits = prefill(model, fused, ids, mask[:, :P] if padded else None, cache)

        rows_of_prompt = torch.arange(B, device=dev).repeat_interleave(n)
        if n > 1:
            cache.select(rows_of_prompt)
            logits = logits[rows_of_prompt]
            mask = mask[rows_of_prompt]
        next_pos = lens_t[rows_of_prompt].clone()
        limits = torch.tensor(limits_b, dtype=torch.long, device=dev)[rows_of_prompt]
        row_ids = torch.arange(R, device=dev)
        decode_mask = mask if padded else None
        if fused is not None:
            if padded:  # additive mask over every cache slot: 0 attend, -inf padding
                decode_mask = torch.zeros(R, P + T, dtype=torch.float32, device=dev).masked_fill_(~mask, float("-inf"))

        out_tokens = torch.zeros(R, T, dtype=torch.long, device=dev)
        out_logp = torch.zeros(R, T, dtype=torch.float32, device=dev) if return_logprobs else None
        lengths = limits.clone()  # rows that never stop run to their limit
        stopped_code = torch.zeros(R, dtype=torch.bool, device=dev)  # True = "stop"
        state.update(out_tokens=out_tokens, out_logp=out_logp, lengths=lengths, stopped=stopped_code)

        gen = None
        if not params.greedy:
            gen = torch.Generator(device=dev)
            gen.manual_seed(int(seed) if seed is not None else int(torch.seed() % (2**63)))
        stop_t = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=dev) if stop_ids else None
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros(B, self.vocab_size, dtype=torch.bool, device=dev)
            seen.scatter_(1, ids, True)
            seen[:, pad] = False
            for i, p in enumerate(prompts):
                if pad in p:
                    seen[i, pad] = True
            seen = seen[rows_of_prompt]
        think = thinking_budget is not None
        if think:
            t_start, t_end = self.think_ids
            in_think = torch.tensor(self._initial_think_state(prompts), device=dev)[rows_of_prompt]
            think_count = torch.zeros(R, dtype=torch.long, device=dev)
        active = torch.ones(R, dtype=torch.bool, device=dev)

        for t in range(T):
            force = None
            if think:
                force = (in_think & (think_count >= thinking_budget), t_end)
            tok, lp = sample(logits, params, gen, seen, return_logprobs, force=force)
            out_tokens[row_ids, t] = tok
            if return_logprobs:
                out_logp[row_ids, t] = lp
            if seen is not None:
                seen.scatter_(1, tok[:, None], True)
            if think:
                is_start, is_end = tok == t_start, tok == t_end
                think_count = torch.where(is_start, 0, torch.where(in_think & ~is_end, think_count + 1, think_count))
                in_think = (in_think | is_start) & ~is_end
            done = t + 1 >= limits
            hit = torch.isin(tok, stop_t) if stop_t is not None else None
            if text_stops is not None:
                hits = torch.tensor(text_stops.check(row_ids.tolist(), tok.tolist(), active.tolist()), device=dev)
                hit = hits if hit is None else hit | hits
            newly = active & (done if hit is None else hit | done)
            compact = False
            if newly.any():
                fin = row_ids[newly]
                lengths[fin] = t + 1
                if hit is not None:
                    stopped_code[fin] = hit[newly]
                active = active & ~newly
                n_live = int(active.sum())
                # compact once half the rows are done: a finished row would cost as much as a live one
                compact = n_live <= active.numel() // 2
            else:
                n_live = -1
            if emit:
                was = active | newly
                stopped_now = newly & hit if hit is not None else torch.zeros_like(newly)
                yield row_ids[was].tolist(), tok[was].tolist(), stopped_now[was].tolist()
            if n_live == 0:
                return
            if compact:
                keep = active.nonzero().squeeze(1)
                cache.select(keep)
                row_ids, tok, next_pos, limits, active = (
                    row_ids[keep],
                    tok[keep],
                    next_pos[keep],
                    limits[keep],
                    active[keep],
                )
                if decode_mask is not None:
                    decode_mask = decode_mask[keep]
                if seen is not None:
                    seen = seen[keep]
                if think:
                    in_think, think_count = in_think[keep], think_count[keep]
            if fused is not None:
                logits = fused.step(tok, next_pos, cache, decode_mask)
            else:
                am = decode_mask[:, : P + t + 1] if decode_mask is not None else None
                logits = model(tok[:, None], position_ids=next_pos[:, None], attention_mask=am, kv_cache=cache)[:, -1]
            next_pos += 1

    def _validate(self, n, max_new_tokens, thinking_budget, stop_strings, stop_condition):
        if not isinstance(n, int) or n < 1:
            raise SrlmError(f"n={n!r}: the number of samples per prompt must be a positive integer")
        if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise SrlmError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
        if thinking_budget is not None:
            if not isinstance(thinking_budget, int) or thinking_budget < 0:
                raise SrlmError(f"thinking_budget={thinking_budget!r} must be a non-negative integer")
            if self.think_ids is None:
                raise SrlmError(
                    "thinking_budget needs a tokenizer with single-token <think> and </think>; "
                    "this checkpoint's tokenizer has none"
                )
        if (stop_strings or stop_condition is not None) and self.tokenizer is None:
            raise SrlmError("stop strings and stop conditions work on text: create the Engine with a tokenizer")
        if isinstance(stop_strings, str):
            raise SrlmError("stop_strings must be a list of strings, e.g. ['\\n\\n'], not one string")
        if stop_strings and any(not s for s in stop_strings):
            raise SrlmError(
                "stop_strings: an empty stop string matches at once, so every completion would be empty; remove it"
            )

    # ------------------------------------------------------------------ public API
    @torch.inference_mode()
    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingParams | None = None,
        n: int = 1,
        seed: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        stop_strings: Sequence[str] | None = None,
        return_logprobs: bool = False,
        thinking_budget: int | None = None,
        stop_condition: Callable[[str], bool] | str | re.Pattern | None = None,
        **overrides,
    ) -> list[list[Completion]]:
        """`n` completions for each prompt (token-id lists); returns one list of `Completion` per prompt.

        sampling: how to draw (`SamplingParams`: temperature, top-k/p, min-p, repetition penalty,
        max_new_tokens); `overrides` change its fields for this call (e.g. temperature=0).
        stop_token_ids: None = `self.stop_token_ids`; [] = never stop on an id.
        stop_condition: a callable on the text so far, or a regex (e.g. r"The answer is -?\\d+\\.")
        that ends the row as soon as it matches.
        """
        params = (sampling or SamplingParams()).replace(**overrides)
        max_new_tokens = params.max_new_tokens
        self._validate(n, max_new_tokens, thinking_budget, stop_strings, stop_condition)
        prompts = self._check_prompts(prompts)
        stop_ids = self.stop_token_ids if stop_token_ids is None else [int(i) for i in stop_token_ids]
        if isinstance(stop_condition, (str, re.Pattern)):
            stop_condition = _regex_condition(stop_condition)
        text_stops = None
        if stop_strings or stop_condition is not None:
            tails = [p[-5:] for p in prompts for _ in range(n)]
            text_stops = _TextStops(self.tokenizer, len(tails), tails, stop_strings, stop_condition)
        state: dict = {}
        for _ in self._steps(
            prompts, n, max_new_tokens, params, seed, stop_ids, return_logprobs, thinking_budget, text_stops, state
        ):
            pass
        return self._collect(prompts, n, state, stop_ids, stop_strings)

    def _collect(self, prompts, n, state, stop_ids, stop_strings) -> list[list[Completion]]:
        tokens = state["out_tokens"].tolist()
        lengths = state["lengths"].tolist()
        stopped = state["stopped"].tolist()
        logps = state["out_logp"].tolist() if state["out_logp"] is not None else None
        stop_set = set(stop_ids)
        out: list[list[Completion]] = []
        for b in range(len(prompts)):
            group = []
            for j in range(n):
                r = b * n + j
                ids = tokens[r][: lengths[r]]
                text = None
                if self.tokenizer is not None:
                    body = ids[:-1] if ids and stopped[r] and ids[-1] in stop_set else ids
                    text = self.tokenizer.decode(body)
                    if stopped[r] and stop_strings:
                        cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=-1)
                        if cut >= 0:
                            text = text[:cut]
                group.append(
                    Completion(
                        ids,
                        text,
                        "stop" if stopped[r] else "length",
                        logps[r][: lengths[r]] if logps is not None else None,
                    )
                )
            out.append(group)
        return out

    def encode_prompt(self, prompt: str | list[dict], chat: bool | None = None) -> list[int]:
        """A string (tokenized with the tokenizer's special tokens, e.g. BOS) or chat messages (the chat template)."""
        if self.tokenizer is None:
            raise SrlmError("text prompts need a tokenizer: this checkpoint has no tokenizer.json")
        if isinstance(prompt, list) or chat:
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        if not isinstance(prompt, str):
            raise SrlmError(f"a prompt must be a string or a list of chat messages, got {type(prompt).__name__}")
        if not prompt:
            raise SrlmError("the prompt is empty: give some text")
        return self.tokenizer.encode(prompt, add_special_tokens=True)

    def generate_text(
        self, prompts: list[str | list[dict]], chat: bool | None = None, **kwargs
    ) -> list[list[Completion]]:
        """`generate` on strings or chat-message lists; `chat=True` wraps plain strings as one user turn."""
        if isinstance(prompts, str):
            raise SrlmError("generate_text takes a list of prompts: wrap a single prompt in [ ]")
        ids = [self.encode_prompt(p, chat) for p in prompts]
        return self.generate(ids, **kwargs)

    @torch.inference_mode()
    def stream(
        self,
        prompt: list[int] | str | list[dict],
        sampling: SamplingParams | None = None,
        seed: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        stop_strings: Sequence[str] | None = None,
        thinking_budget: int | None = None,
        stop_condition=None,
        chat: bool | None = None,
        skip_special_tokens: bool = False,
        **overrides,
    ) -> Iterator[str]:
        """Text deltas of one completion as they are generated; "".join(...) is the completion's text.

        The final stop id is not shown; a stop string ends the stream before it (text held back
        while it could still be the start of a stop string).
        """
        if self.tokenizer is None:
            raise SrlmError("streaming text needs a tokenizer: this checkpoint has no tokenizer.json")
        params = (sampling or SamplingParams()).replace(**overrides)
        max_new_tokens = params.max_new_tokens
        self._validate(1, max_new_tokens, thinking_budget, stop_strings, stop_condition)
        token_ids = isinstance(prompt, (list, tuple)) and not any(isinstance(m, dict) for m in prompt)
        ids = list(prompt) if token_ids else self.encode_prompt(prompt, chat)
        prompts = self._check_prompts([ids])
        stop_ids = self.stop_token_ids if stop_token_ids is None else [int(i) for i in stop_token_ids]
        stop_set = set(stop_ids)
        if isinstance(stop_condition, (str, re.Pattern)):
            stop_condition = _regex_condition(stop_condition)
        text_stops = None
        if stop_strings or stop_condition is not None:
            text_stops = _TextStops(self.tokenizer, 1, [prompts[0][-5:]], stop_strings, stop_condition)
        decoder = self.tokenizer.stream_decoder(prompts[0][-5:], skip_special_tokens=skip_special_tokens)
        stops = list(stop_strings or [])
        hold = max((len(s) for s in stops), default=1) - 1
        pending = ""  # text not yet shown because it may begin a stop string
        state: dict = {}
        steps = self._steps(
            prompts, 1, max_new_tokens, params, seed, stop_ids, False, thinking_budget, text_stops, state, emit=True
        )
        for _, toks, stopped_now in steps:
            tok = toks[0]
            if stopped_now[0] and tok in stop_set:
                break
            pending += decoder.push(tok)
            if stops:
                cut = min((i for i in (pending.find(s) for s in stops) if i >= 0), default=-1)
                if cut >= 0:
                    if cut:
                        yield pending[:cut]
                    return
                if len(pending) > hold:
                    yield pending[: len(pending) - hold]
                    pending = pending[len(pending) - hold :]
            elif pending:
                yield pending
                pending = ""
        pending += decoder.flush()
        if stops:
            cut = min((i for i in (pending.find(s) for s in stops) if i >= 0), default=-1)
            pending = pending[:cut] if cut >= 0 else pending
        if pending:
            yield pending

    @torch.inference_mode()
    def loglikelihood(
        self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_tokens: int = 8192
    ) -> list[float]:
        """Sum of log p(continuation | context) for each (context ids, continuation ids) pair.

        Sequences are sorted by length and batched up to `batch_tokens`; right padding needs no
        mask under causal attention, and logits are computed only at continuation positions.
        """
        items = []
        for i, (ctx, cont) in enumerate(pairs):
            ctx, cont = [int(t) for t in ctx], [int(t) for t in cont]
            if not ctx:
                raise SrlmError(
                    f"pair {i}: the context is empty; the first continuation token needs a context "
                    f"(prepend the BOS token)"
                )
            if not cont:
                raise SrlmError(f"pair {i}: the continuation is empty")
            seq = ctx + cont
            if len(seq) - 1 > self.max_context:
                raise SrlmError(f"pair {i}: {len(seq)} tokens exceed the model's context of {self.max_context}")
            bad = [t for t in seq if t < 0 or t >= self.vocab_size]
            if bad:
                raise SrlmError(f"pair {i}: token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
            items.append((i, seq, len(ctx)))
        results = [0.0] * len(items)
        items.sort(key=lambda x: -len(x[1]))
        pad = self.tokenizer.pad_token_id if self.tokenizer is not None else 0
        start = 0
        while start < len(items):
            width = len(items[start][1]) - 1
            count = max(1, batch_tokens // max(width, 1))
            chunk = items[start : start + count]
            start += len(chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long, device=self.device)
            rows, cols, targets = [], [], []
            for r, (_, seq, nctx) in enumerate(chunk):
                ids[r, : len(seq) - 1] = torch.tensor(seq[:-1], device=self.device)
                for pos in range(nctx - 1, len(seq) - 1):
                    rows.append(r)
                    cols.append(pos)
                    targets.append(seq[pos + 1])
            h = self.model.model(ids)
            sel = h[torch.tensor(rows, device=self.device), torch.tensor(cols, device=self.device)]
            logp = torch.log_softmax(self.model.lm_head(sel).float(), dim=-1)
            tok_lp = logp.gather(-1, torch.tensor(targets, device=self.device)[:, None]).squeeze(-1)
            sums = torch.zeros(len(chunk), dtype=torch.float64, device=self.device)
            sums.index_add_(0, torch.tensor(rows, device=self.device), tok_lp.double())
            for r, (i, _, _) in enumerate(chunk):
                results[i] = float(sums[r])
        return results
