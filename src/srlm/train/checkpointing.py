"""A training run's files: checkpoints (written, verified, rotated, chosen for resume) and `metrics.jsonl`.

    out_dir/checkpoint-NNNNNN/   an HF folder + train_config.yaml + training_state.pt + training_state.json
    out_dir/final/               the last model (no training_state.pt)
    out_dir/metrics.jsonl        one JSON record per logged step

Every checkpoint and `final/` is written through `srlm.atomic.atomic_folder` (a hidden temporary,
flushed to disk, then renamed), so a kill or a power loss never leaves half a folder under a name a
later run would load. `training_state.json` is the manifest, written last: stage, step, data position
and the size and CRC-32 of every other file. Resume verifies a checkpoint against it before loading;
a damaged newest checkpoint is moved aside to `checkpoint-NNNNNN.damaged` (never deleted) and the
run falls back to the newest intact one, with a warning. Rotation keeps the newest `keep_last`
checkpoints up to the one just written, which is intact, so the only intact checkpoint is never
removed.

The metrics log follows the checkpoint: a fresh run moves an old log aside
(`metrics.previous-N.jsonl`), a resumed run keeps the records up to its checkpoint's step, and a torn
last line (a kill or a full disk mid-write) is dropped with a message; the log is then rewritten
atomically.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import zlib
from pathlib import Path
from typing import Callable

import torch

from srlm.atomic import atomic_folder, disk_full, write_text_atomic
from srlm.errors import SrlmError
from srlm.train.config import TrainConfig, to_dict

MANIFEST = "training_state.json"
STATE = "training_state.pt"
METRICS = "metrics.jsonl"

# keys that may change between a run and its resumption
RESUMABLE_CHANGES = {
    "steps",
    "save_every",
    "keep_last",
    "eval_every",
    "eval_tasks",
    "eval_limit",
    "log_every",
    "resume",
    "num_threads",
    "progress",
    "device",
    "out_dir",
}

_CKPT = re.compile(r"^checkpoint-(\d+)$")


class DamagedCheckpoint(Exception):
    """A checkpoint whose files do not match its manifest or cannot be read; resume falls back past it."""


def warn(message: str) -> None:
    print(f"srlm train: warning: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- listing


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `out_dir` (those with a manifest), oldest first."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := _CKPT.match(p.name)) and (p / MANIFEST).is_file()]
    return [p for _, p in sorted(found)]


def checkpoint_step(ckpt: Path) -> int:
    return int(_CKPT.match(ckpt.name).group(1))


# ----------------------------------------------------------------------------- writing


def _crc32(path: Path) -> str:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def file_manifest(folder: Path) -> dict[str, dict]:
    """{relative path: {size, crc32}} for every file under `folder`."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(folder).as_posix()] = {"size": p.stat().st_size, "crc32": _crc32(p)}
    return out


