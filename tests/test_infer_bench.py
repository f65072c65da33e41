"""`srlm bench`: one JSON object with speed, memory, the transformers and llama.cpp ratios and int8's quality."""

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
    assert out["rollout_tokens_per_s"]["3"] > 0 and r["weight_bytes"] > 0
    assert r["prefill_flops"] > 0 and r["decode_flops"] > 0 and r["decode_steps"] == 4  # 5 tokens: 1 from prefill
    assert r["call_s"] == pytest.approx(3 * 5 / out["rollout_tokens_per_s"]["3"], rel=0.02)
    decode = max(r["decode_memory_bound_s"], r["decode_compute_bound_s"])
    assert r["bound_s"] == pytest.approx(r["prefill_bound_s"] + decode, rel=0.01)
    assert r["fraction_of_roofline"] == pytest.approx(r["bound_s"] / r["call_s"], rel=0.02)
    # int4 weights are read at about half a byte each: a quarter of the fp32 model's bytes or less, plus scales
    assert out["srlm-int4"]["roofline"]["3"]["weight_bytes"] < 0.3 * r["weight_bytes"]
    assert "rollout_b3" in out["ratios_vs_hf"]["srlm"] and out["hf"]["rollout_tokens_per_s"]["3"] > 0


SHORT = ["--rounds", "1", "--prompt-len", "8", "--new-tokens", "6", "--prefill-len", "16", "--threads", "1"]


def test_bench_compares_with_llama_cpp_per_quantization(capsys):
    pytest.importorskip("llama_cpp")
    args = ["bench", "--preset", "tiny", "--random-init", "--dtype", "float32", "--quantize", "int8"]
    assert main([*args, "--compare", "llama.cpp", "--batch", "1", "2", *SHORT]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["llama_cpp"] and "hf" not in out and "ratios_vs_hf" not in out
    for name, typ in (("llama.cpp", "f32"), ("llama.cpp-q8_0", "q8_0")):  # float32 -> f32, int8 -> q8_0
        lc = out[name]
        assert lc["gguf_type"] == typ and lc["gguf_source"] == "srlm export" and lc["gguf_mib"] > 0
        assert lc["prefill_tokens_per_s"] > 0 and lc["ttft_s"] > 0 and lc["decode_tokens_per_s"]["1"] > 0
        assert lc["decode_tokens_per_s"]["2"] is None  # llama-cpp-python decodes one sequence at a time
    assert out["llama.cpp-q8_0"]["gguf_mib"] < 0.5 * out["llama.cpp"]["gguf_mib"]
    ratios = out["ratios_vs_llama_cpp"]
    assert ratios["srlm"]["vs"] == "llama.cpp (f32)" and ratios["srlm-int8"]["vs"] == "llama.cpp-q8_0 (q8_0)"
    for r in ratios.values():
        assert r["prefill"] > 0 and r["ttft"] > 0 and r["decode_b1"] > 0 and r["decode_b2"] is None
    assert any("placeholder" in note for note in out["llama_cpp_notes"])  # a random-init preset has no tokenizer


def test_bench_compares_with_hf_and_llama_cpp_together(capsys):
    """bf16 (the presets' default) runs a bf16 GGUF; transformers' ratios still cover srlm's variants only."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("transformers")
    args = ["bench", "--preset", "tiny", "--random-init", "--quantize", "int4", "--batch", "1", *SHORT]
    assert main([*args, "--compare", "hf", "llama.cpp"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["dtype"] == "bfloat16" and out["llama.cpp"]["gguf_type"] in ("bf16", "f16")
    assert out["llama.cpp-q4_0"]["gguf_type"] == "q4_0"
    assert set(out["ratios_vs_hf"]) == set(out["ratios_vs_llama_cpp"]) == {"srlm", "srlm-int4"}
    assert out["ratios_vs_llama_cpp"]["srlm-int4"]["decode_b1"] > 0 and out["ratios_vs_hf"]["srlm"]["decode_b1"] > 0


def test_bench_runs_a_given_gguf_beside_the_matching_exports(tmp_path, capsys):
    pytest.importorskip("llama_cpp")
    import torch

    from srlm.model import CausalLM, preset
    from srlm.model.gguf import export
    from srlm.tokenizer import train_bpe

    torch.manual_seed(0)
    tok = train_bpe(["a few words to learn a few merges from"] * 2, 300)
    path = export(CausalLM(preset("tiny")).eval(), tok, tmp_path / "tiny-q8_0.gguf", "q8_0")
    # srlm runs the weights dequantized (float32): its match is a float export; the file runs as well
    assert main(["bench", str(path), "--compare", "llama.cpp", "--batch", "1", *SHORT]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["llama.cpp"]["gguf_type"] == "f32" and out["llama.cpp"]["gguf_source"] == "srlm export"
    assert out["llama.cpp-q8_0"]["gguf_source"] == "the given file"
    assert out["ratios_vs_llama_cpp"]["srlm"]["decode_b1"] > 0
    # with --quantize int8 the given q8_0 file is the int8 variant's match, not exported again
    assert main(["bench", str(path), "--compare", "llama.cpp", "--quantize", "int8", "--batch", "1", *SHORT]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["llama.cpp-q8_0"]["gguf_source"] == "the given file"
    assert out["ratios_vs_llama_cpp"]["srlm-int8"]["vs"] == "llama.cpp-q8_0 (q8_0)"
    assert not any("placeholder" in note for note in out["llama_cpp_notes"])


def test_bench_says_how_to_install_llama_cpp(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    assert main(["bench", "--preset", "tiny", "--random-init", "--compare", "llama.cpp"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and "pip install llama-cpp-python" in err[0] and err[0].startswith("srlm: error:")


def test_rollout_cost_counts_each_phase_by_hand():
    from srlm.commands.bench import rollout_cost
    from srlm.model import CausalLM, preset

    c = preset("tiny", tie_word_embeddings=False)
    model = CausalLM(c)
    hd, H, KV, L, V, D = (
        c.head_dim,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.num_hidden_layers,
        c.vocab_size,
        c.hidden_size,
    )
    per_layer = D * (H + 2 * KV) * hd + H * hd * D + 3 * D * c.intermediate_size
    body, head = L * per_layer, V * D
    cost = rollout_cost(model, [3, 5], new_tokens=4)  # 2 rows; 3 decode steps
    att = L * 4 * H * hd
    assert cost["prompt_tokens"] == 8 and cost["decode_steps"] == 3
    assert cost["weight_bytes"] == 4 * (body + head)  # fp32, the embedding not counted
    assert cost["prefill_flops"] == 2 * body * 8 + 2 * head * 2 + att * (6 + 15)  # 1+2+3 and 1+..+5 positions
    attended = (4 + 5 + 6) + (6 + 7 + 8)  # each row's steps attend to prompt + 1, + 2, + 3 positions
    assert cost["decode_flops"] == 2 * (body + head) * 2 * 3 + att * attended
    assert cost["decode_kv_bytes"] == L * 2 * KV * hd * 4 * attended
