"""GGUF in and out: llama.cpp's one-file checkpoints, read and written with the `gguf` package.

    config, tensors, tokenizer = read("model.gguf")     # HF names, float32, tokenizer rebuilt
    config, metadata = read_header("model.gguf")        # no weights read
    model, tokenizer = load("model.gguf")
    export(model, tokenizer, "model-f16.gguf", "f16")    # f32 | f16 | bf16 | q8_0 | q4_0

Reading dequantizes every tensor with `gguf.quants.dequantize` (F32, F16, BF16, Q8_0, Q4_0,
Q4_1, Q5_0, Q5_1 and the K-quants), maps llama.cpp's tensor names to Hugging Face's, and undoes
the rotary permutation llama.cpp's `convert_hf_to_gguf.py` applies to the q/k projections of
`llama` models (Qwen2/3 are stored unpermuted). `tokenizer.json` is rebuilt from the metadata:
the byte-level BPE vocabulary and merges, the pre-tokenizer `tokenizer.ggml.pre` names, the
control tokens as special added tokens, the bos/eos/unk/pad tokens and the chat template.

Writing does the reverse, as `convert_hf_to_gguf.py` does: architecture metadata under the
names llama.cpp reads (`llama`, `qwen2`, `qwen3`), q/k permuted for `llama`, norms and biases
in F32, matrices in the requested type (`q4_0` keeps the embedding and output matrices in Q8_0, as
llama.cpp's quantizer keeps them at higher precision; rows that do not fill whole blocks stay F16).
The tokenizer goes out as tokens, types, merges and special ids, with the
pre-tokenizer named for llama.cpp; a tokenizer whose pre-tokenizer llama.cpp does not
implement is refused, since llama.cpp would split text differently. Nothing here needs
transformers or llama.cpp.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from srlm.errors import SrlmError
from srlm.model.config import ModelConfig
from srlm.tokenizer import QWEN2_SPLIT_REGEX, Tokenizer

ARCHITECTURES = ("llama", "qwen2", "qwen3")

# llama.cpp tensor names (gguf-py's constants) -> Hugging Face module names
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
_HF_BLOCK_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_HF_TO_GGUF_BLOCK = {v: k for k, v in _BLOCK_NAMES.items()}
_HF_TO_GGUF_GLOBAL = {v: k for k, v in _GLOBAL_NAMES.items()}

# -- pre-tokenizers ---------------------------------------------------------------------------
# The splits llama.cpp implements (src/llama-vocab.cpp), as tokenizer.json writes them, keyed by the
# canonical `tokenizer.ggml.pre` name. `ignore_merges`: a whole pre-token found in the vocabulary is
# used as is (llama.cpp sets it for these names; HF's BPE has the same flag); `add_bos`: llama.cpp's
# default when the file has no tokenizer.ggml.add_bos_token. llama.cpp normalizes
# nothing, so an imported tokenizer has no normalizer (Qwen2's tokenizer.json has NFC: llama.cpp, and
# srlm reading its GGUF, differ from it only on text that is not NFC already).
LLAMA3_SPLIT_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"  # noqa: E501  (verbatim)
_PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "qwen2": {"steps": (("split", QWEN2_SPLIT_REGEX), ("bytelevel", False)), "ignore_merges": False},
    "llama-bpe": {
        "steps": (("split", LLAMA3_SPLIT_REGEX), ("bytelevel", False)),
        "ignore_merges": True,
        "add_bos": True,
    },
    "smollm": {"steps": (("digits", True), ("bytelevel", True)), "ignore_merges": False},
    "gpt-2": {"steps": (("bytelevel", True),), "ignore_merges": False},
}
# other names llama.cpp gives the same split and flags
_PRE_ALIASES = {
    "deepseek-r1-qwen": "qwen2",
    "megrez": "qwen2",
    "kormo": "qwen2",
    "f2llmv2": "qwen2",
    "llama3": "llama-bpe",
    "llama-v3": "llama-bpe",
    "falcon3": "llama-bpe",
    "starcoder": "smollm",
    "refact": "smollm",
    "codeshell": "smollm",
    "phi-2": "gpt-2",
    "olmo": "gpt-2",
    "mpt": "gpt-2",
}

# GGUF token types (gguf.TokenType)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

EXPORT_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")


# ============================================================================ reading


def _open(path: str | Path):
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise SrlmError(f"{path}: no such GGUF file")
    try:
        return GGUFReader(str(path))
    except Exception as e:  # gguf raises ValueError / struct errors on files that are not GGUF
        raise SrlmError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def _metadata(reader, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key in skip:
            continue
        out[key] = f.contents()
    return out


def _f32(value) -> float:
    """A float32 metadata value as the decimal it was written from (9.999999747e-06 -> 1e-05)."""
    return float(str(np.float32(value)))


def _llama3_rope_factors(theta: float, head_dim: int, scaling: dict) -> np.ndarray:
    """The per-frequency divisors llama.cpp stores as `rope_freqs.weight` for llama3 rope scaling."""
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old = float(scaling["original_max_position_embeddings"])
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _llama3_scaling_from(factors: np.ndarray, theta: float, head_dim: int, source: str) -> dict:
    """Recover HF's llama3 rope_scaling from the stored divisors (the parameters Llama 3.x ships with,
    checked against the tensor, so a file made with other parameters is refused rather than misread)."""
    factor = float(factors.max())
    for old in (8192, 4096, 16384, 2048, 32768):
        for low, high in ((1.0, 4.0), (1.0, 2.0), (2.0, 4.0), (1.0, 8.0)):
            cand = {
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low,
                "high_freq_factor": high,
                "original_max_position_embeddings": old,
            }
            if np.allclose(_llama3_rope_factors(theta, head_dim, cand), factors, rtol=1e-4, atol=1e-5):
                return cand
    raise SrlmError(
        f"{source}: rope_freqs.weight does not match llama3 rope scaling with the usual parameters; "
        f"srlm cannot reproduce this file's rotary frequencies"
    )


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of convert_hf_to_gguf.py's LlamaModel.permute (rows grouped per head as (2, dim/2) -> (dim/2, 2))."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(name: str, source: str) -> str:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _BLOCK_RE.match(name)
    if m is None or m.group(2) not in _BLOCK_NAMES:
        raise SrlmError(f"{source}: tensor {name!r} has no counterpart in a Llama/Qwen2/Qwen3 decoder")
    return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"


def _config(
    meta: dict, tensor_types: dict[str, Any], tensor_shapes: dict[str, tuple], rope_freqs, source: str
) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise SrlmError(f"{source}: general.architecture is {arch!r}; srlm reads {', '.join(ARCHITECTURES)}")

    def need(key: str):
        full = f"{arch}.{key}"
        if full not in meta:
            raise SrlmError(f"{source}: metadata {full} is missing")
        return meta[full]

    n_head = int(need("attention.head_count"))
    n_kv = meta.get(f"{arch}.attention.head_count_kv", n_head)
    if isinstance(n_kv, list):
        if len(set(n_kv)) != 1:
            raise SrlmError(f"{source}: {arch}.attention.head_count_kv differs between layers ({sorted(set(n_kv))})")
        n_kv = n_kv[0]
    hidden = int(need("embedding_length"))
    head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // n_head))
    theta = _f32(meta.get(f"{arch}.rope.freq_base", 10000.0))
    rope_scaling = None
    kind = meta.get(f"{arch}.rope.scaling.type", "none")
    if kind == "linear":
        rope_scaling = {"rope_type": "linear", "factor": _f32(need("rope.scaling.factor"))}
    elif kind not in ("none", None):
        raise SrlmError(f"{source}: {arch}.rope.scaling.type is {kind!r}; srlm supports none, linear and llama3")
    if rope_freqs is not None:
        rope_scaling = _llama3_scaling_from(rope_freqs, theta, head_dim, source)
    rope_dims = meta.get(f"{arch}.rope.dimension_count", head_dim)
    if rope_dims != head_dim:
        raise SrlmError(
            f"{source}: {arch}.rope.dimension_count is {rope_dims} but heads are {head_dim} wide; "
            f"srlm rotates whole heads"
        )
    vocab = int(meta.get(f"{arch}.vocab_size", tensor_shapes["token_embd.weight"][0]))
    matrices = {t for n, t in tensor_types.items() if n.endswith(".weight") and len(tensor_shapes[n]) == 2}
    dtype = {frozenset({"F16"}): "float16", frozenset({"BF16"}): "bfloat16"}.get(frozenset(matrices), "float32")
    tok = "tokenizer.ggml."
    return ModelConfig(
        model_type=arch,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(need("feed_forward_length")),
        num_hidden_layers=int(need("block_count")),
        num_attention_heads=n_head,
        num_key_value_heads=int(n_kv),
        head_dim=head_dim,
        max_position_embeddings=int(meta.get(f"{arch}.context_length", 2048)),
        rms_norm_eps=_f32(need("attention.layer_norm_rms_epsilon")),
        rope_theta=theta,
        rope_scaling=rope_scaling,
        tie_word_embeddings="output.weight" not in tensor_types,
        attention_bias=arch == "llama" and "blk.0.attn_q.bias" in tensor_types,
        bos_token_id=meta.get(tok + "bos_token_id"),
        eos_token_id=meta.get(tok + "eos_token_id"),
        pad_token_id=meta.get(tok + "padding_token_id"),
        dtype=dtype,
    )


def read_header(path: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The model's configuration and the metadata but the vocabulary arrays (weights are not read)."""
    reader = _open(path)
    meta = _metadata(reader, skip=("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    shapes = {t.name: tuple(int(x) for x in reversed(t.shape)) for t in reader.tensors}
    rope_freqs = next(
        (np.asarray(t.data, dtype=np.float32) for t in reader.tensors if t.name == "rope_freqs.weight"), None
    )
    return _config(meta, types, shapes, rope_freqs, str(path)), meta


def read(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer]:
    """(config, float32 tensors under HF names, tokenizer) of a GGUF file."""
    from gguf.quants import dequantize

    source = str(path)
    reader = _open(path)
    meta = _metadata(reader)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    shapes = {t.name: tuple(int(x) for x in reversed(t.shape)) for t in reader.tensors}
    rope_freqs = None
    raw = {}
    for t in reader.tensors:
        try:
            w = dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise SrlmError(
                f"{source}: tensor {t.name} is {t.tensor_type.name}, which the gguf package cannot "
                f"dequantize; use a file in F16, Q8_0, Q4_K_M or another common type"
            ) from None
        w = np.asarray(w, dtype=np.float32).reshape(shapes[t.name])
        if t.name == "rope_freqs.weight":
            rope_freqs = w
        else:
            raw[t.name] = w
    config = _config(meta, types, shapes, rope_freqs, source)
    tensors = {}
    for name, w in raw.items():
        if config.model_type == "llama" and (m := _BLOCK_RE.match(name)) and m.group(2) in ("attn_q", "attn_k"):
            w = _unpermute(w, config.num_attention_heads if m.group(2) == "attn_q" else config.num_key_value_heads)
        w = np.ascontiguousarray(w)
        tensors[_hf_name(name, source)] = torch.from_numpy(
            w if w.flags.writeable else w.copy()
        )  # F32 data is a read-only map
    return config, tensors, tokenizer_from_metadata(meta, source)


def load(path: str | Path, dtype=None, device="cpu"):
    """(CausalLM, Tokenizer) from a GGUF file."""
    from srlm.model.checkpoint import from_tensors

    config, tensors, tokenizer = read(path)
    return from_tensors(config, tensors, str(path), dtype=dtype, device=device), tokenizer


# ---------------------------------------------------------------------------- tokenizer in


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what byte-level BPE vocabularies are written in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _pre_name(name: str) -> str:
    return _PRE_ALIASES.get(name, name)


def _build_pre_tokenizer(steps):
    from tokenizers import Regex, pre_tokenizers

    parts = []
    for kind, arg in steps:
        if kind == "split":
            parts.append(pre_tokenizers.Split(Regex(arg), behavior="isolated"))
        elif kind == "digits":
            parts.append(pre_tokenizers.Digits(individual_digits=arg))
        else:
            parts.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=arg))
    return parts[0] if len(parts) == 1 else pre_tokenizers.Sequence(parts)


