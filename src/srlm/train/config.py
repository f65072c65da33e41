"""Training configs: dataclasses read from YAML plus dotted `key=value` overrides.

`load_config(cls, path, overrides)` builds a config dataclass (a `TrainConfig`
subclass, possibly with nested dataclass fields such as `lora`) from an optional
YAML file and command-line overrides like `lr=3e-4` or `lora.rank=8` (values are
parsed as YAML scalars or flow lists: `betas=[0.9,0.95]`). Unknown keys are an
`SrlmError` naming the file and line (or the override) and suggesting the closest
known key; malformed YAML names file and line. A value of the wrong type or outside its
field's range (`LIMITS`) is blamed on where it was set: the command-line override, or the YAML
file's line. `to_yaml(config)` writes the
resolved config, saved with every checkpoint. Every field is documented where it
is defined.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from srlm.errors import SrlmError, did_you_mean


@dataclass
class TrainConfig:
    """Options shared by every stage; the loop (`srlm.train.loop`) reads these."""

    #: folder for checkpoints (`checkpoint-NNNNNN/`), `metrics.jsonl` and the final model (`final/`)
    out_dir: str = "runs/train"
    #: a preset name (`srlm.model.PRESETS`, random init) or a checkpoint to start from: an HF folder,
    #: a .gguf file, or a Hugging Face Hub id (ORG/NAME, downloaded into the Hub cache)
    model: str = "tiny"
    #: Hub revision (branch, tag or commit) when `model` / `init_from` is a Hub id
    revision: str | None = None
    #: preset fields to change, e.g. {num_hidden_layers: 2, hidden_size: 64} (ignored for folders)
    model_overrides: dict = field(default_factory=dict)
    #: tokenizer folder; default: the model folder's (required when `model` is a preset)
    tokenizer: str | None = None
    #: checkpoint (folder, .gguf or Hub id) whose weights initialise the model (default: `model` itself)
    init_from: str | None = None
    #: optimizer steps
    steps: int = 1000
    #: peak learning rate
    lr: float = 3e-4
    #: the schedule decays to lr * min_lr_ratio at the last step
    min_lr_ratio: float = 0.1
    #: linear warmup from 0 over this many steps
    warmup_steps: int = 0
    #: cosine | linear | constant (after warmup)
    schedule: str = "cosine"
    #: sequences per optimizer step, over all ranks and micro-batches (global batch)
    batch_size: int = 8
    #: micro-batches per rank per step; each holds batch_size / (grad_accum * world_size) sequences
    grad_accum: int = 1
    #: clip the global gradient norm to this (0 = no clipping)
    max_grad_norm: float = 1.0
    #: AdamW decoupled weight decay, applied to matrices only (not norms, biases)
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    #: autocast dtype: bf16 (weights stay fp32, matmuls in bf16), fp32, or auto = bf16 where the
    #: hardware has fast bf16 (CUDA; CPUs with AVX-512-BF16/AMX), else fp32 (bf16 on AVX2 is ~100x slower)
    dtype: str = "auto"
    seed: int = 0
    #: checkpoint every N steps (0: only at the end); a kill costs at most the steps since the last checkpoint
    save_every: int = 0
    #: keep the newest K checkpoints (0: keep every one; the final model is always kept)
    keep_last: int = 2
    #: run the stage's validation and `eval_tasks` every N steps (0: only at the end)
    eval_every: int = 0
    #: tasks for the evaluation callback (e.g. [synth-gsm]); empty: stage validation only
    eval_tasks: list[str] = field(default_factory=list)
    #: examples per eval task
    eval_limit: int = 100
    #: log loss / lr / tokens-per-second every N steps
    log_every: int = 10
    #: false: refuse an out_dir with checkpoints; true: continue from the newest; auto: either; or a checkpoint path
    resume: Any = False
    #: recompute activations in backward (less memory, ~30% slower)
    gradient_checkpointing: bool = False
    #: longest training sequence in tokens (longer examples are truncated)
    max_seq_len: int = 512
    #: CPU threads for torch (0: leave torch's default)
    num_threads: int = 0
    #: cpu | cuda | auto
    device: str = "auto"
    #: shard parameters, gradients and optimizer state across ranks with FSDP2 (models too big for one device)
    fsdp: bool = False
    #: show progress on rank 0: a live bar in a terminal, plain lines (about 20 a run) in a log
    progress: bool = True


def _strip_optional(tp):
    """(inner type, allows None) for `X | None` / Optional[X]."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), len(args) < len(typing.get_args(tp))
    return tp, False


