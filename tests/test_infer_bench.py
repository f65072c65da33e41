"""`srlm bench`: one JSON object with speed, memory, the transformers ratios and int8's quality."""

import json

import pytest

from srlm.cli import main


def test_bench_reports_speed_ratios_and_int8_quality(capsys):
    pytest.importorskip("transformers")
    rc = main(
        [
            "bench",
            "--preset",
            "tiny",
            "--random-init",
            "--dtype",
            "float32",
            "--quantize",
            "int8",
            "--compare",
            "hf",
            "--rounds",
            "1",
            "--prompt-len",
            "8",
            "--new-tokens",
            "6",
            "--prefill-len",
            "16",
            "--batch",
            "1",
            "2",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["threads"] == 1 and out["dtype"] == "float32" and out["peak_rss_mb"] > 0
    assert set(out["decode_tokens_per_s"]) == {"1", "2"} and out["prefill_tokens_per_s"] > 0
    assert set(out["ratios_vs_hf"]) == {"srlm", "srlm-int8"}
    q = out["srlm-int8"]["quality_vs_srlm"]
    assert q["tokens"] == 6 and 0.0 <= q["greedy_agreement"] <= 1.0 and q["kl_nats"] >= 0.0
    assert q["ppl_reference"] > 0 and q["ppl_quantized"] > 0


def test_bench_rejects_bad_lengths(capsys):
    assert main(["bench", "--preset", "tiny", "--random-init", "--new-tokens", "0"]) == 1
    assert "srlm: error: --new-tokens must be positive" in capsys.readouterr().err


def test_bench_rollouts_report_the_roofline_and_the_cpu(capsys):
    pytest.importorskip("transformers")
    rc = main(
        [
            "bench",
            "--preset",
            "tiny",
            "--random-init",
            "--dtype",
            "float32",
            "--quantize",
            "int4",
            "--compare",
            "hf",
            "--rounds",
            "1",
            "--prompt-len",
            "8",
            "--new-tokens",
            "4",
            "--prefill-len",
            "16",
            "--batch",
            "1",
            "--rollout",
            "3",
            "--rollout-tokens",
            "5",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["cpu"] and isinstance(out["flags"], list)
    assert out["machine_limits"]["memory_read_gb_s"] > 0 and out["machine_limits"]["matmul_gflop_s_float32"] > 0
    r = out["roofline"]["3"]
    assert out["rollout_tokens_per_s"]["3"] > 0 and r["flops"] > 0 and r["weight_bytes"] > 0
    assert r["fraction_of_roofline"] == pytest.approx(
        max(r["memory_bound_s"], r["compute_bound_s"]) / r["step_s"], rel=0.02
    )
    # int4 weights are read at about half a byte each: a quarter of the fp32 model's bytes or less, plus scales
    assert out["srlm-int4"]["roofline"]["3"]["weight_bytes"] < 0.3 * r["weight_bytes"]
    assert "rollout_b3" in out["ratios_vs_hf"]["srlm"] and out["hf"]["rollout_tokens_per_s"]["3"] > 0