def tokenizer_from_metadata(meta: dict, source: str) -> Tokenizer:
    """Rebuild a byte-level BPE `Tokenizer` (with specials and chat template) from GGUF metadata."""
    from tokenizers import AddedToken, decoders, models, processors
    from tokenizers import Tokenizer as Backend

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise SrlmError(
            f"{source}: tokenizer.ggml.model is {kind!r}; srlm rebuilds byte-level BPE ('gpt2') "
            f"tokenizers only (SentencePiece 'llama' vocabularies are not supported)"
        )
    pre = meta.get("tokenizer.ggml.pre", "default")
    spec = _PRE_TOKENIZERS.get(_pre_name(pre))
    if spec is None:
        raise SrlmError(
            f"{source}: tokenizer.ggml.pre is {pre!r}; srlm knows "
            f"{', '.join(sorted([*_PRE_TOKENIZERS, *_PRE_ALIASES]))}"
        )
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    alphabet = set(_bytes_to_unicode().values())
    spell = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    added = []
    for i, (tok, typ) in enumerate(zip(tokens, types)):
        if typ == _UNUSED:
            continue  # padding rows of the embedding ([PAD123]); no text maps to them
        if typ in (_CONTROL, _USER_DEFINED, _UNKNOWN):
            added.append((i, tok, typ != _USER_DEFINED))
        elif not set(tok) <= alphabet:  # a normal token written as raw text: respell it in the byte alphabet
            tok = "".join(spell[b] for b in tok.encode("utf-8"))
        vocab.setdefault(tok, i)
    try:
        model = models.BPE(vocab=vocab, merges=merges, ignore_merges=spec["ignore_merges"])
    except Exception as e:  # tokenizers raises a bare Exception for merges outside the vocabulary
        raise SrlmError(f"{source}: tokenizer.ggml.merges do not fit tokenizer.ggml.tokens ({e})") from None
    backend = Backend(model)
    backend.pre_tokenizer = _build_pre_tokenizer(spec["steps"])
    backend.decoder = decoders.ByteLevel()
    for i, tok, special in added:
        if vocab.get(tok) == i:
            at = AddedToken(tok, special=special, normalized=False)
            (backend.add_special_tokens if special else backend.add_tokens)([at])

    def tok_of(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", spec.get("add_bos", False)))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    bos, eos = tok_of("bos_token_id"), tok_of("eos_token_id")
    single = [f"{bos}:0"] * (add_bos and bos is not None) + ["$A:0"] + [f"{eos}:0"] * (add_eos and eos is not None)
    if len(single) > 1:
        backend.post_processor = processors.TemplateProcessing(
            single=" ".join(single), special_tokens=[(t, backend.token_to_id(t)) for t in {bos, eos} if t]
        )
    arch = meta.get("general.architecture", "")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": tok_of("unknown_token_id"),
        "pad_token": tok_of("padding_token_id"),
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "model_max_length": int(meta.get(f"{arch}.context_length", 1_000_000)),
        "clean_up_tokenization_spaces": False,
    }
    template: str | dict[str, str] | None = meta.get("tokenizer.chat_template")
    named = {
        n: meta[f"tokenizer.chat_template.{n}"]
        for n in meta.get("tokenizer.chat_templates", [])
        if f"tokenizer.chat_template.{n}" in meta
    }
    if named:
        template = {**({"default": template} if template else {}), **named}
    eos_ids = [
        i
        for k in ("eos_token_id", "eot_token_id", "eom_token_id")
        if (i := meta.get(f"tokenizer.ggml.{k}")) is not None
    ]
    return Tokenizer(
        backend, config=config, chat_template=template, generation_eos_ids=list(dict.fromkeys(eos_ids)), source=source
    )


