"""`srlm train` under torchrun with 2 CPU processes (DDP on gloo) matches 1 process with the same global batch."""

import json
import subprocess
import sys

import pytest
import torch

from srlm.model import load_model

from _train_fixtures import make_tokenizer, sft_overrides


def _losses(out):
    return [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


def _train(nproc, out, tok, extra=()):
    args = sft_overrides(out, tok, steps=4, batch_size=4, bucket_window=0, save_every=4, **dict(extra))
    if nproc == 1:
        from srlm.train.config import load_config
        from srlm.train.sft import SFTConfig, run

        run(load_config(SFTConfig, None, args))
        return _losses(out)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "srlm.cli", "train", "sft", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    return _losses(out)


def test_two_processes_match_one(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    one = _train(1, tmp_path / "one", tok, {"grad_accum": 2})
    two = _train(2, tmp_path / "two", tok)
    assert len(one) == len(two) == 4
    assert one == pytest.approx(two, rel=1e-5)
    a, b = load_model(tmp_path / "one" / "final").state_dict(), load_model(tmp_path / "two" / "final").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    # only rank 0 wrote: one metrics line per step
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 4


@pytest.mark.slow
def test_fsdp_two_processes_match_one(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    one = _train(1, tmp_path / "one", tok, {"grad_accum": 2})
    two = _train(2, tmp_path / "fsdp", tok, {"fsdp": "true"})
    assert one == pytest.approx(two, rel=1e-5)
    a, b = load_model(tmp_path / "one" / "final").state_dict(), load_model(tmp_path / "fsdp" / "final").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
