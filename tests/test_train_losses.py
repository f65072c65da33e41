"""Distillation and GRPO losses against direct, unchunked formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from srlm.train.losses import distill_loss, group_advantages, grpo_loss, token_logprobs


def _setup(n=37, h=16, v=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(n, h, generator=g, requires_grad=True)
    ws = torch.randn(v, h, generator=g, requires_grad=True)
    ht = torch.randn(n, 24, generator=g)
    wt = torch.randn(v, 24, generator=g)
    return hs, ws, ht, wt


def _probs(hs, ws, ht, wt, T=1.0):
    s = torch.log_softmax(hs @ ws.T / T, -1)
    t = torch.log_softmax(ht @ wt.T / T, -1)
    return s, t


def test_forward_and_reverse_kl_match_direct_formula_and_chunking():
    hs, ws, ht, wt = _setup()
    s, t = _probs(hs, ws, ht, wt, T=2.0)
    fwd = (t.exp() * (t - s)).sum() * 4.0
    rev = (s.exp() * (s - t)).sum() * 4.0
    for chunk in (5, 1024):
        got_f = distill_loss(hs, ws, ht, wt, "forward_kl", temperature=2.0, chunk_size=chunk)
        got_r = distill_loss(hs, ws, ht, wt, "reverse_kl", temperature=2.0, chunk_size=chunk)
        torch.testing.assert_close(got_f, fwd, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(got_r, rev, rtol=1e-5, atol=1e-4)
    # torch's own kl_div agrees on the forward direction
    torch.testing.assert_close(F.kl_div(s, t, log_target=True, reduction="sum") * 4.0, fwd, rtol=1e-5, atol=1e-4)


def test_chunked_gradients_equal_unchunked():
    hs, ws, ht, wt = _setup()
    grads = []
    for chunk in (4, 1000):
        hs.grad = ws.grad = None
        distill_loss(hs, ws, ht, wt, "jsd", beta=0.3, chunk_size=chunk).backward()
        grads.append((hs.grad.clone(), ws.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_jsd_endpoints_are_the_kls_and_limits_approach_them():
    hs, ws, ht, wt = _setup()
    # soft distributions, so the second-order term of the small-beta expansion is negligible
    hs, ws, ht = (hs * 0.25).detach(), ws.detach(), ht * 0.25
    fwd = distill_loss(hs, ws, ht, wt, "forward_kl")
    rev = distill_loss(hs, ws, ht, wt, "reverse_kl")
    torch.testing.assert_close(distill_loss(hs, ws, ht, wt, "jsd", beta=0.0), fwd)
    torch.testing.assert_close(distill_loss(hs, ws, ht, wt, "jsd", beta=1.0), rev)
    # JSD(beta) ~ beta KL(T||S) as beta -> 0 and ~ (1 - beta) KL(S||T) as beta -> 1
    b = 1e-4
    assert float(distill_loss(hs, ws, ht, wt, "jsd", beta=b) / b) == pytest.approx(float(fwd), rel=2e-2)
    assert float(distill_loss(hs, ws, ht, wt, "jsd", beta=1 - b) / b) == pytest.approx(float(rev), rel=2e-2)


def test_jsd_symmetric_midpoint_and_bounds():
    hs, ws, ht, wt = _setup()
    s, t = _probs(hs, ws, ht, wt)
    m = torch.log(0.5 * s.exp() + 0.5 * t.exp())
    direct = 0.5 * (t.exp() * (t - m)).sum() + 0.5 * (s.exp() * (s - m)).sum()
    got = distill_loss(hs, ws, ht, wt, "jsd", beta=0.5)
    torch.testing.assert_close(got, direct, rtol=1e-5, atol=1e-4)
    assert 0 < float(got) <= hs.shape[0] * math.log(2) + 1e-4
    # identical distributions: zero divergence of every kind
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        assert float(distill_loss(ht, wt, ht, wt, kind)) == pytest.approx(0.0, abs=1e-4)


def test_teacher_gets_no_gradient_and_bad_args_are_refused():
    hs, ws, ht, wt = _setup()
    ht.requires_grad_(True)
    distill_loss(hs, ws, ht, wt, "forward_kl").backward()
    assert ht.grad is None and hs.grad is not None
    with pytest.raises(ValueError):
        distill_loss(hs, ws, ht, wt, "kl")
    with pytest.raises(ValueError):
        distill_loss(hs, ws, ht, wt, "jsd", beta=1.5)


def test_token_logprobs_match_log_softmax_and_chunking():
    hs, ws, _, _ = _setup()
    targets = torch.randint(0, 50, (37,))
    lp_all = torch.log_softmax(hs @ ws.T / 0.7, -1)
    want = lp_all.gather(-1, targets[:, None]).squeeze(-1)
    ent = -(lp_all.exp() * lp_all).sum(-1)
    for chunk in (6, 1024):
        lp, e = token_logprobs(hs, ws, targets, temperature=0.7, chunk_size=chunk)
        torch.testing.assert_close(lp, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(e, ent, rtol=1e-5, atol=1e-5)
    lp.sum().backward()
    assert hs.grad is not None


def test_group_advantages():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    a = group_advantages(r, 4, "group")
    std = torch.tensor([1.0, 0.0, 0.0, 0.0]).std()
    torch.testing.assert_close(a[:4], (torch.tensor([0.75, -0.25, -0.25, -0.25])) / (std + 1e-4))
    assert torch.all(a[4:] == 0)  # a tied group gives no signal
    torch.testing.assert_close(group_advantages(r, 4, "none")[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]))


def _grpo_inputs():
    g = torch.Generator().manual_seed(1)
    logps = (torch.randn(4, 6, generator=g) * 0.3 - 1.0).requires_grad_(True)
    old = logps.detach() + torch.randn(4, 6, generator=g) * 0.3
    ref = logps.detach() + torch.randn(4, 6, generator=g) * 0.2
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]]).float()
    adv = torch.tensor([1.0, -0.5, 0.3, -1.2])
    return logps, old, ref, mask, adv


def _per_token(logps, old, ref, adv, beta, lo, hi):
    ratio = torch.exp(logps - old)
    a = adv[:, None]
    pt = -torch.min(ratio * a, ratio.clamp(1 - lo, 1 + hi) * a)
    d = ref - logps
    return pt + beta * (torch.exp(d) - d - 1), ratio


def test_grpo_loss_aggregations_match_definitions():
    logps, old, ref, mask, adv = _grpo_inputs()
    pt, ratio = _per_token(logps, old, ref, adv, 0.04, 0.2, 0.28)
    want = {
        "grpo": ((pt * mask).sum(1) / mask.sum(1)).mean(),
        "dr_grpo": (pt * mask).sum() / (4 * 10),
        "dapo": (pt * mask).sum() / mask.sum(),
    }
    for lt, w in want.items():
        loss, stats = grpo_loss(
            logps,
            old,
            adv,
            mask,
            ref_logps=ref,
            beta=0.04,
            epsilon_low=0.2,
            epsilon_high=0.28,
            loss_type=lt,
            max_len=10,
        )
        torch.testing.assert_close(loss, w)
    a = adv[:, None]
    clipped = (((ratio < 0.8) & (a < 0)) | ((ratio > 1.28) & (a > 0))).float()
    assert stats["clip_fraction"] == pytest.approx(float((clipped * mask).sum() / mask.sum()), abs=1e-6)
    assert stats["clip_fraction"] > 0  # the fixture does exercise clipping
    assert stats["kl"] > 0


def test_grpo_single_pass_gradient_is_advantage_weighted_logprob_gradient():
    logps, _, _, mask, adv = _grpo_inputs()
    loss, stats = grpo_loss(logps, None, adv, mask, loss_type="dapo")
    loss.backward()
    # ratio == 1 everywhere: d loss / d logp = -A / n_tokens on real tokens, 0 on padding
    torch.testing.assert_close(logps.grad, -adv[:, None] * mask / mask.sum())
    assert stats["clip_fraction"] == 0.0 and stats["kl"] == 0.0


def test_grpo_masks_truncated_completions_and_needs_ref_for_beta():
    logps, old, _, mask, adv = _grpo_inputs()
    trunc = torch.tensor([True, False, False, False])
    loss, _ = grpo_loss(logps, old, adv, mask, truncated=trunc, loss_type="dapo")
    loss.backward()
    assert torch.all(logps.grad[0] == 0) and torch.any(logps.grad[1] != 0)
    with pytest.raises(ValueError):
        grpo_loss(logps, old, adv, mask, beta=0.1)
