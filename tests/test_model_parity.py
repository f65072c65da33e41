"""Logit parity with transformers, both directions, on random-weight checkpoints built here."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from _hf_fixtures import hf_model
from srlm.errors import SrlmError
from srlm.model import CausalLM, ModelConfig, load_model, preset, save
from srlm.model.checkpoint import hf_state_dict

VOCAB = 311

HF_CASES = {
    "llama-gqa-untied": ("LlamaConfig", dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "llama-tied-llama3-rope": (
        "LlamaConfig",
        dict(
            num_key_value_heads=1,
            tie_word_embeddings=True,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        ),
    ),
    "llama-linear-rope-bias": (
        "LlamaConfig",
        dict(
            num_key_value_heads=4,
            attention_bias=True,
            mlp_bias=True,
            rope_scaling={"rope_type": "linear", "factor": 2.0},
        ),
    ),
    "qwen2-tied": ("Qwen2Config", dict(num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6)),
    "qwen2-untied": ("Qwen2Config", dict(num_key_value_heads=1, tie_word_embeddings=False)),
    "qwen3-gqa": ("Qwen3Config", dict(num_key_value_heads=2, head_dim=24, tie_word_embeddings=True)),
    "qwen3-untied-bias": ("Qwen3Config", dict(num_key_value_heads=4, attention_bias=True, tie_word_embeddings=False)),
}


def _hf_model(cls_name, overrides):
    return hf_model(cls_name, overrides, VOCAB)


def _padded_batch():
    torch.manual_seed(1)
    lengths = [11, 7, 3]
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):  # left padding, as generation uses
        ids[i, T - n :] = torch.randint(1, VOCAB, (n,))
        mask[i, T - n :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def _max_diff_on_real_tokens(a, b, mask):
    return (a - b).abs()[mask.bool()].max().item()


@pytest.mark.parametrize("case", list(HF_CASES))
def test_transformers_checkpoint_loads_with_same_logits(tmp_path, case):
    hf = _hf_model(*HF_CASES[case])
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    ids, mask, pos = _padded_batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        got = ours(ids, position_ids=pos, attention_mask=mask)
    assert _max_diff_on_real_tokens(ref, got, mask) <= 1e-4


@pytest.mark.parametrize("case", list(HF_CASES))
def test_srlm_checkpoint_loads_in_transformers_with_same_logits(tmp_path, case):
    hf = _hf_model(*HF_CASES[case])
    hf.save_pretrained(tmp_path / "src")
    ours = load_model(tmp_path / "src")
    with torch.no_grad():  # make the weights srlm's own before saving
        for p in ours.parameters():
            p.mul_(1.1)
    save(ours, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids, mask, pos = _padded_batch()
    with torch.no_grad():
        ref = back(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        got = ours(ids, position_ids=pos, attention_mask=mask)
    assert _max_diff_on_real_tokens(ref, got, mask) <= 1e-4


def test_transformers5_rope_parameters_layout_is_read(tmp_path):
    hf = _hf_model(*HF_CASES["llama-tied-llama3-rope"])
    hf.save_pretrained(tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    # write the transformers-4 layout by hand and check both give the same model
    d4 = {k: v for k, v in d.items() if k != "rope_parameters"}
    rp = dict(d["rope_parameters"])
    d4["rope_theta"] = rp.pop("rope_theta")
    d4["rope_scaling"] = rp
    c5 = ModelConfig.from_hf_dict(d)
    c4 = ModelConfig.from_hf_dict(d4)
    assert c5.rope_type == c4.rope_type == "llama3"
    assert c5.rope_theta == c4.rope_theta == 500000.0
    assert c5.rope_scaling == c4.rope_scaling


@pytest.mark.parametrize("name", ["tiny-ls", "tiny"])
def test_preset_roundtrip_through_transformers(tmp_path, name):
    torch.manual_seed(0)
    model = CausalLM(preset(name, vocab_size=VOCAB, initializer_range=0.1)).eval()
    save(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert hf.config.num_hidden_layers == model.config.effective_layers
    ids, mask, pos = _padded_batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        got = model(ids, position_ids=pos, attention_mask=mask)
    assert _max_diff_on_real_tokens(ref, got, mask) <= 1e-4
    again = load_model(tmp_path)
    assert again.config.layer_share == model.config.layer_share
    assert again.num_parameters == model.num_parameters  # shared blocks stay shared


def test_layer_sharing_applies_each_block_twice():
    torch.manual_seed(0)
    shared = CausalLM(preset("tiny-ls", vocab_size=VOCAB)).eval()
    plain = CausalLM(preset("tiny-ls", vocab_size=VOCAB, layer_share=1, num_hidden_layers=4)).eval()
    plain.load_state_dict(hf_state_dict(shared), strict=False)
    plain.lm_head.weight = plain.model.embed_tokens.weight
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert torch.allclose(shared(ids), plain(ids), atol=1e-6)


def test_bf16_model_runs_and_is_close_to_fp32(tmp_path):
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=VOCAB)).eval()
    save(model, tmp_path, dtype="bfloat16")
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    m16 = load_model(tmp_path)
    assert next(m16.parameters()).dtype == torch.bfloat16
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        ref, got = model(ids), m16(ids).float()
    assert (ref - got).abs().max() < 0.05 * ref.abs().max() + 0.05


def test_sharded_save_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=VOCAB)).eval()
    save(model, tmp_path, max_shard_bytes=200_000)
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    again = load_model(tmp_path)
    ids = torch.randint(0, VOCAB, (1, 5))
    with torch.no_grad():
        assert torch.equal(model(ids), again(ids))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() <= 1e-4


def test_kv_cache_incremental_matches_full_forward():
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=VOCAB, initializer_range=0.1)).eval()
    from srlm.model import KVCache

    ids, mask, pos = _padded_batch()
    with torch.no_grad():
        full = model(ids, position_ids=pos, attention_mask=mask)
        cache = KVCache.for_model(model, batch_size=ids.shape[0], max_len=32)
        T = ids.shape[1]
        pre = model(ids[:, : T - 3], position_ids=pos[:, : T - 3], attention_mask=mask[:, : T - 3], kv_cache=cache)
        steps = [pre]
        for t in range(T - 3, T):
            steps.append(
                model(
                    ids[:, t : t + 1], position_ids=pos[:, t : t + 1], attention_mask=mask[:, : t + 1], kv_cache=cache
                )
            )
        inc = torch.cat(steps, dim=1)
    assert _max_diff_on_real_tokens(full, inc, mask) <= 1e-5


@pytest.mark.parametrize("over", [{}, {"layer_share": 2, "num_key_value_heads": 1}, {"model_type": "qwen3"}])
def test_shared_prefix_forward_matches_the_concatenated_rows(over):
    """GRPO's prompt-sharing forward: one prompt, then G continuations attending to its K/V, equals
    the G concatenated rows, values and gradients (the prompt's activations get both uses' grads)."""
    torch.manual_seed(0)
    m = CausalLM(preset("tiny", vocab_size=100, **over))
    pre, suf = torch.randint(0, 100, (1, 7)), torch.randint(0, 100, (3, 5))
    full = m.hidden_states(torch.cat([pre.expand(3, -1), suf], 1))
    w = torch.randn_like(full)
    want = torch.autograd.grad((full * w).sum(), list(m.parameters()))
    h_pre, h_suf = m.shared_prefix_hidden_states(pre, suf)
    torch.testing.assert_close(h_pre.expand(3, -1, -1), full[:, :7], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_suf, full[:, 7:], atol=1e-5, rtol=1e-5)
    got = torch.autograd.grad(
        (h_pre.expand(3, -1, -1) * w[:, :7]).sum() + (h_suf * w[:, 7:]).sum(), list(m.parameters())
    )
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, atol=1e-5 * float(r.abs().max()) + 1e-7, rtol=1e-4)
    _, h1 = m.shared_prefix_hidden_states(pre[:, :1], suf[:, :1])  # one-token prompt and continuation
    torch.testing.assert_close(
        h1, m.hidden_states(torch.cat([pre[:, :1].expand(3, -1), suf[:, :1]], 1))[:, 1:], atol=1e-5, rtol=1e-5
    )
    m.model.gradient_checkpointing = True
    with pytest.raises(ValueError, match="checkpointing"):
        m.shared_prefix_hidden_states(pre, suf)


def test_loss_matches_plain_cross_entropy_and_grads():
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=VOCAB))
    ids = torch.randint(0, VOCAB, (3, 20))
    labels = ids.clone()
    labels[:, :6] = -100
    ref = torch.nn.functional.cross_entropy(model(ids)[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
    got = model.loss(ids, labels, chunk_size=7)  # several chunks, checkpointed
    assert torch.allclose(ref, got, atol=1e-6)
    g_ref = torch.autograd.grad(ref, model.lm_head.weight)[0]
    g_got = torch.autograd.grad(model.loss(ids, labels, chunk_size=7), model.lm_head.weight)[0]
    assert torch.allclose(g_ref, g_got, atol=1e-6)
    # every position supervised takes the no-gather path; the default chunking keeps one piece here
    full = torch.nn.functional.cross_entropy(model(ids)[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    assert torch.allclose(full, model.loss(ids, ids), atol=1e-6)


def test_logit_chunks_follow_a_memory_budget():
    from srlm.model.transformer import LOGITS_BUDGET_BYTES, logit_chunk_rows

    assert logit_chunk_rows(512) * 512 * 4 == LOGITS_BUDGET_BYTES  # small vocabulary: big chunks, no recompute
    assert logit_chunk_rows(151_936) == 1024  # Qwen's vocabulary: the floor of 1024 rows


# ---------------------------------------------------------------- clear errors


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(SrlmError, match="not a checkpoint folder"):
        load_model(tmp_path / "nope")
    model = CausalLM(preset("tiny", vocab_size=VOCAB))
    save(model, tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())

    bad = dict(cfg, model_type="gpt2")
    (tmp_path / "ck" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(SrlmError, match="gpt2.*llama, qwen2, qwen3"):
        load_model(tmp_path / "ck")

    bad = dict(cfg, hidden_size=96)
    (tmp_path / "ck" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(SrlmError, match=r"model.embed_tokens.weight has shape \(311, 128\).*\(311, 96\)"):
        load_model(tmp_path / "ck")

    bad = dict(cfg, num_key_value_heads=3)
    (tmp_path / "ck" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(SrlmError, match="num_key_value_heads"):
        load_model(tmp_path / "ck")

    bad = dict(cfg, num_hidden_layers=5)
    (tmp_path / "ck" / "config.json").write_text(json.dumps(bad))
    with pytest.raises(SrlmError, match="missing tensor.*model.layers.4"):
        load_model(tmp_path / "ck")

    (tmp_path / "ck" / "config.json").write_text('{\n  "model_type": "llama",\n  oops\n}')
    with pytest.raises(SrlmError, match="config.json: line 3"):
        load_model(tmp_path / "ck")

    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "ck" / "model.safetensors").unlink()
    with pytest.raises(SrlmError, match="no model.safetensors"):
        load_model(tmp_path / "ck")


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path):
    model = CausalLM(preset("tiny", vocab_size=VOCAB))
    save(model, tmp_path / "ck")
    before = (tmp_path / "ck" / "model.safetensors").read_bytes()

    class Boom:
        def save(self, path):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save(model, tmp_path / "ck", tokenizer=Boom())
    assert (tmp_path / "ck" / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary folder left behind
