"""Where a checkpoint comes from: a local folder, a GGUF file, or a Hugging Face Hub id.

`resolve(ref, revision=None)` turns what a user typed into a local path, so every place
that accepts a checkpoint folder also accepts:

- a local folder (`runs/sft/final`) or a local `.gguf` file, returned as they are;
- a Hub repository id (`HuggingFaceTB/SmolLM2-135M-Instruct`), downloaded once into the Hub
  cache with `huggingface_hub.snapshot_download`: safetensors weights, config, tokenizer and chat
  template files only (never `*.bin`/`*.pt` pickles, which can execute code);
- a GGUF file inside a Hub repository (`org/name/model-Q8_0.gguf`), fetched with `hf_hub_download`.

The Hub's own settings apply, read when `resolve` runs: `HF_HOME` / `HF_HUB_CACHE` (where the
cache lives), `HF_HUB_OFFLINE=1` (cache only), `HF_TOKEN` or `huggingface-cli login` (gated
models); downloads show the Hub's progress bars. Anything that cannot be had (offline and not
cached, an unknown repository or revision, a repository with only pickle weights) is one
`SrlmError` that says what to do.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from srlm.errors import SrlmError

#: files a checkpoint folder needs; anything else in a repository (pickles, ONNX, GGUF copies) is left behind
ALLOW_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
#: the subset that describes a model without its weights (`srlm info`)
CONFIG_PATTERNS = tuple(p for p in ALLOW_PATTERNS if "safetensors" not in p)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_REPO_FILE = re.compile(r"^([A-Za-z0-9][\w.-]*/[\w.-]+)/(.+\.gguf)$")


def is_hub_id(ref: str) -> bool:
    """Whether `ref` reads as `org/name` (or `org/name/FILE.gguf`) rather than a local path."""
    ref = str(ref)
    return bool(_REPO_ID.match(ref) or _REPO_FILE.match(ref)) and not ref.startswith(".")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _offline() -> bool:
    from huggingface_hub import constants

    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> Path:
    """The Hub cache as the Hub's tools compute it, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def resolve(ref: str | Path, revision: str | None = None, weights: bool = True) -> Path:
    """A local folder or `.gguf` file for `ref`, downloading a Hub id into the Hub cache if needed.

    `weights=False` fetches only the config and tokenizer files (enough to describe a model).
    """
    path = Path(ref).expanduser()
    if path.exists():
        if revision is not None:
            raise SrlmError(f"--revision {revision} applies to Hub ids, but {ref} is a local path")
        return path
    ref = str(ref)
    if not is_hub_id(ref):
        raise SrlmError(
            f"{ref}: not a checkpoint folder or GGUF file (no such path), nor a Hugging Face Hub id (ORG/NAME)"
        )
    if (m := _REPO_FILE.match(ref)) is not None:
        return _download_file(m.group(1), m.group(2), revision)
    return _download_snapshot(ref, revision, weights)


def _hub_error(repo: str, revision: str | None, e: Exception) -> SrlmError:
    from huggingface_hub import errors

    at = f" at revision {revision!r}" if revision else ""
    if isinstance(e, errors.GatedRepoError):
        return SrlmError(
            f"{repo} is gated: accept its licence on huggingface.co, then log in (`hf auth login`) or set HF_TOKEN"
        )
    if isinstance(e, errors.RepositoryNotFoundError):
        return SrlmError(
            f"{repo}: no such local path, nor a repository on the Hugging Face Hub (if it is private, set HF_TOKEN)"
        )
    if isinstance(e, errors.RevisionNotFoundError):
        return SrlmError(f"{repo}: no revision {revision!r} (give a branch, tag or commit that exists)")
    if isinstance(e, errors.LocalEntryNotFoundError):
        where = cache_dir()
        if _offline():
            return SrlmError(
                f"{repo}{at}: no such local path, and not in the Hub cache ({where}) while "
                f"HF_HUB_OFFLINE is set: download it once online, or unset HF_HUB_OFFLINE"
            )
        return SrlmError(
            f"{repo}{at}: no such local path; as a Hub id, the Hugging Face Hub cannot be reached "
            f"and it is not in the Hub cache ({where}): connect to the network, or point HF_HOME "
            f"at a cache that has it"
        )
    if isinstance(e, errors.EntryNotFoundError):
        return SrlmError(f"{repo}{at}: {e}")
    if isinstance(e, errors.HFValidationError):
        return SrlmError(f"{repo}: not a valid Hub repository id ({e})")
    return SrlmError(f"{repo}{at}: download from the Hugging Face Hub failed ({type(e).__name__}: {e})")


def _download_snapshot(repo: str, revision: str | None, weights: bool) -> Path:
    from huggingface_hub import snapshot_download

    patterns = list(ALLOW_PATTERNS if weights else CONFIG_PATTERNS)
    try:
        folder = Path(
            snapshot_download(
                repo, revision=revision, allow_patterns=patterns, cache_dir=cache_dir(), local_files_only=_offline()
            )
        )
    except Exception as e:  # the Hub raises its own error types, and network errors from its HTTP client
        raise _hub_error(repo, revision, e) from None
    if not (folder / "config.json").is_file():
        raise SrlmError(
            f"{repo}: no config.json in the repository; not a transformers checkpoint "
            f"(for a GGUF repository give the file: {repo}/FILE.gguf)"
        )
    if weights and not any(folder.glob("*.safetensors")):
        raise SrlmError(
            f"{repo}: the repository has no safetensors weights; srlm never loads pickles "
            f"(*.bin, *.pt), which can execute code. Pick a repository with model.safetensors"
        )
    return folder


def _download_file(repo: str, filename: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(
            hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir(), local_files_only=_offline())
        )
    except Exception as e:  # as above
        raise _hub_error(f"{repo}/{filename}", revision, e) from None
