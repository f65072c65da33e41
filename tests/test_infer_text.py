"""The text layer: stop strings and conditions, streaming, thinking budget, chat prompts, eval backend,
self-consistency, and int8 quantization — on a tokenizer trained here and a random tiny model."""

import pytest
import torch

from srlm.data.answers import majority
from srlm.errors import SrlmError
from srlm.infer import Engine
from srlm.infer.backend import EngineBackend
from srlm.infer.quant import Int8Linear, quantize_model, quantize_weight
from srlm.infer.reasoning import ANSWER_COMPLETE, self_consistency
from srlm.model import CausalLM, preset, save
from srlm.tokenizer import train_bpe

TEXTS = [
    "The answer is 42. Tom has 12 apples and eats 3. How many are left? 12 - 3 = 9.",
    "héllo wörld, 日本語 ✓ naïve café — emoji 🙂 and more words here.",
] * 40


@pytest.fixture(scope="module")
def tok():
    return train_bpe(TEXTS, vocab_size=330)


@pytest.fixture(scope="module")
def engine(tok):
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=tok.vocab_size, initializer_range=0.1)).eval()
    return Engine(model, tok)


def _free(engine, prompt, **kw):
    return engine.generate_text([prompt], max_new_tokens=60, temperature=0, stop_token_ids=[], **kw)[0][0]


def test_stop_string_cuts_text_and_ends_row(engine):
    free = _free(engine, "Tom has")
    assert len(free.text) > 20
    stop = free.text[10:13]
    got = _free(engine, "Tom has", stop_strings=[stop])
    assert got.finish_reason == "stop"
    assert got.text == free.text[: free.text.find(stop)]
    assert len(got.token_ids) < len(free.token_ids)
    assert free.token_ids[: len(got.token_ids)] == got.token_ids


def test_stop_condition_regex(engine):
    free = _free(engine, "héllo")
    target = free.text[15:18]
    got = _free(engine, "héllo", stop_condition=__import__("re").escape(target))
    assert got.finish_reason == "stop" and target in got.text
    assert got.text.startswith(free.text[:15]) and len(got.token_ids) < len(free.token_ids)


def test_stream_concatenates_to_the_completion_text(engine, tok):
    for prompt in ("héllo wörld", "The answer"):
        free = _free(engine, prompt)
        deltas = list(engine.stream(prompt, max_new_tokens=60, temperature=0, stop_token_ids=[]))
        assert "".join(deltas) == free.text == tok.decode(free.token_ids)
        assert len(deltas) > 5  # it streams, rather than returning everything at the end
        stop = free.text[12:14]
        cut = list(engine.stream(prompt, max_new_tokens=60, temperature=0, stop_token_ids=[], stop_strings=[stop]))
        assert "".join(cut) == free.text[: free.text.find(stop)]


def test_stream_hides_the_stop_token(engine, tok):
    free = _free(engine, "Tom")
    stop_id = free.token_ids[5]
    text = "".join(engine.stream("Tom", max_new_tokens=60, temperature=0, stop_token_ids=[stop_id]))
    assert text == tok.decode(free.token_ids[: free.token_ids.index(stop_id)])


def test_thinking_budget_forces_end_of_thought(engine, tok):
    start, end = tok.token_to_id("<think>"), tok.token_to_id("</think>")
    prompt = tok.encode("Tom has 12 apples") + [start]
    for budget in (0, 3, 7):
        out = engine.generate(
            [prompt], max_new_tokens=20, temperature=1.0, seed=1, stop_token_ids=[], thinking_budget=budget
        )[0][0]
        ids = out.token_ids
        first_end = ids.index(end)
        assert first_end <= budget
        assert len(ids) == 20  # decoding goes on to the answer after </think>


def test_chat_prompt_uses_the_template(engine, tok):
    messages = [{"role": "user", "content": "Tom has 12 apples"}]
    via_chat = engine.generate_text([messages], max_new_tokens=8, temperature=0)[0][0]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert via_chat.token_ids == engine.generate([ids], max_new_tokens=8, temperature=0)[0][0].token_ids


