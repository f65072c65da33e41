"""The engine's fused decode step against the model's own forward pass, step by step.

The fused step re-arranges weights (q/k/v and gate/up concatenated, norm weights and
1/sqrt(d) folded in, rotary as a matmul), so every architecture variant it folds differently
is checked here: biases (Qwen2), q/k norms (Qwen3), untied heads, layer sharing, a padded
batch, LoRA layers (merged on the fly), int8 layers (run unfused), bf16, and a refresh after
an optimizer-style in-place update.
"""

import pytest
import torch

from srlm.infer import Engine
from srlm.infer.decode import FusedDecoder, prefill
from srlm.infer.quant import quantize_model
from srlm.model import CausalLM, preset
from srlm.model.cache import KVCache
from srlm.model.config import FAMILIES, Traits
from srlm.train.lora import LoRAConfig, apply_lora

VOCAB = 97

VARIANTS = {
    "llama-untied": dict(model_type="llama", tie_word_embeddings=False, attention_bias=False),
    "qwen2-bias": dict(model_type="qwen2", rope_theta=1e6),
    "qwen3-qknorm": dict(model_type="qwen3", head_dim=24),
    "layer-share": dict(layer_share=2),
    "llama-o-bias": dict(model_type="llama", attention_bias=True, mlp_bias=True),
}


def _model(dtype=torch.float32, **over):
    torch.manual_seed(0)
    m = CausalLM(preset("tiny", vocab_size=VOCAB, initializer_range=0.1, **over)).eval()
    with torch.no_grad():  # non-trivial norm weights and biases, so folding them is exercised
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    return m.to(dtype)


def _compare(model, prompts, steps=6, atol=1e-4):
    """Prefill (padded where lengths differ) both ways, then decode `steps` tokens both ways from identical caches."""
    b = len(prompts)
    P = max(len(p) for p in prompts)
    ids = torch.zeros(b, P, dtype=torch.long)
    mask = torch.ones(b, P + steps, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = torch.tensor(p)
        mask[i, : P - len(p)] = False
    pos = (mask[:, :P].long().cumsum(-1) - 1).clamp(min=0)
    padded = min(len(p) for p in prompts) != P
    with torch.no_grad():
        ref_cache = KVCache.for_model(model, b, P + steps)
        ref = model(ids, position_ids=pos, attention_mask=mask[:, :P], kv_cache=ref_cache)[:, -1]
        fused = FusedDecoder(model)
        fused.refresh(P + steps)
        # the fused prefill: same last logits, same keys and values in every real slot
        cache = KVCache.for_model(model, b, P + steps)
        got = fused.prefill(ids, pos, cache, mask[:, :P] if padded else None)
        torch.testing.assert_close(got, ref, atol=atol, rtol=atol)
        assert cache.pos == ref_cache.pos == P
        real = mask[:, :P].view(1, b, 1, P, 1)
        for mine, theirs in ((cache.k, ref_cache.k), (cache.v, ref_cache.v)):
            torch.testing.assert_close(
                (mine[..., :P, :] * real).float(), (theirs[..., :P, :] * real).float(), atol=atol, rtol=atol
            )
        # decode from identical caches, so each step's error is its own
        cache.k.copy_(ref_cache.k), cache.v.copy_(ref_cache.v)
        bias = torch.zeros(b, P + steps).masked_fill_(~mask, float("-inf"))
        next_pos = mask[:, :P].sum(-1)
        tok = torch.tensor([3 + i for i in range(b)])
        for t in range(steps):
            ref = model(
                tok[:, None], position_ids=next_pos[:, None], attention_mask=mask[:, : P + t + 1], kv_cache=ref_cache
            )[:, -1]
            got = fused.step(tok, next_pos, cache, bias)
            torch.testing.assert_close(got, ref, atol=atol, rtol=atol)
            tok = ref.argmax(-1)
            next_pos = next_pos + 1
    return fused


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fused_step_matches_forward(variant):
    model = _model(**VARIANTS[variant])
    fused = _compare(model, [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]])
    assert all(L["qkv"].fused for L in fused.layers)  # the fused path, not the fallback
    # a small fp32 model runs x @ W_t on weights stored transposed
    assert all(L[k].weight_t is not None for L in fused.layers for k in ("qkv", "o", "gate_up", "down"))
    _compare(model, [[5, 6, 7]])  # one row


