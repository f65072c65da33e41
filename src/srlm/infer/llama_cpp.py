"""llama.cpp as an evaluation backend: a GGUF run by llama.cpp itself, through llama-cpp-python.

`LlamaCppBackend(path)` implements the eval harness's `Backend` protocol as `EngineBackend` does, so
`srlm eval model.gguf --backend llama.cpp` scores the file where it will be deployed. Prompts
(strings or chat messages) are rendered and tokenized by srlm's tokenizer rebuilt from the GGUF,
which splits text into the ids llama.cpp's own tokenizer gives (tests compare the two); llama.cpp
then generates from those ids. Completions are decoded and cut at stop strings exactly as srlm's
engine does, so a score differs from srlm's only where the two runtimes' arithmetic does.
Temperature 0 is greedy; otherwise llama.cpp's sampler draws with plain temperature (no top-k/p).
`llama-cpp-python` is optional: `pip install llama-cpp-python`.
"""

from __future__ import annotations

import math
from pathlib import Path

from srlm.errors import SrlmError


def llama_cpp_module(needed_by: str = "the llama.cpp backend"):
    """The `llama_cpp` module, or one SrlmError saying that `needed_by` needs it and how to install it."""
    try:
        import llama_cpp
    except ImportError:
        raise SrlmError(
            f"{needed_by} needs llama-cpp-python: pip install llama-cpp-python "
            "(README, Testing: bash .ci/install-llama-cpp builds the tested version)"
        ) from None
    return llama_cpp


def _llama_class():
    return llama_cpp_module().Llama


class LlamaCppBackend:
    def __init__(self, path: str | Path, n_ctx: int = 4096, threads: int | None = None, seed: int | None = 0):
        from srlm.model.checkpoint import load_tokenizer

        self.path = Path(path)
        if not (self.path.is_file() and self.path.suffix.lower() == ".gguf"):
            raise SrlmError(f"{path}: the llama.cpp backend runs a .gguf file (srlm export makes one)")
        self.tokenizer = load_tokenizer(self.path)
        self.n_ctx, self.threads, self.seed = n_ctx, threads, seed or 0
        self.llm = self._open(logits_all=False)
        self._scorer = None
        self.stop_ids = set(self.tokenizer.eos_token_ids)  # what srlm's engine stops on for this tokenizer

    def _open(self, logits_all: bool):
        kw = {"n_threads": self.threads} if self.threads else {}
        return _llama_class()(
            str(self.path), n_ctx=self.n_ctx, logits_all=logits_all, seed=self.seed, verbose=False, **kw
        )

    def _prompt_ids(self, prompt: str | list[dict]) -> list[int]:
        if isinstance(prompt, list):
            return self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True)
        return self.tokenizer.encode(prompt, add_special_tokens=True)

    def _complete(self, ids: list[int], max_new_tokens: int, temperature: float, stop: list[str]) -> str:
        out: list[int] = []
        stopped = False
        budget = min(max_new_tokens, self.n_ctx - len(ids))
        if budget <= 0:
            raise SrlmError(f"a prompt of {len(ids)} tokens leaves no room in llama.cpp's context of {self.n_ctx}")
        tokens = self.llm.generate(
            ids,
            temp=temperature,
            top_k=1 if temperature == 0 else 0,
            top_p=1.0,
            min_p=0.0,
            repeat_penalty=1.0,
            reset=True,
        )
        for tok in tokens:
            out.append(tok)
            if tok in self.stop_ids:
                stopped = True
                break
            if stop and any(s in self.tokenizer.decode(out) for s in stop):
                stopped = True
                break
            if len(out) >= budget:
                break
        body = out[:-1] if stopped and out[-1] in self.stop_ids else out
        text = self.tokenizer.decode(body)
        if stopped and stop:
            cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
            if cut >= 0:
                text = text[:cut]
        return text

    def generate(
        self,
        prompts: list[str | list[dict]],
        n: int = 1,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        stop: list[str] | None = None,
    ) -> list[list[str]]:
        out = []
        for p in prompts:
            ids = self._prompt_ids(p)
            group = []
            for j in range(n):
                self.llm.set_seed(self.seed + j)
                group.append(self._complete(ids, max_new_tokens, temperature, list(stop or [])))
            out.append(group)
        return out

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[float]:
        """Summed log-probabilities of each continuation given its context, from llama.cpp's logits."""
        import numpy as np

        if self._scorer is None:
            self._scorer = self._open(logits_all=True)
        out = []
        for context, continuation in requests:
            ctx = self.tokenizer.encode(context, add_special_tokens=True)
            whole = self.tokenizer.encode(context + continuation, add_special_tokens=True)
            cont = (
                whole[len(ctx) :]
                if whole[: len(ctx)] == ctx and len(whole) > len(ctx)
                else self.tokenizer.encode(continuation)
            )
            ids = ctx + cont
            self._scorer.reset()
            self._scorer.eval(ids)
            logits = np.asarray(self._scorer.scores[len(ctx) - 1 : len(ids) - 1], dtype=np.float64)
            peak = logits.max(-1, keepdims=True)
            logp = logits - peak - np.log(np.exp(logits - peak).sum(-1, keepdims=True))
            out.append(float(sum(logp[i, t] for i, t in enumerate(cont))))
        return [v if math.isfinite(v) else -math.inf for v in out]
