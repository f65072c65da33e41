"""Checkpoints are Hugging Face folders.

A folder holds `config.json`, `model.safetensors` (or shards with
`model.safetensors.index.json`), `generation_config.json`, and the tokenizer
files. `load` reads one into a `CausalLM` (never executing code: safetensors
only); `save` writes one atomically (a temporary folder, then a rename), so a
crash never leaves a half-written checkpoint behind. What `save` writes loads in
`transformers.AutoModelForCausalLM` with the same logits; layer-shared models
are exported with their blocks repeated.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from srlm.atomic import atomic_folder
from srlm.errors import SrlmError
from srlm.model.config import ModelConfig
from srlm.model.transformer import CausalLM, rope_inv_freq

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    if name is None or isinstance(name, torch.dtype):
        return name
    key = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(name, name)
    if key not in _DTYPES:
        raise SrlmError(f"unknown dtype {name!r}; use float32, bfloat16 or float16")
    return _DTYPES[key]


@functools.lru_cache(maxsize=None)
def fast_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matmuls are fast here (CUDA with bf16, or a CPU oneDNN runs bf16 natively on). Cached."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise SrlmError(f"{index}: not a valid safetensors index ({e})") from None
        files = sorted(set(weight_map.values()))
        for f in files:
            if not (path / f).exists():
                raise SrlmError(f"{index} lists {f}, which is missing from {path}")
        return [path / f for f in files]
    single = path / "model.safetensors"
    if single.exists():
        return [single]
    if list(path.glob("*.bin")) or list(path.glob("*.pt")):
        raise SrlmError(
            f"{path}: only pickle weights (*.bin / *.pt) found; srlm loads safetensors only, since "
            f"pickles can execute code. Convert them once with transformers: "
            f"model.save_pretrained(dir, safe_serialization=True)"
        )
    raise SrlmError(f"{path}: no model.safetensors or model.safetensors.index.json")


def _hf_to_srlm_names(config: ModelConfig, tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Map HF's expanded layer indices onto srlm's stored blocks (identity without layer sharing)."""
    share = config.layer_share
    if share == 1:
        return tensors
    out = {}
    for name, t in tensors.items():
        parts = name.split(".")
        if name.startswith("model.layers."):
            idx = int(parts[2])
            block, rep = divmod(idx, share)
            parts[2] = str(block)
            new = ".".join(parts)
            if rep == 0:
                out[new] = t
            elif new in out and not torch.equal(out[new], t):
                raise SrlmError(
                    f"{source}: config says srlm_layer_share={share} but {name} differs from the "
                    f"block it should repeat ({new}); remove srlm_layer_share to load the layers unshared"
                )
        else:
            out[name] = t
    return out