def test_fused_step_in_bf16_is_as_accurate_as_the_model_in_bf16():
    """bf16 rounds differently on each path: measure both against the fp32 model's logits."""
    ids, tok, pos = torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([3]), torch.tensor([5])
    logits = {}
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            m = _model(dtype=dtype)
            cache = KVCache.for_model(m, 1, 8)
            m(ids, kv_cache=cache)
            fused_cache = KVCache.for_model(m, 1, 8)
            fused_cache.k.copy_(cache.k), fused_cache.v.copy_(cache.v)
            fused_cache.pos = cache.pos
            fused = FusedDecoder(m)
            fused.refresh(8)
            logits[dtype] = (
                m(tok[:, None], kv_cache=cache)[:, -1].float(),
                fused.step(tok, pos, fused_cache, None).float(),
            )
            assert (fused.head.weight_t is not None) == (dtype == torch.float32)  # transposed copies: fp32 only
            if torch.backends.mkldnn.is_available():
                assert fused.head.packed is not None  # and the oneDNN-packed copy, in both dtypes
    truth = logits[torch.float32][0]
    model_err = (logits[torch.bfloat16][0] - truth).abs()
    fused_err = (logits[torch.bfloat16][1] - truth).abs()
    assert model_err.mean() > 1e-3  # bf16 really ran
    assert fused_err.mean() <= 1.5 * model_err.mean() and fused_err.max() <= 2 * model_err.max()


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_large_model_decodes_from_packed_weights_only(monkeypatch, dtype):
    """Past TRANSPOSE_MAX_BYTES (here: any size) only the packed copy is kept, and every row count uses it."""
    import srlm.infer.decode as decode

    monkeypatch.setattr(decode, "TRANSPOSE_MAX_BYTES", 0)
    model = _model(dtype=dtype)
    atol = 1e-4 if dtype == torch.float32 else 0.1  # bf16 rounds differently on each path
    fused = _compare(model, [[5, 6, 7, 8, 9], [10, 11]], atol=atol)
    projs = [fused.head] + [L[k] for L in fused.layers for k in ("qkv", "o", "gate_up", "down")]
    assert all(p.packed is not None and p.weight is None and p.weight_t is None for p in projs)
    _compare(model, [[5, 6, 7]], atol=atol)  # one row, unpadded prefill


