"""int4 weight-only layers: the packed kernel computes with the group-wise quantized weight, the
rounding error is bounded by half a step per group, and a quantized model stays close to its source."""

import copy

import torch
import torch.nn as nn

from srlm.infer import Engine
from srlm.infer.quant import Int4Linear, Int8Linear, quantize_model, quantize_weight_int4
from srlm.model import CausalLM, preset


def test_group_quantization_error_is_at_most_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(64, 128) * torch.linspace(0.1, 3, 128)  # groups of very different ranges
    q, sz = quantize_weight_int4(w)
    assert q.min() >= 0 and q.max() <= 15 and sz.shape == (4, 64, 2)
    scale, zero = sz[..., 0].t()[:, :, None], sz[..., 1].t()[:, :, None]
    deq = ((q.view(64, 4, 32).float() - 8) * scale + zero).view(64, 128)
    step = scale.expand(64, 4, 32).reshape(64, 128)
    assert ((deq - w).abs() <= step / 2 + 1e-6).all()


def test_int4_layer_matches_its_dequantized_weight():
    torch.manual_seed(0)
    lin = nn.Linear(96, 48, bias=True)
    q = Int4Linear(lin)
    x = torch.randn(3, 5, 96)
    want = x @ q.dequantized().t() + lin.bias
    torch.testing.assert_close(q(x), want, atol=2e-2, rtol=2e-2)  # bf16 activations inside the kernel
    assert (q.dequantized() - lin.weight).abs().max() < 0.6 * (lin.weight.abs().max() / 7.5)


def test_int4_model_stays_close_and_decodes():
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=512)).eval()
    q = quantize_model(copy.deepcopy(model), "int4")
    kinds = {type(m) for m in q.modules() if isinstance(m, (Int4Linear, Int8Linear, nn.Linear))}
    assert kinds == {Int4Linear}
    ids = torch.randint(0, 512, (2, 24))
    with torch.no_grad():
        p, r = model(ids).log_softmax(-1), q(ids).float().log_softmax(-1)
    kl = (p.exp() * (p - r)).sum(-1).mean()
    assert kl < 0.01
    out = Engine(q).generate([[5, 6, 7], [8, 9]], max_new_tokens=6, temperature=0, stop_token_ids=[])
    assert [len(g[0].token_ids) for g in out] == [6, 6]


def test_layers_that_do_not_fit_the_groups_stay_int8():
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(40, 16), nn.Linear(32, 40))  # 40: not a multiple of 32 or 16
    quantize_model(model, "int4")
    assert isinstance(model[0], Int4Linear) and isinstance(model[1], Int8Linear) and isinstance(model[2], Int8Linear)
