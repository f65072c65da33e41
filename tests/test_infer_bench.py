"""`srlm bench`: one JSON object with speed, memory, the transformers ratios and int8's quality."""

import json

import pytest

from srlm.cli import main


def test_bench_reports_speed_ratios_and_int8_quality(capsys):
    pytest.importorskip("transformers")
    rc = main(["bench", "--preset", "tiny", "--random-init", "--dtype", "float32", "--quantize", "int8",
               "--compare", "hf", "--rounds", "1", "--prompt-len", "8", "--new-tokens", "6", "--prefill-len", "16",
               "--batch", "1", "2", "--threads", "1"])
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