# ============================================================================ writing


def _flatten_pre(spec: dict | None) -> tuple | None:
    """A tokenizer.json pre_tokenizer as the step tuples of `_PRE_TOKENIZERS`, or None if it has other parts."""
    if spec is None:
        return None
    items = spec["pretokenizers"] if spec.get("type") == "Sequence" else [spec]
    steps = []
    for p in items:
        t = p.get("type")
        if (
            t == "Split"
            and "Regex" in (p.get("pattern") or {})
            and p.get("behavior") == "Isolated"
            and not p.get("invert")
        ):
            steps.append(("split", p["pattern"]["Regex"]))
        elif t == "Digits":
            steps.append(("digits", bool(p.get("individual_digits"))))
        elif t == "ByteLevel" and not p.get("add_prefix_space"):
            steps.append(("bytelevel", bool(p.get("use_regex", True))))
        else:
            return None
    return tuple(steps)


def pre_tokenizer_name(tokenizer: Tokenizer) -> str:
    """The `tokenizer.ggml.pre` that makes llama.cpp split text as this tokenizer does; SrlmError if none."""
    spec = json.loads(tokenizer.backend.to_str())
    model = spec.get("model") or {}
    where = f"tokenizer of {tokenizer.source}"
    if (
        model.get("type") != "BPE"
        or model.get("byte_fallback")
        or model.get("continuing_subword_prefix")
        or model.get("end_of_word_suffix")
        or (spec.get("decoder") or {}).get("type") != "ByteLevel"
    ):
        raise SrlmError(f"{where}: only byte-level BPE tokenizers can be written to GGUF by srlm")
    norm = spec.get("normalizer")
    if norm is not None and norm.get("type") != "NFC":
        raise SrlmError(f"{where}: normalizer {norm.get('type')} has no llama.cpp equivalent")
    steps = _flatten_pre(spec.get("pre_tokenizer"))
    for name, known in _PRE_TOKENIZERS.items():
        if known["steps"] == steps and known["ignore_merges"] == bool(model.get("ignore_merges")):
            return name
    raise SrlmError(
        f"{where}: its pre-tokenizer is not one llama.cpp implements ({', '.join(_PRE_TOKENIZERS)}); "
        f"llama.cpp would split text differently. Train the tokenizer with `srlm tokenizer train` "
        f"(the qwen2 split) or start from a Qwen2/Llama 3/SmolLM model"
    )