def write_checkpoint(
    path: Path,
    model,
    tokenizer,
    config_yaml: str,
    meta: dict,
    training_state: dict | None,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write a checkpoint (or `final/` when `training_state` is None) atomically, its manifest last."""
    from srlm.model.checkpoint import write_folder

    previous = [c for c in list_checkpoints(path.parent) if c != path]
    hint = (
        f"the newest checkpoint, {previous[-1].name}, is intact: make room, then resume (--resume)"
        if previous
        else "make room (or choose another out_dir) and run again"
    )
    with atomic_folder(path, no_space_hint=hint) as tmp:
        write_folder(model, tmp, tokenizer=tokenizer, extra_files={"train_config.yaml": config_yaml})
        if write_extra is not None:
            write_extra(tmp)
        if training_state is not None:
            # through a Python file, so a failed write surfaces as an OSError (torch reports only "unexpected pos")
            with open(tmp / STATE, "wb") as f:
                torch.save(training_state, f)
        manifest = {**meta, "time": time.time(), "files": file_manifest(tmp)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def rotate(out_dir: Path, newest: Path, keep_last: int) -> list[Path]:
    """Remove checkpoints older than `newest` beyond the newest `keep_last` (0: keep all); returns the removed."""
    if keep_last <= 0:
        return []
    step = checkpoint_step(newest)
    older = [c for c in list_checkpoints(out_dir) if checkpoint_step(c) < step]
    doomed = older[: max(0, len(older) - (keep_last - 1))]
    for c in doomed:
        shutil.rmtree(c, ignore_errors=True)
    return doomed


# ----------------------------------------------------------------------------- verifying


def read_manifest(ckpt: Path) -> dict:
    try:
        meta = json.loads((ckpt / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedCheckpoint(f"{MANIFEST} cannot be read ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise DamagedCheckpoint(f"{MANIFEST} has no step")
    return meta


def verify(ckpt: Path, need_state: bool = True) -> dict:
    """The manifest of `ckpt` after checking every listed file's size and CRC-32; `DamagedCheckpoint` if not.

    Checkpoints written before manifests listed their files are checked for presence only.
    """
    meta = read_manifest(ckpt)
    files = meta.get("files")
    if files is None:
        needed = [STATE] if need_state else []
        missing = [n for n in needed + ["config.json", "train_config.yaml"] if not (ckpt / n).is_file()]
        if missing:
            raise DamagedCheckpoint(f"{missing[0]} is missing")
        return meta
    if need_state and STATE not in files:
        raise DamagedCheckpoint(f"no {STATE} (a final model, not a checkpoint to resume from)")
    for name, want in files.items():
        f = ckpt / name
        if not f.is_file():
            raise DamagedCheckpoint(f"{name} is missing")
        size = f.stat().st_size
        if size != want["size"]:
            raise DamagedCheckpoint(f"{name} has {size} bytes, the manifest says {want['size']}")
        if _crc32(f) != want["crc32"]:
            raise DamagedCheckpoint(f"{name} does not match its checksum")
    return meta


def check_compatible(config: TrainConfig, ckpt: Path, stage_name: str, meta: dict) -> None:
    """An `SrlmError` when `ckpt` was made by another stage or an incompatible config."""
    import yaml

    if meta.get("stage") != stage_name:
        raise SrlmError(f"{ckpt} was written by a {meta.get('stage')!r} run, not {stage_name!r}; use a fresh out_dir")
    try:
        saved = yaml.safe_load((ckpt / "train_config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DamagedCheckpoint(f"train_config.yaml cannot be read ({e})") from None
    now = to_dict(config)
    diff = [k for k in sorted(set(saved) | set(now)) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k)]
    if diff:
        shown = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff[:5])
        raise SrlmError(
            f"{ckpt} was made by another config ({shown}); resume with the same config "
            f"(only {', '.join(sorted(RESUMABLE_CHANGES))} may change) or use a fresh out_dir"
        )


# ----------------------------------------------------------------------------- choosing


def resume_candidates(config: TrainConfig) -> tuple[list[Path], bool]:
    """(checkpoints to try, newest first; whether one was named explicitly) for `config.resume`."""
    r = config.resume
    ckpts = list_checkpoints(config.out_dir)
    if r in (False, None, "false", "no"):
        if ckpts:
            raise SrlmError(
                f"{config.out_dir} already has checkpoints (newest {ckpts[-1].name}); pass resume=true "
                f"(or --resume) to continue, or choose another out_dir"
            )
        return [], False
    if r in (True, "true", "auto", "yes"):
        if not ckpts and r != "auto":
            raise SrlmError(f"resume=true but {config.out_dir} has no complete checkpoint-N folder")
        return ckpts[::-1], False
    p = Path(str(r))
    if not (p / MANIFEST).is_file():
        raise SrlmError(f"resume={r}: not a checkpoint folder (no {MANIFEST})")
    return [p], True


def choose(candidates: list[Path], explicit: bool, load: Callable[[Path], object]):
    """(checkpoint, what `load` returned, damaged newer checkpoints) for the newest candidate that loads.

    `load(ckpt)` raises `DamagedCheckpoint` for a damaged one (the next older is tried) and `SrlmError`
    for a user mistake (raised at once). With no intact candidate the run cannot continue: an error
    lists what is wrong with each, and nothing is moved or removed.
    """
    damaged: list[tuple[Path, str]] = []
    for ckpt in candidates:
        try:
            return ckpt, load(ckpt), damaged
        except DamagedCheckpoint as e:
            if explicit:
                raise SrlmError(f"resume={ckpt}: the checkpoint is damaged ({e}); choose another checkpoint") from None
            damaged.append((ckpt, str(e)))
    if damaged:
        listed = "; ".join(f"{c.name}: {why}" for c, why in damaged)
        raise SrlmError(
            f"no intact checkpoint to resume from in {damaged[0][0].parent} ({listed}); move them away to start afresh"
        )
    return None, None, []


def set_aside(damaged: list[tuple[Path, str]], chosen: Path) -> None:
    """Rename damaged checkpoints newer than `chosen` to NAME.damaged (so rotation and resume skip them)."""
    for ckpt, why in damaged:
        aside = ckpt.with_name(ckpt.name + ".damaged")
        n = 1
        while aside.exists():
            n += 1
            aside = ckpt.with_name(f"{ckpt.name}.damaged-{n}")
        os.replace(ckpt, aside)
        warn(
            f"{ckpt} is damaged ({why}); moved it to {aside.name} (delete it once you no longer need it) "
            f"and resuming from {chosen.name}"
        )


# ----------------------------------------------------------------------------- metrics.jsonl


def read_metrics(path: Path) -> tuple[list[str], list[dict], list[int], int]:
    """(raw lines, records, numbers of the unreadable lines, number of the last line) of a metrics log."""
    raw, records, bad = [], [], []
    lines = path.read_bytes().rstrip(b"\n").split(b"\n")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except (UnicodeDecodeError, ValueError):
            bad.append(i)
            continue
        raw.append(line.decode("utf-8"))
        records.append(rec)
    return raw, records, bad, len(lines)


def start_metrics(out_dir: Path, resume_step: int | None) -> list[dict]:
    """Prepare `metrics.jsonl` for a run; returns the records kept (those up to `resume_step`).

    A fresh run (`resume_step` None) moves an existing log aside; a resumed one keeps the records of
    steps up to its checkpoint's, dropping unreadable lines (a torn last line) with a message.
    """
    path = out_dir / METRICS
    if not path.is_file():
        return []
    if resume_step is None:
        n = 1
        while (aside := out_dir / f"metrics.previous-{n}.jsonl").exists():
            n += 1
        os.replace(path, aside)
        print(
            f"srlm train: a fresh run starts a fresh {METRICS}; the old log is now {aside}", file=sys.stderr, flush=True
        )
        return []
    raw, records, bad, last = read_metrics(path)
    if bad:
        what = "its torn last line" if bad == [last] else f"unreadable line(s) {', '.join(map(str, bad))}"
        warn(f"{path}: dropped {what} (a write cut short by a kill or a full disk)")
    keep = [(line, rec) for line, rec in zip(raw, records) if rec.get("step", 0) <= resume_step]
    if bad or len(keep) != len(raw):
        try:
            write_text_atomic(path, "".join(line + "\n" for line, _ in keep))
        except OSError as e:
            raise SrlmError(f"cannot rewrite {path} ({e.strerror})") from None
    return [rec for _, rec in keep]


def append_metrics(path: Path, record: dict) -> None:
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        reason = "no space left on device" if disk_full(e) else e.strerror
        raise SrlmError(
            f"{reason} while writing {path}; the checkpoints are intact: make room, then resume with --resume"
        ) from None
