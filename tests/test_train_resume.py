"""A run killed with SIGKILL and resumed ends on the same loss curve and weights as an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from _train_fixtures import make_tokenizer, sft_overrides
from srlm.errors import SrlmError
from srlm.model import load_model
from srlm.train.config import load_config
from srlm.train.loop import list_checkpoints
from srlm.train.sft import SFTConfig, run

SLOW_RUN = """
import sys, time
from srlm.train import sft
from srlm.train.config import load_config

class SlowStage(sft.SFTStage):
    def loss(self, model, batch):
        time.sleep(0.25)  # slow enough to be killed between checkpoints
        return super().loss(model, batch)

sft.SFTStage = SlowStage
sft.run(load_config(sft.SFTConfig, None, sys.argv[1:]))
"""


def _losses(out_dir):
    return {
        r["step"]: r["loss"]
        for r in map(json.loads, (out_dir / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    }


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    common = dict(steps=12, save_every=4, keep_last=2, lora="{enabled: false}")
    ref = tmp_path / "ref"
    run(load_config(SFTConfig, None, sft_overrides(ref, tok, **common)))

    out = tmp_path / "killed"
    args = sft_overrides(out, tok, **common)
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "checkpoint-000008").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint-000008 in time"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "final").exists()
    assert [p.name for p in list_checkpoints(out)][-1] == "checkpoint-000008"

    with pytest.raises(SrlmError, match="already has checkpoints"):
        run(load_config(SFTConfig, None, args))
    run(load_config(SFTConfig, None, args + ["resume=true"]))

    want, got = _losses(ref), _losses(out)
    assert sorted(got) == list(range(1, 13))
    for s in want:
        assert got[s] == pytest.approx(want[s], rel=1e-5, abs=1e-6), (s, got[s], want[s])
    a, b = load_model(ref / "final").state_dict(), load_model(out / "final").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-000008", "checkpoint-000012"]


def test_half_written_checkpoint_is_ignored(tmp_path):
    """A temp folder left by a crash is neither resumed from nor kept."""
    tok = make_tokenizer(tmp_path / "tok")
    out = tmp_path / "run"
    run(load_config(SFTConfig, None, sft_overrides(out, tok, steps=2, save_every=2)))
    stale = out / ".checkpoint-000004.tmp-123"
    stale.mkdir()
    (stale / "config.json").write_text("{")
    half = out / "checkpoint-000003"  # no training_state.json: incomplete
    half.mkdir()
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-000002"]
    run(load_config(SFTConfig, None, sft_overrides(out, tok, steps=3, save_every=2, resume="true")))
    assert not stale.exists()
