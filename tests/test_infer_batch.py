"""Continuous batching (srlm.infer.batch): rows that join a running batch and leave it compute what they
would alone; the KV cache's row primitives; per-row sampling against the one-setting sampler."""

import pytest
import torch

from srlm.errors import SrlmError
from srlm.infer import Engine
from srlm.infer.batch import DecodeBatch, RowRequest
from srlm.infer.sampling import SamplingParams, sample, sample_rows
from srlm.model import CausalLM, KVCache, preset
from srlm.tokenizer import train_bpe

TEXTS = ["The answer is 42. Tom has 12 apples and eats 3. How many are left? 12 - 3 = 9. <think> so </think>"] * 40
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [20, 21, 22], [30, 31, 32, 33, 34, 35, 36], list(range(40, 70))]


@pytest.fixture(scope="module")
def engine():
    tok = train_bpe(TEXTS, vocab_size=300)
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=tok.vocab_size, initializer_range=0.1)).eval()
    return Engine(model, tok)


def _alone(engine, prompt, **kw):
    return engine.generate([prompt], **kw)[0][0]


def _run(batch, schedule, steps_max=1000):
    """Drive the batch: `schedule` maps a step number to the requests joining then; returns tokens per request."""
    tokens, finish, owner = {}, {}, {}
    for step in range(steps_max):
        if step in schedule:
            for name, req in schedule[step]:
                for j, key in enumerate(batch.add([req])[0]):
                    owner[key] = (name, j)
                    tokens[(name, j)] = []
        if not len(batch) and all(s <= step for s in schedule):
            break
        for out in batch.step():
            tokens[owner[out.key]].append(out.token)
            if out.finish:
                finish[owner[out.key]] = out.finish
    return tokens, finish


def test_rows_joining_a_running_batch_decode_as_they_would_alone(engine, monkeypatch):
    # a long prompt joins later (the cache shifts right), rows outlive the first allocation (it trims and grows)
    moves = []
    realign = KVCache.realign
    monkeypatch.setattr(
        KVCache,
        "realign",
        lambda self, pos, max_len=None: (
            moves.append((self.pos, pos, self.max_len, max_len)),
            realign(self, pos, max_len),
        )[1],
    )
    new = [90, 12, 70, 40]
    batch = DecodeBatch(engine, max_len=256)
    schedule = {
        0: [
            (
                "a",
                RowRequest(
                    PROMPTS[0], stop_token_ids=[], sampling=SamplingParams(max_new_tokens=new[0], temperature=0)
                ),
            )
        ],
        3: [
            (
                "b",
                RowRequest(
                    PROMPTS[1], stop_token_ids=[], sampling=SamplingParams(max_new_tokens=new[1], temperature=0)
                ),
            ),
            (
                "c",
                RowRequest(
                    PROMPTS[2], n=2, stop_token_ids=[], sampling=SamplingParams(max_new_tokens=new[2], temperature=0)
                ),
            ),
        ],
        10: [
            (
                "d",
                RowRequest(
                    PROMPTS[3], stop_token_ids=[], sampling=SamplingParams(max_new_tokens=new[3], temperature=0)
                ),
            )
        ],
    }
    got, finish = _run(batch, schedule)
    for name, prompt, n_new in zip("abcd", PROMPTS, new):
        ref = _alone(engine, prompt, max_new_tokens=n_new, temperature=0, stop_token_ids=[]).token_ids
        assert got[(name, 0)] == ref, name
        assert finish[(name, 0)] == "length"
    assert got[("c", 1)] == got[("c", 0)]
    assert len(batch) == 0 and batch.cache is None
    assert any(new_pos > old_pos for old_pos, new_pos, _, _ in moves)  # shifted right for the long prompt
    assert any(new_pos < old_pos for old_pos, new_pos, _, _ in moves)  # unused slots dropped
    assert any(cap > old_cap for _, _, old_cap, cap in moves)  # and grown


@pytest.mark.parametrize("fused", [True, False])
def test_stop_ids_limits_and_the_context_end(engine, fused, monkeypatch):
    free = _alone(engine, PROMPTS[1], max_new_tokens=30, temperature=0, stop_token_ids=[]).token_ids
    stop = free[4]
    if not fused:  # the model's own forward, as for models the fused step does not support
        monkeypatch.setattr(engine, "fused_decoder", lambda max_len: None)
    batch = DecodeBatch(engine, max_len=40)
    got, finish = _run(
        batch,
        {
            0: [
                (
                    "s",
                    RowRequest(
                        PROMPTS[1], stop_token_ids=[stop], sampling=SamplingParams(max_new_tokens=30, temperature=0)
                    ),
                ),
                (
                    "ctx",
                    RowRequest(
                        PROMPTS[3], stop_token_ids=[], sampling=SamplingParams(max_new_tokens=30, temperature=0)
                    ),
                ),
            ]
        },
    )
    assert got[("s", 0)] == free[: free.index(stop) + 1] and finish[("s", 0)] == "stop"
    assert len(got[("ctx", 0)]) == 40 - len(PROMPTS[3]) and finish[("ctx", 0)] == "length"