def _coerce(value, tp, where: str):
    """Check / convert one value to a field's annotated type."""
    if tp is Any:
        return value
    inner, nullable = _strip_optional(tp)
    if value is None:
        if nullable:
            return None
        raise SrlmError(f"{where}: must not be null")
    origin = typing.get_origin(inner)
    if dataclasses.is_dataclass(inner):
        if isinstance(value, inner):
            return value
        if not isinstance(value, dict):
            raise SrlmError(f"{where}: expected a mapping of {inner.__name__} fields, got {value!r}")
        return _build(inner, value, where, {})
    if origin is list:
        (item,) = typing.get_args(inner) or (Any,)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # `eval_tasks=synth-gsm` means a one-item list
        if not isinstance(value, (list, tuple)):
            raise SrlmError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or inner is dict:
        if not isinstance(value, dict):
            raise SrlmError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if inner is bool:
        if isinstance(value, bool):
            return value
        raise SrlmError(f"{where}: expected true or false, got {value!r}")
    if inner is int:
        if isinstance(value, bool):
            raise SrlmError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else int(value)
            except ValueError:
                pass
        raise SrlmError(f"{where}: expected an integer, got {value!r}")
    if inner is float:
        if isinstance(value, bool):
            raise SrlmError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        try:  # YAML 1.1 reads 3e-4 (no dot) as a string
            return float(value)
        except (TypeError, ValueError):
            raise SrlmError(f"{where}: expected a number, got {value!r}") from None
    if inner is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise SrlmError(f"{where}: expected a string, got {value!r}")
    return value


def _where(dotted: str, source: str, lines: dict[str, int], origins: dict[str, str]) -> str:
    """Where a key's value came from: the override that set it, or the file (and line)."""
    if dotted in origins:
        return origins[dotted]
    return f"{source}:{lines[dotted]}" if dotted in lines else source


def _field_default(cls, name: str):
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _build(
    cls,
    data: dict,
    source: str,
    lines: dict[str, int],
    prefix: str = "",
    origins: dict[str, str] | None = None,
    base=None,
):
    """`cls` from `data`; a nested block starts from its field's default (`base`), so a YAML that sets one
    of its keys keeps the stage's defaults for the others."""
    origins = origins or {}
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        where = _where(dotted, source, lines, origins)
        if key not in names:
            nested = [
                n
                for n in names
                if dataclasses.is_dataclass(_strip_optional(hints[n])[0])
                and key in {f.name for f in dataclasses.fields(_strip_optional(hints[n])[0])}
            ]
            hint = (
                f" Did you mean {prefix}{nested[0]}.{key}?"
                if nested
                else did_you_mean(key, names, prefix=prefix, cutoff=0.5)
            )
            raise SrlmError(
                f"{where}: unknown {cls.__name__} key {dotted!r}.{hint} "
                f"Known keys: {', '.join(prefix + n for n in names)}"
            )
        tp = hints[key]
        inner, _ = _strip_optional(tp)
        if dataclasses.is_dataclass(inner) and isinstance(value, dict):
            default = _field_default(cls, key)
            try:
                kwargs[key] = _build(
                    inner,
                    value,
                    source,
                    lines,
                    prefix=f"{dotted}.",
                    origins=origins,
                    base=default if isinstance(default, inner) else None,
                )
            except SrlmError as e:
                msg = str(e)
                inner_where = _where(f"{dotted}.{next(iter(value), '')}", source, lines, origins)
                raise SrlmError(msg if msg.startswith(source) else f"{inner_where}: {dotted}: {msg}") from None
        else:
            kwargs[key] = _coerce(value, tp, f"{where}: {dotted}")
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except SrlmError:
        raise
    except (TypeError, ValueError) as e:
        raise SrlmError(f"{source}: invalid {cls.__name__} ({e})") from None


