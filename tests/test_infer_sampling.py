"""Sampling on a small vocabulary: the draws follow the intended distribution, truncation keeps the right set."""

import pytest
import torch

from srlm.errors import SrlmError
from srlm.infer.sampling import SamplingParams, apply_repetition_penalty, sample

N = 40_000
LOGITS = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.06, 0.04]))


def _freqs(params, logits=LOGITS, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens, _ = sample(logits.expand(N, -1).clone(), params, g)
    return torch.bincount(tokens, minlength=logits.numel()).float() / N


def _close(freq, probs, tol=0.012):
    assert (freq - probs).abs().max().item() < tol, (freq, probs)


def test_plain_sampling_follows_softmax():
    _close(_freqs(SamplingParams(temperature=1.0)), torch.softmax(LOGITS, -1))


def test_temperature_sharpens_and_flattens():
    for t in (0.5, 2.0):
        _close(_freqs(SamplingParams(temperature=t)), torch.softmax(LOGITS / t, -1))


def test_top_k_keeps_k_tokens_renormalised():
    f = _freqs(SamplingParams(top_k=2))
    _close(f, torch.tensor([2 / 3, 1 / 3, 0, 0, 0]))
    assert f[2:].sum() == 0


def test_top_p_keeps_the_smallest_set_reaching_p():
    f = _freqs(SamplingParams(top_p=0.7))  # 0.5 < 0.7 <= 0.75: tokens 0 and 1
    assert f[2:].sum() == 0
    _close(f, torch.tensor([2 / 3, 1 / 3, 0, 0, 0]))
    f = _freqs(SamplingParams(top_p=0.8))  # needs token 2 as well
    assert f[3:].sum() == 0 and f[2] > 0.1


def test_min_p_drops_tokens_below_a_fraction_of_the_best():
    f = _freqs(SamplingParams(min_p=0.3))  # floor 0.15: tokens 0, 1, 2
    assert f[3:].sum() == 0
    _close(f, torch.tensor([0.5, 0.25, 0.15, 0, 0]) / 0.9)


def test_greedy_is_argmax_and_logprobs_are_at_temperature_one():
    tokens, lp = sample(LOGITS[None].repeat(3, 1), SamplingParams(temperature=0), want_logprobs=True)
    assert tokens.tolist() == [0, 0, 0]
    assert torch.allclose(lp, torch.log(torch.tensor(0.5)).expand(3))


def test_same_generator_seed_same_draws():
    p = SamplingParams(temperature=1.0, top_p=0.9)
    a, b, c = (_freqs(p, seed=s) for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_repetition_penalty_matches_the_ctrl_rule():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0]]


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=-0.1),
        dict(top_p=0),
        dict(top_p=1.01),
        dict(min_p=-0.1),
        dict(top_k=-1),
        dict(repetition_penalty=0),
    ],
)
def test_bad_parameters_raise(kw):
    with pytest.raises(SrlmError):
        SamplingParams(**kw)


def _nucleus_by_full_sort(logits, top_p):
    values, order = torch.sort(logits, dim=-1, descending=True)
    p = torch.softmax(values, dim=-1)
    drop = torch.zeros_like(values, dtype=torch.bool).scatter_(-1, order, (p.cumsum(-1) - p) >= top_p[:, None])
    return ~drop


def _band(width):  # `width` likely tokens scattered over a 50k vocabulary, the rest far less likely
    torch.manual_seed(0)
    logits = torch.randn(4, 50_000) * 0.01
    logits[:, torch.randperm(50_000)[:width]] += 20.0
    return logits


# the nucleus among the top 1,024 (peaked), among the top 16,384 (a band of 4,000), or only a full sort finds it
@pytest.mark.parametrize("width", [50, 4000, 50_000])
def test_top_p_on_a_large_vocabulary_keeps_what_a_full_sort_keeps(width):
    from srlm.infer.sampling import TOP_P_CANDIDATES, _drop_outside_nucleus

    logits = _band(width) if width < 50_000 else torch.randn(4, 50_000) * 0.01
    top_p = torch.tensor([0.5, 0.9, 0.95, 0.999])
    kept = _drop_outside_nucleus(logits, top_p) > torch.finfo(logits.dtype).min
    want = _nucleus_by_full_sort(logits, top_p)
    assert torch.equal(kept, want)
    widest = int(want.sum(-1).max())
    assert (widest > TOP_P_CANDIDATES[0]) == (width > 1000) and (widest > TOP_P_CANDIDATES[1]) == (width > 20_000)


def test_draws_on_a_large_vocabulary_follow_the_distribution():
    """One uniform per row, inverse CDF: a 150k vocabulary with a few likely tokens and a long flat tail."""
    logits = torch.full((151_936,), -4.0)
    logits[[7, 70_000, 151_935]] = torch.tensor([3.0, 2.0, 1.0])
    probs = torch.softmax(logits, -1)
    g = torch.Generator().manual_seed(0)
    rows = logits.expand(500, -1).contiguous()  # 10,000 draws in 20 batches of 500 (memory stays ~1 GB)
    tokens = torch.cat([sample(rows, SamplingParams(temperature=1.0), g)[0] for _ in range(20)])
    freq = torch.bincount(tokens, minlength=logits.numel()).float() / tokens.numel()
    for t in (7, 70_000, 151_935):
        assert abs(freq[t] - probs[t]) < 0.015
    tail = probs.clone()
    tail[[7, 70_000, 151_935]] = 0
    assert abs(freq.sum() - freq[[7, 70_000, 151_935]].sum() - tail.sum()) < 0.015