def test_eval_backend(engine, tok):
    backend = EngineBackend(engine)
    outs = backend.generate(["Tom has", "héllo"], n=2, max_new_tokens=10, temperature=0, stop=None)
    assert [len(o) for o in outs] == [2, 2] and outs[0][0] == outs[0][1]
    ll = backend.loglikelihood([("Tom has", " 12 apples"), ("Tom has", " 日本語")])
    assert len(ll) == 2 and all(x < 0 for x in ll)
    ctx = tok.encode("Tom has")
    assert ll[0] == pytest.approx(engine.loglikelihood([(ctx, tok.encode("Tom has 12 apples")[len(ctx) :])])[0])


def test_self_consistency_votes(engine):
    assert majority(["3", None, " 4", "4", "3"]) == ("3", [("3", 2), ("4", 2)])
    vote = self_consistency(engine, "Tom has", k=5, max_new_tokens=10, seed=0, extract=lambda t: t[:1] or None)
    assert len(vote.completions) == 5
    assert vote.answer == majority(vote.answers)[0]
    assert ANSWER_COMPLETE.search("so 3 + 4 = 7.\nThe answer is 7.")
    assert not ANSWER_COMPLETE.search("The answer is 7")  # not complete until the full stop


def test_chat_without_template_is_a_clear_error(engine, tok):
    bare = Engine(engine.model, train_bpe(TEXTS, vocab_size=330))
    bare.tokenizer.chat_template = None
    with pytest.raises(SrlmError, match="chat template"):
        bare.generate_text([[{"role": "user", "content": "hi"}]], max_new_tokens=4)


def test_int8_quantization_is_close_and_agrees_greedily(tmp_path, tok):
    q, s = quantize_weight(torch.randn(16, 32))
    assert q.dtype == torch.int8 and s.shape == (16,)
    lin = torch.nn.Linear(64, 24)
    fast, slow = Int8Linear(lin), Int8Linear(lin)
    slow.fast = False  # the dequantise-matmul fallback
    x = torch.randn(3, 64)
    assert torch.allclose(fast(x), slow(x), atol=2e-2) and torch.allclose(fast(x), lin(x), atol=5e-2)
    torch.manual_seed(0)
    model = CausalLM(preset("tiny", vocab_size=tok.vocab_size, initializer_range=0.1)).eval()
    save(model, tmp_path / "ckpt", tokenizer=tok)
    from srlm.infer.quant import load_for_inference

    qm, _ = load_for_inference(tmp_path / "ckpt", quantize="int8", dtype="float32")
    assert isinstance(qm.model.layers[0].self_attn.q_proj, Int8Linear) and isinstance(qm.lm_head, Int8Linear)
    ids = torch.tensor([tok.encode("Tom has 12 apples and eats 3.")])
    with torch.no_grad():
        ref, got = model(ids), qm(ids)
    assert (ref - got).abs().max() < 0.05 * ref.abs().max()
    # greedy agreement, teacher-forced on the fp32 model's own continuation (free-running sequences part
    # for good at the first near-tie of a random model, which says little about the quantization)
    cont = Engine(model).generate([ids[0].tolist()], max_new_tokens=16, temperature=0, stop_token_ids=[])[0][0]
    full = torch.tensor([ids[0].tolist() + cont.token_ids])
    with torch.no_grad():
        ref, got = model(full)[0, ids.shape[1] - 1 : -1], qm(full)[0, ids.shape[1] - 1 : -1]
    assert torch.equal(ref.argmax(-1), torch.tensor(cont.token_ids))  # the engine's greedy = the forward's
    assert (ref.argmax(-1) == got.argmax(-1)).float().mean() >= 0.75
    with pytest.raises(SrlmError, match="'int3' is not supported; choose one of: int8, int4"):
        quantize_model(model, "int3")
