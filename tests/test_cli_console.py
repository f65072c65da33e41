"""The installed `srlm` console script, in fresh processes, as a newcomer runs it.

In-process tests call `main()` after torch and friends have imported half the standard library;
these start a new interpreter each time, so a missing import in `srlm.cli` shows up here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from srlm.cli import COMMANDS


def _script() -> str:
    beside = Path(sys.executable).with_name("srlm")  # the venv running the tests, activated or not
    found = str(beside) if beside.exists() else shutil.which("srlm")
    assert found, "the `srlm` console script is not installed: pip install -e '.[test]'"
    return found


def _run(argv, tmp_path):
    return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_installed_script_help_lists_every_verb(tmp_path):
    r = _run([_script(), "--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    for verb in COMMANDS:
        assert verb in r.stdout


@pytest.mark.parametrize("verb", sorted(COMMANDS))
def test_installed_script_every_verb_has_help(verb, tmp_path):
    r = _run([_script(), verb, "--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "usage: srlm " + verb in r.stdout


def test_installed_script_info_preset(tmp_path):
    r = _run([_script(), "info", "--preset", "tiny"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "parameters" in r.stdout.lower()


def test_main_in_a_fresh_interpreter(tmp_path):
    code = "import sys; from srlm.cli import main; sys.exit(main(['info', '--preset', 'tiny']))"
    r = _run([sys.executable, "-c", code], tmp_path)
    assert r.returncode == 0, r.stderr
