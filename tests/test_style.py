"""The code style the project keeps (pyproject.toml's [tool.ruff]): formatted, and lint-clean."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["src", "tests", "benchmarks", "docs"]


def _ruff(*args):
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *PATHS], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_code_is_formatted():
    r = _ruff("format", "--check")
    assert r.returncode == 0, f"run `ruff format`:\n{r.stdout}{r.stderr}"


def test_code_is_lint_clean():
    r = _ruff("check")
    assert r.returncode == 0, f"run `ruff check --fix`:\n{r.stdout}{r.stderr}"
