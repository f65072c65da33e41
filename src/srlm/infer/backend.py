"""The engine behind the eval harness's `Backend` protocol (srlm.eval.harness).

`EngineBackend.generate(prompts, n, max_new_tokens, temperature, stop)` takes plain
strings or chat-message lists (the tokenizer's chat template renders those) and returns
`n` completion texts per prompt, cut before any stop string; temperature 0 is greedy.
`loglikelihood([(context, continuation), ...])` returns summed log-probabilities of the
continuation tokens, tokenizing context + continuation together so a token merging
across the boundary is scored the way the model would produce it.
"""

from __future__ import annotations

from srlm.errors import SrlmError
from srlm.infer.engine import Engine


class EngineBackend:
    def __init__(self, engine: Engine, seed: int | None = 0):
        if engine.tokenizer is None:
            raise SrlmError("evaluation works on text: the checkpoint needs a tokenizer (tokenizer.json)")
        self.engine = engine
        self.seed = seed

    @classmethod
    def from_checkpoint(
        cls,
        path,
        device=None,
        dtype=None,
        quantize: str | None = None,
        seed: int | None = 0,
        revision: str | None = None,
    ):
        from srlm.infer.quant import load_for_inference

        model, tokenizer = load_for_inference(
            path, dtype=dtype, device=device or "cpu", quantize=quantize, revision=revision
        )
        return cls(Engine(model, tokenizer), seed=seed)

    def generate(
        self,
        prompts: list[str | list[dict]],
        n: int = 1,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        stop: list[str] | None = None,
    ) -> list[list[str]]:
        if not prompts:
            return []
        out = self.engine.generate_text(
            list(prompts),
            n=n,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            stop_strings=list(stop) if stop else None,
            seed=self.seed,
        )
        return [[c.text for c in group] for group in out]

    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        tok = self.engine.tokenizer
        ctx = tok.encode(context, add_special_tokens=True)
        whole = tok.encode(context + continuation, add_special_tokens=True)
        if len(whole) > len(ctx) and whole[: len(ctx)] == ctx:
            return ctx, whole[len(ctx) :]
        return ctx, tok.encode(continuation, add_special_tokens=False)

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[float]:
        if not requests:
            return []
        return self.engine.loglikelihood([self._split(c, x) for c, x in requests])
