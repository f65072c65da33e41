"""The engine on token ids: greedy parity with transformers, batching, stops, logprobs, loglikelihood, bad input."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from _hf_fixtures import hf_model
from srlm.errors import SrlmError
from srlm.infer import Engine
from srlm.model import CausalLM, load_model, preset

VOCAB = 311
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [20, 21, 22], [30, 31, 32, 33, 34, 35, 36]]

HF_CASES = {
    "llama": ("LlamaConfig", dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6)),
    "qwen3": ("Qwen3Config", dict(num_key_value_heads=2, head_dim=24, tie_word_embeddings=True)),
}


def _hf_model(cls_name, overrides):
    return hf_model(cls_name, overrides, VOCAB)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return CausalLM(preset("tiny", vocab_size=VOCAB, initializer_range=0.1)).eval()


@pytest.mark.parametrize("case", list(HF_CASES))
def test_greedy_matches_transformers_generate(tmp_path, case):
    hf = _hf_model(*HF_CASES[case])
    hf.save_pretrained(tmp_path)
    engine = Engine(load_model(tmp_path))
    batched = engine.generate(PROMPTS, max_new_tokens=64, temperature=0, stop_token_ids=[])
    for prompt, group in zip(PROMPTS, batched):
        ref = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=64,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
        assert group[0].token_ids == ref[0, len(prompt) :].tolist()
        assert group[0].finish_reason == "length"


def test_batched_equals_alone_and_n_copies_share_the_prefill(tiny):
    engine = Engine(tiny)
    alone = [engine.generate([p], max_new_tokens=40, temperature=0, stop_token_ids=[])[0][0].token_ids for p in PROMPTS]
    batched = engine.generate(PROMPTS, n=2, max_new_tokens=40, temperature=0, stop_token_ids=[])
    for a, group in zip(alone, batched):
        assert [c.token_ids for c in group] == [a, a]
    assert len(set(map(tuple, alone))) == 3  # the prompts lead to different outputs


def test_rows_stop_on_their_own_and_others_are_unaffected(tiny):
    engine = Engine(tiny)
    free = engine.generate(PROMPTS, max_new_tokens=30, temperature=0, stop_token_ids=[])
    # stop on a token that one row produces early: that row ends there, the rest continue unchanged
    first = free[1][0].token_ids
    stop = first[3]
    got = engine.generate(PROMPTS, max_new_tokens=30, temperature=0, stop_token_ids=[stop])
    for f, g in zip(free, got):
        ids = f[0].token_ids
        if stop in ids:
            cut = ids.index(stop) + 1
            assert g[0].token_ids == ids[:cut] and g[0].finish_reason == "stop"
        else:
            assert g[0].token_ids == ids and g[0].finish_reason == "length"
    assert got[1][0].finish_reason == "stop" and len(got[1][0].token_ids) <= 4


def test_seeded_sampling_is_reproducible_and_seed_matters(tiny):
    engine = Engine(tiny)
    kw = dict(n=4, max_new_tokens=24, temperature=1.0, top_p=0.95, stop_token_ids=[])
    a = engine.generate(PROMPTS, seed=7, **kw)
    b = engine.generate(PROMPTS, seed=7, **kw)
    c = engine.generate(PROMPTS, seed=8, **kw)
    ids = lambda out: [[x.token_ids for x in g] for g in out]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    assert len({tuple(x) for x in ids(a)[0]}) > 1  # the n samples of one prompt differ


def test_logprobs_are_those_of_a_forward_pass_at_the_temperature(tiny):
    engine = Engine(tiny)
    T = 0.7
    out = engine.generate(
        PROMPTS, n=2, max_new_tokens=12, temperature=T, seed=3, return_logprobs=True, stop_token_ids=[]
    )
    for prompt, group in zip(PROMPTS, out):
        for c in group:
            seq = torch.tensor([prompt + c.token_ids])
            with torch.no_grad():
                logits = tiny(seq)[0, len(prompt) - 1 : -1].float() / T
            ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
            assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-4)


def test_loglikelihood_matches_a_plain_forward(tiny):
    engine = Engine(tiny)
    pairs = [([5, 6, 7], [8, 9]), ([20], [21, 22, 23]), ([1, 2, 3, 4, 5, 6, 7, 8], [9])]
    got = engine.loglikelihood(pairs, batch_tokens=16)  # small batches: exercises chunking and ordering
    for (ctx, cont), g in zip(pairs, got):
        seq = torch.tensor([ctx + cont])
        with torch.no_grad():
            lp = torch.log_softmax(tiny(seq)[0].float(), -1)
        ref = sum(lp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
        assert abs(g - ref) < 1e-4


def test_context_end_caps_generation(tiny):
    small = CausalLM(preset("tiny", vocab_size=VOCAB, max_position_embeddings=16)).eval()
    out = Engine(small).generate([[1] * 10, [2] * 4], max_new_tokens=50, temperature=0, stop_token_ids=[])
    assert [len(g[0].token_ids) for g in out] == [6, 12]
    assert all(g[0].finish_reason == "length" for g in out)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prompts=[[]]), "empty"),
        (dict(prompts=[[1] * 2000]), "context"),
        (dict(prompts=[[VOCAB + 5]]), "vocabulary"),
        (dict(prompts=["hello"]), "token ids"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(min_p=1.0), "min_p"),
        (dict(n=0), "n=0"),
        (dict(stop_strings=["x"]), "tokenizer"),
        (dict(thinking_budget=4), "think"),
    ],
)
def test_bad_input_is_a_clear_error(tiny, kwargs, match):
    kw = dict(prompts=[[1, 2, 3]], max_new_tokens=4)
    kw.update(kwargs)
    with pytest.raises(SrlmError, match=match):
        Engine(tiny).generate(**kw)