def from_tensors(
    config: ModelConfig, tensors: dict[str, torch.Tensor], source: str, dtype=None, device="cpu"
) -> CausalLM:
    """A `CausalLM` of `config` holding `tensors` (HF names), every name and shape checked against the config."""
    want = torch_dtype(dtype) or _DTYPES[config.dtype]
    nonfinite = nonfinite_tensors(tensors)
    if nonfinite:
        print(
            f"srlm: warning: {source}: NaN or Inf values in {len(nonfinite)} tensor(s): {_names(nonfinite)}",
            file=sys.stderr,
            flush=True,
        )
    tensors = _hf_to_srlm_names(config, tensors, source)
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    with torch.device("meta"):
        model = CausalLM(config)
    expected = {k: v for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    missing = [k for k in expected if k not in tensors]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise SrlmError(f"{source}: missing tensor(s) {', '.join(missing[:3])}{more}")
    for k, ref in expected.items():
        if tuple(tensors[k].shape) != tuple(ref.shape):
            raise SrlmError(
                f"{source}: tensor {k} has shape {tuple(tensors[k].shape)}, "
                f"the configuration implies {tuple(ref.shape)}"
            )
    unexpected = [k for k in tensors if k not in expected and not k.endswith("rotary_emb.inv_freq")]
    if unexpected:
        raise SrlmError(
            f"{source}: unexpected tensor(s) {', '.join(unexpected[:3])} — does the configuration match the weights?"
        )
    model = model.to_empty(device=device)
    model.load_state_dict({k: tensors[k].to(want) for k in expected}, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # non-persistent buffers are not in the file: recompute them on the real device
    model.model.rotary_emb.inv_freq = rope_inv_freq(config).to(device)
    model.config = config.replace(dtype=str(want).replace("torch.", ""))
    model.model.config = model.config
    model.nonfinite_tensors = nonfinite  # HF names of the tensors holding NaN or Inf (see check_finite)
    return model.to(device).eval()


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an Inf."""
    return [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _names(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" (and {len(names) - 5} more)" if len(names) > 5 else "")


def check_finite(model: CausalLM, path, allow: bool = False) -> None:
    """Refuse a model loaded with NaN/Inf weights (its outputs would be garbage) unless `allow`."""
    bad = getattr(model, "nonfinite_tensors", None)
    if bad is None:
        bad = nonfinite_tensors(dict(model.state_dict()))
    if bad and not allow:
        raise SrlmError(
            f"{path}: NaN or Inf values in tensor(s) {_names(bad)}, so every output would be garbage; "
            f"use an earlier checkpoint, or pass --allow-nonfinite to run it anyway"
        )


def _is_gguf(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".gguf"


def load_model(path: str | Path, dtype=None, device="cpu", revision: str | None = None) -> CausalLM:
    """A checkpoint folder, a `.gguf` file or a Hub id (see `srlm.model.hub.resolve`) as a `CausalLM`."""
    from srlm.model.hub import resolve

    path = resolve(path, revision)
    if _is_gguf(path):
        from srlm.model.gguf import load as load_gguf

        return load_gguf(path, dtype=dtype, device=device)[0]
    if not path.is_dir():
        raise SrlmError(
            f"{path}: not a checkpoint (expected a folder with config.json and *.safetensors, or a .gguf file)"
        )
    config = ModelConfig.from_file(path / "config.json")
    tensors: dict[str, torch.Tensor] = {}
    for f in _weight_files(path):
        try:
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    tensors[k] = sf.get_tensor(k)
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise SrlmError(f"{f}: cannot read safetensors file ({e})") from None
    return from_tensors(config, tensors, str(path), dtype=dtype, device=device)


def load_tokenizer(path: str | Path, revision: str | None = None):
    """The tokenizer of a checkpoint folder, `.gguf` file or Hub id; None when a folder has no tokenizer.json."""
    from srlm.model.hub import resolve
    from srlm.tokenizer import Tokenizer

    path = resolve(path, revision)
    if _is_gguf(path):
        from srlm.model.gguf import _metadata, _open, tokenizer_from_metadata

        return tokenizer_from_metadata(_metadata(_open(path)), str(path))
    return Tokenizer.from_dir(path) if (path / "tokenizer.json").exists() else None


def load(path: str | Path, dtype=None, device="cpu", revision: str | None = None):
    """Model and tokenizer (None when the folder has no tokenizer.json) of a folder, `.gguf` file or Hub id."""
    from srlm.model.hub import resolve

    path = resolve(path, revision)
    if _is_gguf(path):
        from srlm.model.gguf import load as load_gguf

        return load_gguf(path, dtype=dtype, device=device)
    return load_model(path, dtype=dtype, device=device), load_tokenizer(path)


def hf_state_dict(model: CausalLM) -> dict[str, torch.Tensor]:
    """State dict under HF names: layer-shared blocks repeated, tied lm_head omitted (as transformers saves it)."""
    config = model.config
    sd = {k: v.detach() for k, v in model.state_dict().items() if "rotary_emb" not in k}
    if config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    share = config.layer_share
    if share == 1:
        return sd
    out = {}
    for name, t in sd.items():
        if name.startswith("model.layers."):
            parts = name.split(".")
            block = int(parts[2])
            for r in range(share):
                parts[2] = str(block * share + r)
                out[".".join(parts)] = t
        else:
            out[name] = t
    return out


def save(
    model: CausalLM,
    path: str | Path,
    tokenizer=None,
    max_shard_bytes: int = 2 * 1024**3,
    dtype=None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write `model` (and `tokenizer`) as an HF folder at `path`, atomically (`srlm.atomic.atomic_folder`).

    `dtype` casts the saved weights (default: the model's own); `extra_files` maps file
    names to text written alongside (e.g. a resolved training config).
    """
    path = Path(path)
    with atomic_folder(path) as tmp:
        write_folder(
            model, tmp, tokenizer=tokenizer, max_shard_bytes=max_shard_bytes, dtype=dtype, extra_files=extra_files
        )
    return path


def write_folder(
    model: CausalLM,
    folder: Path,
    tokenizer=None,
    max_shard_bytes: int = 2 * 1024**3,
    dtype=None,
    extra_files: dict[str, str] | None = None,
) -> None:
    """The files of `save` written into an existing (temporary) folder, not atomically by themselves."""
    config = model.config
    cast = torch_dtype(dtype)
    sd = hf_state_dict(model)
    # shared storage (tied or layer-shared) must be cloned for safetensors
    sd = {k: (v.to(cast) if cast else v).contiguous().clone().cpu() for k, v in sd.items()}
    saved_dtype = str(cast or next(iter(sd.values())).dtype).replace("torch.", "")
    hf = config.replace(dtype=saved_dtype).to_hf_dict()
    (folder / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    gen = {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }
    (folder / "generation_config.json").write_text(
        json.dumps({k: v for k, v in gen.items() if v is not None}, indent=2) + "\n"
    )
    _write_weights(sd, folder, max_shard_bytes)
    if tokenizer is not None:
        tokenizer.save(folder)
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text)


def _write_weights(sd: dict[str, torch.Tensor], folder: Path, max_shard_bytes: int) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in sd.items():
        n = v.numel() * v.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += n
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata=meta)
        return
    weight_map = {}
    total = 0
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata=meta)
        for k, v in shard.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
