"""srlm — Small Reasoning Language Models.

The package is split into rooms that depend on each other one way:
data -> train -> checkpoint (model/) -> infer -> eval / serve.
"""

__version__ = "0.1.0"

from srlm.errors import SrlmError


def load(path, dtype=None, device="cpu", revision=None):
    """Load a checkpoint: (model, tokenizer-or-None).

    `path` is a Hugging Face checkpoint folder, a `.gguf` file, or a Hub id such as
    "HuggingFaceTB/SmolLM2-135M-Instruct" (downloaded once into the Hub cache; `revision`
    picks a branch, tag or commit).
    """
    from srlm.model.checkpoint import load as _load

    return _load(path, dtype=dtype, device=device, revision=revision)


def save(model, path, tokenizer=None):
    """Save `model` (and `tokenizer`) as a Hugging Face checkpoint folder."""
    from srlm.model.checkpoint import save as _save

    return _save(model, path, tokenizer=tokenizer)


__all__ = ["SrlmError", "load", "save", "__version__"]