def test_seeded_rows_draw_the_same_whatever_shares_the_batch(engine):
    req = RowRequest(
        PROMPTS[0],
        n=3,
        seed=11,
        stop_token_ids=[],
        sampling=SamplingParams(max_new_tokens=25, temperature=1.0, top_p=0.9),
    )
    alone, _ = _run(DecodeBatch(engine), {0: [("x", req)]})
    others = [
        ("o1", RowRequest(PROMPTS[2], stop_token_ids=[], sampling=SamplingParams(max_new_tokens=40, temperature=1.2))),
        (
            "o2",
            RowRequest(
                PROMPTS[3],
                seed=3,
                stop_token_ids=[],
                sampling=SamplingParams(max_new_tokens=5, temperature=0.7, top_k=5),
            ),
        ),
    ]
    crowded, _ = _run(DecodeBatch(engine), {0: others[:1], 2: [("x", req)], 4: others[1:]})
    assert [alone[("x", j)] for j in range(3)] == [crowded[("x", j)] for j in range(3)]
    assert len({tuple(alone[("x", j)]) for j in range(3)}) == 3  # the n rows draw differently
    reseeded, _ = _run(DecodeBatch(engine), {0: [("x", RowRequest(**{**req.__dict__, "seed": 12}))]})
    assert reseeded != alone


def test_logprobs_and_thinking_budget_match_the_engine(engine):
    think_start = engine.tokenizer.token_to_id("<think>")
    prompt = PROMPTS[2] + [think_start]
    ref = engine.generate(
        [prompt], max_new_tokens=12, temperature=0, stop_token_ids=[], return_logprobs=True, thinking_budget=3
    )[0][0]
    assert engine.think_ids[1] in ref.token_ids  # the budget forced </think>
    batch = DecodeBatch(engine)
    batch.add(
        [
            RowRequest(
                prompt,
                stop_token_ids=[],
                logprobs=True,
                top_logprobs=3,
                thinking_budget=3,
                sampling=SamplingParams(max_new_tokens=12, temperature=0),
            )
        ]
    )
    outs = []
    while len(batch):
        outs += batch.step()
    assert [o.token for o in outs] == ref.token_ids
    assert [o.logprob for o in outs] == pytest.approx(ref.logprobs, abs=1e-4)
    for o in outs:
        assert len(o.top_logprobs) == 3
        assert o.top_logprobs[0][1] >= o.top_logprobs[1][1] >= o.top_logprobs[2][1]
        if o.token != engine.think_ids[1]:  # greedy picks the most likely token (unless forced)
            assert o.top_logprobs[0][0] == o.token


def test_remove_frees_rows_and_bad_requests_add_nothing(engine):
    batch = DecodeBatch(engine)
    [[a], [b, c]] = batch.add(
        [
            RowRequest(PROMPTS[0], sampling=SamplingParams(max_new_tokens=50)),
            RowRequest(PROMPTS[1], n=2, sampling=SamplingParams(max_new_tokens=50)),
        ]
    )
    batch.step()
    batch.remove([b, 12345])
    assert batch.keys == [a, c] and batch.cache.batch_size == 2
    for bad, field in [
        (RowRequest([]), "empty"),
        (RowRequest([10**6]), "vocabulary"),
        (RowRequest(list(range(5)) * 300), "tokens"),
        (RowRequest([1], n=0), "n=0"),
        (RowRequest([1], sampling=SamplingParams(repetition_penalty=1.3)), "repetition_penalty"),
        (RowRequest([1], sampling={"temperature": 0.5}), "SamplingParams"),
        (RowRequest([1], thinking_budget=-2), "thinking_budget"),
    ]:
        with pytest.raises(SrlmError, match=field):
            batch.add([RowRequest(PROMPTS[2]), bad])
    assert batch.keys == [a, c]
    assert [o.key for o in batch.step()] == [a, c]
    for kwargs, field in [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
    ]:  # a request's sampling is refused before it reaches a batch
        with pytest.raises(SrlmError, match=field):
            SamplingParams(**kwargs)
    batch.remove([a, c])
    assert len(batch) == 0 and batch.step() == []


def test_kv_cache_extend_and_realign():
    cache = KVCache(2, 1, 1, 8, 2)
    cache.k[:, 0, :, :3] = torch.arange(1, 4, dtype=torch.float32)[:, None]
    cache.pos = 3
    other = KVCache(2, 2, 1, 2, 2)
    other.k.fill_(9)
    other.pos = 2
    cache.extend(other)
    assert cache.batch_size == 3 and cache.k[0, 1, 0, :, 0].tolist() == [0, 9, 9, 0, 0, 0, 0, 0]
    cache.realign(5, 6)  # shift right, new capacity
    assert cache.pos == 5 and cache.max_len == 6
    assert cache.k[0, 0, 0, :, 0].tolist() == [0, 0, 1, 2, 3, 0]
    cache.realign(2)  # drop the three leftmost slots
    assert cache.k[0, 0, 0, :, 0].tolist() == [2, 3, 0, 0, 0, 0]
    assert cache.k[0, 2, 0, :, 0].tolist() == [9, 9, 0, 0, 0, 0]
    longer = KVCache(2, 1, 1, 4, 2)
    longer.pos = 4
    with pytest.raises(ValueError, match="realign first"):
        cache.extend(longer)


@pytest.mark.parametrize(
    "params",
    [SamplingParams(temperature=0.7, top_k=7), SamplingParams(top_p=0.8, min_p=0.05), SamplingParams(temperature=0)],
)
def test_sample_rows_draws_what_sample_draws(params):
    torch.manual_seed(1)
    logits = torch.randn(5, 50) * 3
    ref, ref_lp = sample(logits, params, torch.Generator().manual_seed(4), want_logprobs=True)
    rows = 5
    noise = torch.rand(rows, generator=torch.Generator().manual_seed(4))
    full = lambda v, dt=torch.float32: torch.full((rows,), v, dtype=dt)  # noqa: E731
    tok, lp, top = sample_rows(
        logits,
        full(params.temperature),
        full(params.top_k or 0, torch.long),
        full(params.top_p),
        full(params.min_p),
        None if params.greedy else noise,
        want_logprobs=True,
        top_logprobs=2,
    )
    assert tok.tolist() == ref.tolist()
    assert torch.allclose(lp, ref_lp)
    assert top[0].shape == (5, 2)