def test_lora_layers_are_merged_and_int8_layers_run_unfused():
    model = _model()
    apply_lora(model, LoRAConfig(rank=4, alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    fused = _compare(model.eval(), [[5, 6, 7], [8, 9, 10, 11]])
    assert fused.layers[0]["qkv"].fused

    q = quantize_model(_model(), compute_dtype=torch.float32)
    fused = _compare(q, [[5, 6, 7], [8, 9, 10, 11]], atol=1e-4)
    assert fused.layers[0]["qkv"].fused is False  # int8 projections keep their own forward


def test_int8_kernel_layers_fuse_with_concatenated_scales():
    q = quantize_model(_model(), compute_dtype=torch.bfloat16)
    if not q.model.layers[0].self_attn.q_proj.fast:
        pytest.skip("torch's int8 weight-only kernel is unavailable here")
    fused = _compare(q, [[5, 6, 7], [8, 9, 10, 11]], atol=0.1)  # bf16 activations, rounded differently
    assert fused.layers[0]["qkv"].q8 is not None and fused.layers[0]["gate_up"].q8 is not None


def test_int4_layers_fuse_with_concatenated_packs_and_scales():
    from srlm.infer.quant import _int4_kernel_available

    if not _int4_kernel_available():
        pytest.skip("torch's CPU int4 kernel is unavailable here")
    for variant in ("qwen2-bias", "llama-untied"):  # biases and q's 1/sqrt(d) folded into the scales
        q = quantize_model(_model(**VARIANTS[variant]), "int4")
        fused = _compare(q, [[5, 6, 7], [8, 9, 10, 11]], atol=0.05)  # bf16 activations, rounded differently
        assert fused.layers[0]["qkv"].q4 is not None and fused.layers[0]["gate_up"].q4 is not None


def test_engine_sees_in_place_weight_updates():
    """GRPO updates the policy in place between rollouts: the fused weights must follow."""
    model = _model()
    engine = Engine(model)
    prompts = [[5, 6, 7, 8], [9, 10]]
    before = engine.generate(prompts, max_new_tokens=8, temperature=0, stop_token_ids=[])
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.3).add_(0.05)
    after = engine.generate(prompts, max_new_tokens=8, temperature=0, stop_token_ids=[])
    fresh = Engine(model).generate(prompts, max_new_tokens=8, temperature=0, stop_token_ids=[])

    def ids(groups):
        return [c.token_ids for g in groups for c in g]

    assert ids(after) == ids(fresh) and ids(after) != ids(before)
    # and the fused step agrees with a plain forward pass after the update
    _compare(model, [[5, 6, 7], [8, 9]])


def test_upcast_linear_keeps_names_and_runs_many_rows_in_fp32(monkeypatch):
    import srlm.infer.quant as quant
    from srlm.infer.quant import UPCAST_MIN_ROWS, UpcastLinear, upcast_slow_bf16

    assert upcast_slow_bf16(_model()) == 0  # fp32 models are left alone
    monkeypatch.setattr(quant, "fast_bf16", lambda device="cpu": False)
    model = _model(dtype=torch.bfloat16)
    names = sorted(model.state_dict())
    assert upcast_slow_bf16(model) == 4 * 7 + 1  # every projection and the lm_head
    assert sorted(model.state_dict()) == names
    layer = model.model.layers[0].mlp.up_proj
    assert isinstance(layer, UpcastLinear)
    w = layer.weight
    few, many = torch.randn(2, w.shape[1]).bfloat16(), torch.randn(UPCAST_MIN_ROWS, w.shape[1]).bfloat16()
    assert torch.equal(layer(few), torch.nn.functional.linear(few, w))  # the bf16 kernel
    assert torch.equal(layer(many), torch.nn.functional.linear(many.float(), w.float()).bfloat16())  # fp32 math
    fused = _compare(model, [[5, 6, 7], [8, 9, 10, 11]], steps=3, atol=0.1)  # bf16 rounding on both paths
    assert fused.layers[0]["qkv"].fused  # still fused


# ---- family traits: every row of the table decodes right, and a trait the fused step lacks is refused


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_decodes_fused_as_its_forward(family):
    model = _model(model_type=family)
    assert FusedDecoder.supported(model)
    _compare(model, [[5, 6, 7, 8, 9], [10, 11]])


@pytest.fixture
def extra_families(monkeypatch):
    monkeypatch.setitem(
        FAMILIES, "gemma-like", Traits(norm_offset=1.0, activation="gelu_pytorch_tanh", scale_embeddings=True)
    )
    monkeypatch.setitem(FAMILIES, "pairs-rope", Traits(rope="interleaved"))


def test_fused_step_implements_offset_norms_gelu_and_embedding_scale(extra_families):
    model = _model(model_type="gemma-like")
    assert model.model.norm.offset == 1.0 and model.model.embed_scale is not None
    fused = _compare(model, [[5, 6, 7, 8, 9], [10, 11]])
    assert fused.layers[0]["qkv"].fused


def test_a_trait_the_fused_step_lacks_is_refused_once_and_decoding_stays_right(extra_families):
    model = _model(model_type="pairs-rope")
    FusedDecoder._warned.clear()
    with pytest.warns(UserWarning, match="does not implement rope='interleaved'"):
        assert not FusedDecoder.supported(model)
    # the engine falls back to the model's forward: greedy tokens equal a plain forward loop
    prompt = [5, 6, 7, 8]
    got = Engine(model).generate([prompt], max_new_tokens=8, temperature=0, stop_token_ids=[])[0][0].token_ids
    ids = torch.tensor([prompt])
    want = []
    with torch.no_grad():
        for _ in range(8):
            nxt = int(model(ids)[0, -1].argmax())
            want.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    assert got == want


def test_an_fp32_model_decodes_in_bf16_when_asked():
    """A trainer's fp32 policy sampled under bf16: fused weights, embedding and cache in bf16, the weights untouched."""
    model = _model()
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    engine = Engine(model, dtype=torch.bfloat16)
    got = engine.generate(prompts, max_new_tokens=6, temperature=0, stop_token_ids=[], return_logprobs=True)
    assert engine.cache_dtype == torch.bfloat16 and engine._fused.embed.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # the same tokens as the model itself in bf16, and log-probs within bf16 rounding of fp32's
    want = Engine(_model(dtype=torch.bfloat16)).generate(prompts, max_new_tokens=6, temperature=0, stop_token_ids=[])
    fp32 = Engine(model).generate(prompts, max_new_tokens=6, temperature=0, stop_token_ids=[], return_logprobs=True)
    assert [c.token_ids for g in got for c in g] == [c.token_ids for g in want for c in g]
    for g, f in zip(got, fp32):
        if g[0].token_ids == f[0].token_ids:
            torch.testing.assert_close(torch.tensor(g[0].logprobs), torch.tensor(f[0].logprobs), atol=0.05, rtol=0)
    # a model with a layer the fused step cannot cast (int8) decodes in its own dtype
    q = quantize_model(_model(), compute_dtype=torch.float32)
    assert Engine(q, dtype=torch.bfloat16).cache_dtype == torch.float32


def test_a_few_bf16_rows_keep_their_cache_in_fp32_with_the_same_results(monkeypatch):
    import srlm.infer.decode as decode

    model = _model(dtype=torch.bfloat16)
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    kw = dict(max_new_tokens=6, temperature=0, stop_token_ids=[], return_logprobs=True)
    engine = Engine(model)
    got = engine.generate(prompts, **kw)
    assert engine._fused.cache_dtype(2) == torch.float32
    monkeypatch.setattr(decode, "FP32_CACHE_MAX_ROWS", 0)
    assert engine._fused.cache_dtype(2) == torch.bfloat16
    want = engine.generate(prompts, **kw)
    assert [c.token_ids for g in got for c in g] == [c.token_ids for g in want for c in g]
    for g, w in zip(got, want):  # bf16 keys and values rounded once more: within bf16 rounding
        torch.testing.assert_close(torch.tensor(g[0].logprobs), torch.tensor(w[0].logprobs), atol=0.05, rtol=0)


def test_the_step_rotates_in_whatever_dtype_its_cache_has():
    """q and k are rotated in the KV cache's dtype (float32 for a few bf16 rows); a cache of a dtype the
    decoder did not plan for (here float16, for a bf16 model) still decodes, within that dtype's rounding."""
    model = _model(dtype=torch.bfloat16)
    fused = FusedDecoder(model)
    fused.refresh(16)
    ids, tok, pos = torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([3]), torch.tensor([5])
    logits = {}
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            cache = KVCache.for_model(model, 1, 16, dtype=dtype)
            prefill(model, fused, ids, None, cache)
            logits[dtype] = fused.step(tok, pos, cache, None).float()
    assert fused._rot_tables[torch.float16][0].dtype == torch.float16
    for dtype in (torch.bfloat16, torch.float16):
        torch.testing.assert_close(logits[dtype], logits[torch.float32], atol=0.1, rtol=0)
