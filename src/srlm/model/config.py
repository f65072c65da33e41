"""Model configuration: one dataclass that reads and writes Hugging Face `config.json`.

`ModelConfig` holds exactly the fields the decoder needs, under Hugging Face's
names, for the Llama, Qwen2 and Qwen3 families; what each family computes differently
(norm, activation, q/k norm, biases, embedding scale, rotary layout) is one row of `FAMILIES`.
`from_hf_dict` accepts both
layouts found in the wild: transformers-4 (`rope_theta`, `rope_scaling`) and
transformers-5 (`rope_parameters`); `to_hf_dict` writes a config that both
transformers generations load. Validation errors name the field and the file.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srlm.errors import SrlmError

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
#: gated-MLP activations, by Hugging Face's `hidden_act` names
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")


@dataclass(frozen=True)
class Traits:
    """What a model family computes beyond its sizes. Every forward (`CausalLM`, the engine's fused
    decode step, the static decode step) reads these; a fast path that does not implement a trait
    refuses the model and the plain forward runs instead."""

    #: RMSNorm multiplies by (norm_offset + weight): 0 for Llama / Qwen, 1 for Gemma-style norms
    norm_offset: float = 0.0
    #: the gated MLP's activation, act(gate) * up (a name from ACTIVATIONS; None: the config's hidden_act)
    activation: str | None = None
    #: RMSNorm over each head of q and k before the rotary embedding
    qk_norm: bool = False
    #: bias on q/k/v and on o_proj: fixed by the family, or None for the config's `attention_bias`
    qkv_bias: bool | None = None
    o_bias: bool | None = None
    #: embeddings multiplied by sqrt(hidden_size) before the first layer
    scale_embeddings: bool = False
    #: rotary layout: "half" rotates the two halves of each head (Hugging Face), "interleaved" pairs
    #: neighbouring dimensions (GPT-J)
    rope: str = "half"


#: model_type -> its traits: the one table of family behaviour
FAMILIES: dict[str, Traits] = {
    "llama": Traits(),
    "qwen2": Traits(qkv_bias=True, o_bias=False),
    "qwen3": Traits(qk_norm=True),
}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


@dataclass
class ModelConfig:
    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    #: HF rope_scaling dict without rope_theta, e.g. {"rope_type": "llama3", "factor": 8.0, ...}; None = default
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = True
    #: bias on q/k/v projections (Qwen2 always; Llama's `attention_bias` also biases o_proj)
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    #: weight dtype as stored ("float32", "bfloat16", "float16")
    dtype: str = "float32"
    #: srlm extension, MobileLLM-LS: each stored block is applied `layer_share` times in a row.
    #: `num_hidden_layers` counts stored (unique) blocks. Exported to HF by repeating the weights.
    layer_share: int = 1
    #: fields of the source config.json we do not use, written back unchanged on save
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and self.num_attention_heads:
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self, source: str = "config") -> None:
        def bad(field_: str, msg: str):
            raise _FieldError(source, field_, msg)

        if self.model_type not in FAMILIES:
            bad("model_type", f"is {self.model_type!r}; supported: {', '.join(FAMILIES)}")
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
            "layer_share",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                bad(name, f"must be a positive integer, got {v!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            bad(
                "num_key_value_heads",
                f"({self.num_key_value_heads}) must divide num_attention_heads ({self.num_attention_heads})",
            )
        if self.head_dim % 2:
            bad("head_dim", f"must be even for rotary embeddings, got {self.head_dim}")
        if not (self.rms_norm_eps > 0):
            bad("rms_norm_eps", f"must be > 0, got {self.rms_norm_eps!r}")
        if not (self.rope_theta > 0):
            bad("rope_theta", f"must be > 0, got {self.rope_theta!r}")
        if self.hidden_act not in ACTIVATIONS:
            bad("hidden_act", f"is {self.hidden_act!r}; supported: {', '.join(ACTIVATIONS)}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            bad("dtype", f"is {self.dtype!r}; use float32, bfloat16 or float16")
        rs = self.rope_scaling
        if rs is not None:
            rtype = rs.get("rope_type", rs.get("type", "default"))
            if rtype not in SUPPORTED_ROPE_TYPES:
                bad("rope_scaling.rope_type", f"is {rtype!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
            if rtype in ("linear", "llama3") and not (_is_number(rs.get("factor")) and rs["factor"] > 0):
                bad("rope_scaling.factor", f"must be > 0, got {rs.get('factor')!r}")
            if rtype == "llama3":
                for k in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                    if k not in rs:
                        bad(f"rope_scaling.{k}", "is required for rope_type 'llama3'")

    # ------------------------------------------------------------------ derived
    @property
    def rope_type(self) -> str:
        if not self.rope_scaling:
            return "default"
        return self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))

    @property
    def traits(self) -> Traits:
        """The family's traits with the config's own choices filled in (biases, activation)."""
        t = FAMILIES[self.model_type]
        return dataclasses.replace(
            t,
            activation=t.activation or self.hidden_act,
            qkv_bias=self.attention_bias if t.qkv_bias is None else t.qkv_bias,
            o_bias=self.attention_bias if t.o_bias is None else t.o_bias,
        )

    @property
    def qkv_bias(self) -> bool:
        return self.traits.qkv_bias

    @property
    def o_bias(self) -> bool:
        return self.traits.o_bias

    @property
    def qk_norm(self) -> bool:
        return self.traits.qk_norm

    @property
    def effective_layers(self) -> int:
        """Layers applied in a forward pass (stored blocks x sharing)."""
        return self.num_hidden_layers * self.layer_share

    @property
    def eos_token_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else ([e] if isinstance(e, int) else list(e))

    # ------------------------------------------------------------------ HF I/O
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        if not isinstance(d, dict):
            raise SrlmError(f"{source}: expected a JSON object of model fields, got {type(d).__name__}")
        d = dict(d)
        mt = d.get("model_type")
        if mt not in FAMILIES:
            raise SrlmError(f"{source}: model_type {mt!r} is not supported; supported: {', '.join(FAMILIES)}")
        missing = [k for k in REQUIRED_FIELDS if k not in d]
        if missing:
            raise SrlmError(
                f"{source}: required field(s) {', '.join(map(repr, missing))} missing; a model's "
                f"config.json states its shape (srlm does not guess it)"
            )
        _check_types(cls, d, source)
        # transformers-5 layout folds theta and scaling into rope_parameters
        rope_params = d.pop("rope_parameters", None)
        rope_scaling = d.pop("rope_scaling", None)
        rope_theta = d.pop("rope_theta", None)
        if rope_params:
            rope_params = dict(rope_params)
            rope_theta = rope_params.pop("rope_theta", rope_theta)
            if rope_params.get("rope_type", rope_params.get("type", "default")) != "default":
                rope_scaling = rope_params
        if rope_scaling is not None:
            rope_scaling = dict(rope_scaling)
            if "type" in rope_scaling and "rope_type" not in rope_scaling:
                rope_scaling["rope_type"] = rope_scaling.pop("type")
            if rope_scaling.get("rope_type", "default") == "default":
                rope_scaling = None
        dtype = d.pop("dtype", None) or d.pop("torch_dtype", None) or "float32"
        d.pop("torch_dtype", None)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "rope_scaling", "rope_theta", "dtype"}
        kwargs = {k: d.pop(k) for k in list(d) if k in known}
        share = d.pop("srlm_layer_share", 1)
        if not isinstance(share, int) or isinstance(share, bool) or share < 1:
            raise SrlmError(f"{source}: field 'srlm_layer_share' must be a positive integer, got {share!r}")
        if share > 1:
            # stored expanded: num_hidden_layers counts applied layers; srlm keeps the unique blocks
            kwargs["num_hidden_layers"] = kwargs["num_hidden_layers"] // share
        kwargs["layer_share"] = share
        if mt == "qwen2" or "attention_bias" not in kwargs:
            kwargs.setdefault("attention_bias", False)
        if d.get("use_sliding_window"):
            raise SrlmError(f"{source}: use_sliding_window=true is not supported")
        if rope_theta is not None and not _is_number(rope_theta):
            raise SrlmError(f"{source}: field 'rope_theta' must be a number, got {rope_theta!r}")
        if not isinstance(dtype, str):
            raise SrlmError(f"{source}: field 'torch_dtype' must be a string such as \"bfloat16\", got {dtype!r}")
        try:
            return cls(
                rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
                rope_scaling=rope_scaling,
                dtype=str(dtype).replace("torch.", ""),
                extra=d,
                **kwargs,
            )
        except _FieldError as e:
            raise SrlmError(f"{source}: field {e.field!r} {e.problem}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if not path.exists():
            raise SrlmError(f"{path}: no such file (a checkpoint folder needs config.json)")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise SrlmError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
        return cls.from_hf_dict(d, source=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """A config.json both transformers 4 and 5 load (layer sharing expanded)."""
        d: dict[str, Any] = dict(self.extra)
        for k in ("architectures", "transformers_version", "rope_parameters", "layer_types", "srlm_layer_share"):
            d.pop(k, None)
        d.update(
            architectures=[_ARCHITECTURES[self.model_type]],
            model_type=self.model_type,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.effective_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            rope_scaling=dict(self.rope_scaling) if self.rope_scaling else None,
            tie_word_embeddings=self.tie_word_embeddings,
            hidden_act=self.hidden_act,
            initializer_range=self.initializer_range,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            torch_dtype=self.dtype,
            use_cache=True,
        )
        if self.model_type == "qwen2":
            d.update(use_sliding_window=False, sliding_window=None, max_window_layers=self.effective_layers)
        else:
            d.update(attention_bias=self.attention_bias)
        if self.model_type == "llama":
            d.update(mlp_bias=self.mlp_bias)
        if self.model_type == "qwen3":
            d.update(use_sliding_window=False, sliding_window=None)
        if self.layer_share > 1:
            d["srlm_layer_share"] = self.layer_share
        return d

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


#: fields a config.json must give: the model's shape (transformers' class defaults are no guide to a checkpoint)
REQUIRED_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


class _FieldError(SrlmError):
    """A field out of range; `from_hf_dict` re-raises it naming the file."""

    def __init__(self, source: str, field_: str, problem: str):
        super().__init__(f"{source}: field {field_!r} {problem}")
        self.field, self.problem = field_, problem


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_types(cls, d: dict[str, Any], source: str) -> None:
    """Each known field of a config.json has its JSON type: `"rope_theta": "abc"` or `"tie_word_embeddings":
    "false"` is refused naming the file and field, not turned into a traceback or a silently wrong model."""
    checks = {
        int: (_is_int, "an integer"),
        float: (_is_number, "a number"),
        str: (lambda v: isinstance(v, str), "a string"),
        bool: (lambda v: isinstance(v, bool), "true or false"),
    }
    hints = typing.get_type_hints(cls)
    for name, value in d.items():
        if name == "eos_token_id":
            ok = value is None or _is_int(value) or (isinstance(value, list) and all(map(_is_int, value)))
            if not ok:
                raise SrlmError(
                    f"{source}: field 'eos_token_id' must be an integer, a list of integers or null, got {value!r}"
                )
            continue
        if name in ("rope_scaling", "rope_parameters"):
            if value is not None and not isinstance(value, dict):
                raise SrlmError(f"{source}: field {name!r} must be an object or null, got {value!r}")
            continue
        if name not in hints or name in ("extra", "dtype"):
            continue
        tp = hints[name]
        nullable = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)
        base = next((a for a in typing.get_args(tp) if a is not type(None)), tp) if nullable else tp
        if base not in checks or (value is None and nullable):
            continue
        test, what = checks[base]
        if not test(value):
            raise SrlmError(f"{source}: field {name!r} must be {what}{' or null' if nullable else ''}, got {value!r}")
