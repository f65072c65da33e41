"""One row's text as ids arrive (srlm.infer.textstream): stop strings as the engine cuts them, the reasoning split."""

import pytest
import torch

from srlm.infer import Engine
from srlm.infer.textstream import ReasoningSplitter, TextStream
from srlm.model import CausalLM, preset
from srlm.tokenizer import train_bpe

TEXTS = [
    "The answer is 42. Tom has 12 apples and eats 3. How many are left? 12 - 3 = 9.",
    "héllo wörld, 日本語 ✓ naïve café — emoji 🙂 and more words here.",
] * 40


@pytest.fixture(scope="module")
def engine():
    tok = train_bpe(TEXTS, vocab_size=330)
    torch.manual_seed(0)
    return Engine(CausalLM(preset("tiny", vocab_size=tok.vocab_size, initializer_range=0.1)).eval(), tok)


def test_deltas_join_to_the_engines_text_with_and_without_stop_strings(engine):
    prompt = engine.tokenizer.encode("Tom has 12")
    free = engine.generate([prompt], max_new_tokens=40, temperature=0, stop_token_ids=[])[0][0]
    text = free.text
    # stop strings from the generated text (clean pieces: an incomplete character decodes differently mid-stream)
    pieces = [text[i : i + w] for w in (2, 3) for i in range(len(text) - w) if "\ufffd" not in text[i : i + w]]
    assert len(pieces) > 10
    cases = [[], [pieces[len(pieces) // 2]], [pieces[1], "never there"], [pieces[-1]]]
    stopped = 0
    for stops in cases:
        ref = engine.generate([prompt], max_new_tokens=40, temperature=0, stop_token_ids=[], stop_strings=stops)[0][0]
        stream = TextStream(engine.tokenizer, prompt, stops, skip_special_tokens=False)  # as generate decodes
        deltas = []
        for t in free.token_ids:
            deltas.append(stream.push(t))
            if stream.stopped:
                break
        deltas.append(stream.finish())
        assert "".join(deltas) == ref.text, stops
        assert stream.stopped == bool(stops and ref.finish_reason == "stop")
        for s in stops:  # nothing of a stop string was shown early
            assert s not in "".join(deltas)
        stopped += stream.stopped
    assert stopped == 3


def test_text_is_held_back_only_while_it_could_start_a_stop_string(engine):
    tok = engine.tokenizer
    ids = tok.encode("The answer is 42. Tom")
    stream = TextStream(tok, [], ["is 4X"])
    shown = "".join(stream.push(t) for t in ids)
    assert shown == "The answer is 42. Tom"[: len(shown)] and shown.endswith("Tom")
    assert stream.finish() == "" and not stream.stopped


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 100])
def test_reasoning_splits_from_the_answer_whatever_the_deltas(chunk):
    text = "<think>\nFirst 3 + 4 = 7.\nThen  7 * 2 = 14.\n</think>\n\nThe answer is 14. <thin"
    splitter = ReasoningSplitter()
    parts = [splitter.push(text[i : i + chunk]) for i in range(0, len(text), chunk)] + [splitter.finish()]
    assert "".join(p[0] for p in parts) == "First 3 + 4 = 7.\nThen  7 * 2 = 14."
    assert "".join(p[1] for p in parts) == "The answer is 14. <thin"


def test_reasoning_split_when_the_prompt_opened_the_thought_or_there_is_none():
    s = ReasoningSplitter(in_thought=True)
    parts = [s.push("  plan"), s.push(" more</th"), s.push("ink> done "), s.finish()]
    assert "".join(p[0] for p in parts) == "plan more" and "".join(p[1] for p in parts) == "done"
    s = ReasoningSplitter()
    parts = [s.push("just an answer"), s.push(" <"), s.finish()]
    assert [p[0] for p in parts] == ["", "", ""] and "".join(p[1] for p in parts) == "just an answer <"


def test_collecting_the_ids_gives_the_streamed_text(engine):
    tok = engine.tokenizer
    prompt = tok.encode("héllo wörld, 日本語")
    for seed in range(3):
        ids = torch.randint(0, tok.vocab_size, (40,), generator=torch.Generator().manual_seed(seed)).tolist()
        streamed = TextStream(tok, prompt)
        text = "".join(streamed.push(t) for t in ids) + streamed.finish()
        at_end = TextStream(tok, prompt, incremental=False)
        assert all(at_end.push(t) == "" for t in ids)
        assert at_end.finish() == text
    with pytest.raises(ValueError, match="incremental"):
        TextStream(tok, prompt, ["stop"], incremental=False)