def tokenizer_metadata(tokenizer: Tokenizer, n_vocab: int) -> dict[str, Any]:
    """tokens, types, merges, pre, special ids and flags for `n_vocab` embedding rows."""
    spec = json.loads(tokenizer.backend.to_str())
    pre = pre_tokenizer_name(tokenizer)
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [_UNUSED] * n_vocab
    where = f"tokenizer of {tokenizer.source}"
    for tok, i in spec["model"]["vocab"].items():
        if i >= n_vocab:
            raise SrlmError(f"{where}: token id {i} ({tok!r}) is beyond the model's {n_vocab} embedding rows")
        tokens[i], types[i] = tok, _NORMAL
    for a in spec.get("added_tokens") or []:
        i = a["id"]
        if i >= n_vocab:
            raise SrlmError(f"{where}: added token {a['content']!r} (id {i}) is beyond the model's {n_vocab} rows")
        tokens[i], types[i] = a["content"], _CONTROL if a["special"] else _USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges") or []]
    probe = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    out = {
        "pre": pre,
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "unk": tokenizer._special_id("unk_token"),
        "pad": tokenizer._special_id("pad_token"),
        "add_bos": len(full) > len(probe) and full[0] == tokenizer.bos_token_id,
        "add_eos": len(full) > len(probe) and full[-1] == tokenizer.eos_token_id,
        "chat_template": tokenizer.chat_template,
    }
    return out