def _key_lines(node, prefix: str = "", out: dict[str, int] | None = None) -> dict[str, int]:
    """dotted key -> 1-based line, from a composed YAML node (so errors can point at the line)."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{prefix}{k.value}"
            out[key] = k.start_mark.line + 1
            _key_lines(v, f"{key}.", out)
    return out


def read_yaml(path: str | Path) -> tuple[dict, dict[str, int]]:
    path = Path(path)
    if not path.is_file():
        raise SrlmError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        lines = _key_lines(yaml.compose(text)) if data else {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise SrlmError(f"{path}{line}: malformed YAML ({problem}); fix the file") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise SrlmError(f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    return data, lines


def _override_key(item: str) -> str:
    return item.split("=", 1)[0].strip().lstrip("-").replace("-", "_")


def parse_overrides(overrides: list[str]) -> dict:
    """["lr=3e-4", "lora.rank=8"] -> {"lr": 3e-4, "lora": {"rank": 8}} (values parsed as YAML)."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise SrlmError(f"override {item!r} is not key=value (e.g. lr=3e-4, lora.rank=8)")
        key, raw = _override_key(item), item.split("=", 1)[1]
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SrlmError(f"override {item!r}: {p!r} was given a value earlier and cannot also have sub-keys")
        node[parts[-1]] = value
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(cls, path: str | Path | None = None, overrides: list[str] | dict | None = None):
    """Build `cls` from a YAML file (optional) and overrides; errors name the file/line or the override."""
    data, lines = read_yaml(path) if path else ({}, {})
    source = str(path) if path else "config"
    origins: dict[str, str] = {}
    if overrides:
        if isinstance(overrides, dict):
            extra = overrides
            origins = {k: f"override {k}" for k in _flat_keys(extra)}
        else:
            extra = parse_overrides(list(overrides))
            for item in overrides:  # the last override of a key wins, and is the one blamed
                key = _override_key(item)
                for k in [key] + [k for k in _flat_keys(extra) if k.startswith(key + ".")]:
                    origins[k] = f"command-line override {item!r}"
        for k in _flat_keys(extra):
            lines.pop(k, None)
        data = _merge(data, extra)
    config = _build(cls, data, source, lines, origins=origins)
    check_limits(config, lambda key: _where(key, source, lines, origins))
    return config


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


# TrainConfig field -> (test, what a value must be); `check_limits` applies them
LIMITS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "steps": (lambda v: v > 0, "a positive integer"),
    "lr": (lambda v: _finite(v) and v >= 0, "a number >= 0"),
    "min_lr_ratio": (lambda v: _finite(v) and 0 <= v <= 1, "between 0 and 1"),
    "warmup_steps": (lambda v: v >= 0, "an integer >= 0 (0: no warmup)"),
    "batch_size": (lambda v: v > 0, "a positive integer"),
    "grad_accum": (lambda v: v > 0, "a positive integer"),
    "max_grad_norm": (lambda v: _finite(v) and v >= 0, "a number >= 0 (0: no clipping)"),
    "weight_decay": (lambda v: _finite(v) and v >= 0, "a number >= 0"),
    "betas": (lambda v: len(v) == 2 and all(_finite(b) and 0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "eps": (lambda v: _finite(v) and v > 0, "a number > 0"),
    "save_every": (lambda v: v >= 0, "an integer >= 0 (0: save only at the end)"),
    "keep_last": (lambda v: v >= 0, "an integer >= 0 (0: keep every checkpoint)"),
    "eval_every": (lambda v: v >= 0, "an integer >= 0 (0: evaluate only at the end)"),
    "eval_limit": (lambda v: v > 0, "a positive integer"),
    "log_every": (lambda v: v > 0, "a positive integer"),
    "max_seq_len": (lambda v: v > 0, "a positive integer"),
    "num_threads": (lambda v: v >= 0, "an integer >= 0 (0: torch's default)"),
}


def check_limits(config, where: Callable[[str], str] | None = None) -> None:
    """An `SrlmError` naming the first field of `config` outside its range (`LIMITS`) and where it was set."""
    for key, (ok, what) in LIMITS.items():
        if not hasattr(config, key):
            continue
        value = getattr(config, key)
        if not ok(value):
            raise SrlmError(f"{where(key) if where else 'config'}: {key} must be {what}, got {value!r}")


def _flat_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out.append(prefix + k)
        if isinstance(v, dict):
            out.extend(_flat_keys(v, f"{prefix}{k}."))
    return out


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def to_yaml(config) -> str:
    header = f"# resolved {type(config).__name__}, written by srlm train\n"
    return header + yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=None)
