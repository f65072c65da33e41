"""Loading a checkpoint folder for inference: the one typed entry point that `srlm generate`, `srlm chat`,
`srlm serve`, benchmarks and tests share (commands parse their flags and call it)."""

from __future__ import annotations

from pathlib import Path

from srlm.errors import SrlmError
from srlm.infer.engine import Engine


def load_engine(
    path: str | Path,
    dtype: str | None = None,
    quantize: str | None = None,
    threads: int | None = None,
    device: str = "cpu",
    require_tokenizer: bool = True,
    allow_nonfinite: bool = False,
    revision: str | None = None,
) -> Engine:
    """An `Engine` over the checkpoint at `path`: a folder (config.json, *.safetensors, tokenizer.json), a
    .gguf file, or a Hugging Face Hub id (at `revision`).

    dtype: "float32" | "bfloat16" | None (as saved; bfloat16 with `quantize`); quantize: None | "int8" | "int4"
    (weight-only, applied at load); threads: torch's CPU threads (None = torch's choice).
    `require_tokenizer`: refuse a folder without tokenizer.json, since text cannot be encoded then.
    Weights holding NaN or Inf are refused unless `allow_nonfinite` (their outputs are garbage).
    """
    import torch

    from srlm.infer.quant import load_for_inference
    from srlm.model.checkpoint import check_finite

    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise SrlmError(f"--threads {threads}: give a positive number of threads")
        torch.set_num_threads(threads)
    model, tokenizer = load_for_inference(path, dtype=dtype, device=device, quantize=quantize, revision=revision)
    check_finite(model, path, allow=allow_nonfinite)
    if tokenizer is None and require_tokenizer:
        raise SrlmError(
            f"{path}: no tokenizer.json, so text prompts cannot be encoded; save the checkpoint with its tokenizer"
        )
    return Engine(model, tokenizer)