def _quant_type(gguf_name: str, shape: tuple[int, ...], qtype):
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as Q

    if len(shape) == 1 or gguf_name.endswith("_norm.weight"):
        return Q.F32
    if qtype in (Q.Q8_0, Q.Q4_0):
        if shape[-1] % GGML_QUANT_SIZES[qtype][0]:
            return Q.F16
        if qtype == Q.Q4_0 and gguf_name in ("token_embd.weight", "output.weight"):
            return Q.Q8_0
    return qtype


def gguf_tensors(model) -> dict[str, np.ndarray]:
    """The model's weights under llama.cpp names, float32, q/k permuted for `llama` (layer sharing expanded)."""
    from srlm.model.checkpoint import hf_state_dict

    config = model.config
    out = {}
    for name, t in hf_state_dict(model).items():
        w = t.detach().float().cpu().numpy()
        if name in _HF_TO_GGUF_GLOBAL:
            out[_HF_TO_GGUF_GLOBAL[name]] = w
            continue
        m = _HF_BLOCK_RE.match(name)
        if m is None or m.group(2) not in _HF_TO_GGUF_BLOCK:
            raise SrlmError(f"tensor {name} has no llama.cpp counterpart")
        short = _HF_TO_GGUF_BLOCK[m.group(2)]
        if config.model_type == "llama" and short in ("attn_q", "attn_k"):
            w = _permute(w, config.num_attention_heads if short == "attn_q" else config.num_key_value_heads)
        out[f"blk.{m.group(1)}.{short}.{m.group(3)}"] = w
    return out


