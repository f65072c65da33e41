"""Files and folders that appear whole or not at all, with one naming scheme for every temporary.

A file or folder `X` is written as a hidden sibling `.X.tmp-PID-RAND`, flushed to disk (each file,
then the folder) and renamed over `X`; the parent folder is flushed after the rename, so a power
loss cannot leave a renamed but empty `X`. When `X` already exists it is first renamed aside to
`.X.old-PID-RAND` and removed after the swap. Those two forms (and the older `..X.tmp-*` / `.X.tmp-PID`
/ `.X.old-PID` forms) are the only temporaries srlm leaves after a kill; `clean_temporaries(folder)`
removes them on the next start, putting back an `.X.old-*` whose `X` is missing (a kill between the
two renames of a swap).

A write that fails because the disk is full raises `SrlmError("no space left on device while saving
X ...")` after removing the partial temporary, so the previous `X` is kept and the disk is not left
full of a half-written copy.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterator

from srlm.errors import SrlmError

# .NAME.tmp-PID-RAND / .NAME.old-PID-RAND, and the forms older srlm versions left: .NAME.tmp-PID,
# .NAME.old-PID, ..NAME.tmp-PID.tmp-RAND (a save inside a checkpoint's temporary folder)
_TEMPORARY = re.compile(r"^\.(?P<name>.+?)\.(?P<kind>tmp|old)-\d+(?:-\w+)?(?:\.tmp-\w+)?$")


def temporary_name(path: Path, kind: str = "tmp") -> Path:
    """The hidden sibling a write of `path` goes through (`kind` tmp) or the old copy is moved to (old)."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(3)}")


def is_temporary(name: str) -> bool:
    return _TEMPORARY.match(name) is not None


def clean_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporaries a killed process left in `folder`; returns what was removed or put back.

    A temporary `.X.old-*` whose `X` is missing is the complete old `X` of an interrupted swap: it is
    renamed back to `X` rather than removed. Call this where no other process is writing into `folder`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    done = []
    for p in sorted(folder.iterdir()):
        m = _TEMPORARY.match(p.name)
        if not m:
            continue
        name = m.group("name").lstrip(".")
        target = folder / name
        if m.group("kind") == "old" and not target.exists():
            os.replace(p, target)
        elif p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        done.append(p)
    return done


# ----------------------------------------------------------------------------- durability


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, then every folder, deepest first."""
    dirs = []
    for root, _, files in os.walk(folder):
        dirs.append(root)
        for f in files:
            fsync_path(os.path.join(root, f))
    for d in reversed(dirs):
        fsync_path(d)


def _swap(tmp: Path, path: Path) -> None:
    """Rename `tmp` over `path` (moving an existing `path` aside first), then flush the parent folder."""
    if path.exists() or path.is_symlink():
        old = temporary_name(path, "old")
        os.replace(path, old)
        os.replace(tmp, path)
        fsync_path(path.parent)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(tmp, path)
        fsync_path(path.parent)


# ----------------------------------------------------------------------------- full disks


def disk_full(error: BaseException, where: Path | None = None) -> bool:
    """Whether `error` (or an error it was raised from) means the disk is full.

    torch.save reports a failed write as "unexpected pos ..." with the OSError only as its context,
    and safetensors as text ("os error 28"); so the chain and the text are both read, and at the end
    the free space of `where`.
    """
    seen = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text:
            return True
        e = e.__cause__ or e.__context__
    if where is not None and "unexpected pos" in str(error):
        try:
            return shutil.disk_usage(where).free < 1 << 20
        except OSError:
            return False
    return False


def _size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, f))
    return total


class NoSpaceError(SrlmError):
    """The disk filled up during a save; the partial copy has been removed."""


def no_space_error(
    path: Path, tmp: Path | None = None, hint: str = "free some space (or choose another output folder) and run again"
) -> NoSpaceError:
    written = f" ({_size(tmp) / 2**20:.1f} MiB had been written)" if tmp is not None and tmp.exists() else ""
    kept = f"; the previous {path.name} is kept" if path.exists() else ""
    return NoSpaceError(f"no space left on device while saving {path}{written}; removed the partial copy{kept}; {hint}")


# ----------------------------------------------------------------------------- writers


@contextlib.contextmanager
def atomic_folder(path: str | Path, no_space_hint: str | None = None) -> Iterator[Path]:
    """`with atomic_folder(path) as tmp:` fill `tmp`; on a clean exit it becomes `path` (durably).

    On an error the partial `tmp` is removed and `path` is left as it was; a full disk becomes a
    `NoSpaceError` naming `path` (ending with `no_space_hint`, what the user can do).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SrlmError(f"cannot create the folder {path.parent} to save {path.name} ({e.strerror})") from None
    tmp = temporary_name(path)
    try:
        tmp.mkdir()
        yield tmp
        fsync_tree(tmp)
        _swap(tmp, path)
    except BaseException as e:
        full = not isinstance(e, SrlmError) and disk_full(e, tmp.parent)
        if full:
            err = no_space_error(path, tmp, **({"hint": no_space_hint} if no_space_hint else {}))
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise err from None
        if isinstance(e, PermissionError) or (isinstance(e, OSError) and e.errno == errno.EROFS):
            raise SrlmError(f"cannot write {path} ({e.strerror}); choose a folder you can write to") from None
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary sibling, flushed, then renamed over `path`."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _swap(tmp, path)
    except BaseException as e:
        full = disk_full(e, path.parent)
        tmp.unlink(missing_ok=True)
        if full:
            raise no_space_error(path) from None
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """`write_bytes_atomic` for UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def check_writable(folder: str | Path, what: str) -> None:
    """Create `folder` if needed and prove a file can be written there; an `SrlmError` saying so if not.

    A real write, not `os.access`: root passes access checks on read-only mounts' files, and a
    read-only file system answers only to a write.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temporary_name(folder / "write-test")
        with open(probe, "wb") as f:
            f.write(b"srlm")
        probe.unlink()
    except OSError as e:
        reason = "no space left on device" if disk_full(e) else (e.strerror or str(e))
        raise SrlmError(f"{folder}: cannot write {what} there ({reason}); choose a folder you can write to") from None
