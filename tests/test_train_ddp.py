"""`srlm train` under torchrun with 2 CPU processes (DDP on gloo) matches 1 process with the same global batch."""

import json
import subprocess
import sys

import pytest
import torch

from _train_fixtures import make_tokenizer, sft_overrides
from srlm.model import load_model


def _losses(out):
    return [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


def _train(nproc, out, tok, extra=()):
    args = sft_overrides(out, tok, steps=4, batch_size=4, bucket_window=0, save_every=4, **dict(extra))
    if nproc == 1:
        from srlm.train.config import load_config
        from srlm.train.sft import SFTConfig, run

        run(load_config(SFTConfig, None, args))
        return _losses(out)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "srlm.cli",
        "train",
        "sft",
        *args,
    ]
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


_GRPO_SCRIPT = """
import sys
import srlm.train.grpo as grpo
from srlm.cli import main
grpo.REWARDS["parity"] = lambda text, example, task: float(len(text) % 2)  # varies on a random model
sys.exit(main(["train", "grpo", *sys.argv[1:]]))
"""


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_grpo_under_two_processes(tmp_path, mode):
    """DDP: each rank samples half of the prompts and the gathered buffer is the same everywhere (the
    stage checks fingerprints). FSDP: every rank samples all prompts from a replica gathered from the
    shards. Either way the first pass's importance ratios are 1 (old log-probs agree with the
    training forward) and the second pass's are not (the policy moved)."""
    from _train_fixtures import TINY_MODEL

    tok = make_tokenizer(tmp_path / "tok")
    out = tmp_path / mode
    script = tmp_path / "grpo_parity.py"
    script.write_text(_GRPO_SCRIPT)
    args = {
        "out_dir": str(out),
        "tokenizer": str(tok),
        "model": "tiny",
        "model_overrides": TINY_MODEL,
        "task": "synth-arith",
        "task_options": "{difficulties: [1]}",
        "num_prompts": 16,
        "steps": 2,
        "batch_size": 8,
        "num_generations": 4,
        "sampling.max_new_tokens": 8,
        "dtype": "fp32",
        "num_threads": 1,
        "progress": "false",
        "lr": 1e-2,
        "save_every": 2,
        "device": "cpu",
        "num_iterations": 2,
        "rewards": "{parity: 1.0}",
        "fsdp": str(mode == "fsdp").lower(),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(script),
        *[f"{k}={v}" for k, v in args.items()],
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    log = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"reward"' in l]
    assert [r["step"] for r in log] == [1, 2]
    assert all(r["generation_ranks"] == (2.0 if mode == "ddp" else 1.0) for r in log)
    assert log[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-4) and log[1]["ratio_mean"] != pytest.approx(1.0, abs=1e-4)
    assert (out / "final" / "model.safetensors").is_file()


def test_on_policy_distillation_under_fsdp_matches_ddp(tmp_path):
    """On-policy KD samples from the student inside the training forward; under FSDP that is a replica
    gathered from the shards, so the samples, and the losses, equal DDP's."""
    from _train_fixtures import TINY_MODEL
    from srlm.model import CausalLM, preset, save
    from srlm.tokenizer import Tokenizer

    tok_dir = make_tokenizer(tmp_path / "tok")
    tok = Tokenizer.from_dir(tok_dir)
    torch.manual_seed(1)
    teacher = save(
        CausalLM(
            preset(
                "tiny",
                vocab_size=tok.vocab_size,
                hidden_size=48,
                intermediate_size=96,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                eos_token_id=tok.eos_token_id,
            )
        ),
        tmp_path / "teacher",
        tokenizer=tok,
    )
    losses = {}
    for mode in ("ddp", "fsdp"):
        out = tmp_path / mode
        args = {
            "out_dir": str(out),
            "tokenizer": str(tok_dir),
            "model": "tiny",
            "model_overrides": TINY_MODEL,
            "teacher": str(teacher),
            "data": "[synth-arith]",
            "data_options": "{n_train: 32, difficulties: [1]}",
            "steps": 2,
            "batch_size": 4,
            "dtype": "fp32",
            "num_threads": 1,
            "progress": "false",
            "max_seq_len": 128,
            "on_policy": 1.0,
            "on_policy_sampling.max_new_tokens": 8,
            "device": "cpu",
            "fsdp": str(mode == "fsdp").lower(),
        }
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "srlm.cli",
            "train",
            "kd",
            *[f"{k}={v}" for k, v in args.items()],
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        assert res.returncode == 0, res.stderr[-3000:]
        losses[mode] = _losses(out)
    assert len(losses["ddp"]) == 2 and losses["fsdp"] == pytest.approx(losses["ddp"], rel=1e-5)