def export(model, tokenizer: Tokenizer | None, path: str | Path, qtype: str = "f16", name: str | None = None) -> Path:
    """Write `model` (with its tokenizer) as a GGUF llama.cpp loads; atomically (a temporary file, then a rename)."""
    from gguf import GGMLQuantizationType as Q
    from gguf import LlamaFileType as F

    types = {
        "f32": (Q.F32, F.ALL_F32),
        "f16": (Q.F16, F.MOSTLY_F16),
        "bf16": (Q.BF16, F.MOSTLY_BF16),
        "q8_0": (Q.Q8_0, F.MOSTLY_Q8_0),
        "q4_0": (Q.Q4_0, F.MOSTLY_Q4_0),
    }
    if qtype not in types:
        raise SrlmError(f"--type {qtype!r}: choose one of {', '.join(EXPORT_TYPES)}")
    qt, file_type = types[qtype]

    def encode(tname: str, arr: np.ndarray):
        from gguf.quants import quantize

        t = _quant_type(tname, arr.shape, qt)
        return quantize(np.ascontiguousarray(arr, dtype=np.float32), t), t

    return write(model, tokenizer, path, encode, int(file_type), name=name)


def write(
    model, tokenizer: Tokenizer | None, path: str | Path, encode, file_type: int, name: str | None = None
) -> Path:
    """`export` with the tensor encoding given: `encode(gguf_name, float32 array) -> (data, GGMLQuantizationType)`
    (data as `gguf.quants.quantize` returns it). Atomic: a temporary file, then a rename."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    if tokenizer is None:
        raise SrlmError("a GGUF carries its tokenizer: the checkpoint needs tokenizer.json to be exported")
    config: ModelConfig = model.config
    arch = config.model_type
    if config.mlp_bias:
        raise SrlmError("mlp_bias=true: llama.cpp's llama architecture has no MLP biases")
    tok = tokenizer_metadata(tokenizer, config.vocab_size)  # refuses tokenizers llama.cpp would split differently

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    w = gguf.GGUFWriter(str(tmp), arch)
    try:
        w.add_type("model")
        w.add_name(name or path.stem)
        w.add_file_type(file_type)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_vocab_size(config.vocab_size)
        w.add_context_length(config.max_position_embeddings)
        w.add_embedding_length(config.hidden_size)
        w.add_block_count(config.effective_layers)
        w.add_feed_forward_length(config.intermediate_size)
        w.add_head_count(config.num_attention_heads)
        w.add_head_count_kv(config.num_key_value_heads)
        w.add_key_length(config.head_dim)
        w.add_value_length(config.head_dim)
        w.add_rope_dimension_count(config.head_dim)
        w.add_rope_freq_base(config.rope_theta)
        w.add_layer_norm_rms_eps(config.rms_norm_eps)
        if config.rope_type == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(config.rope_scaling["factor"]))

        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(tok["pre"])
        w.add_token_list(tok["tokens"])
        w.add_token_types(tok["types"])
        w.add_token_merges(tok["merges"])
        for key, add in (
            ("bos", w.add_bos_token_id),
            ("eos", w.add_eos_token_id),
            ("unk", w.add_unk_token_id),
            ("pad", w.add_pad_token_id),
        ):
            if tok[key] is not None:
                add(int(tok[key]))
        w.add_add_bos_token(tok["add_bos"])
        w.add_add_eos_token(tok["add_eos"])
        template = tok["chat_template"]
        if isinstance(template, dict):
            w.add_chat_template([{"name": k, "template": v} for k, v in template.items()])
        elif template:
            w.add_chat_template(template)

        tensors = gguf_tensors(model)
        if config.rope_type == "llama3":
            tensors["rope_freqs.weight"] = _llama3_rope_factors(config.rope_theta, config.head_dim, config.rope_scaling)
        for tname, arr in tensors.items():
            data, t = encode(tname, arr)
            w.add_tensor(tname, data, raw_dtype=t if t not in (Q.F32, Q.F16) else None)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return path
