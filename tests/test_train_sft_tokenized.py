"""SFT data is tokenized once per process: stages with the same tokenizer and data share it, others do not."""

import pytest

import srlm.data.chat as chat
from _train_fixtures import make_tokenizer, sft_overrides
from srlm.tokenizer import Tokenizer
from srlm.train import sft
from srlm.train.config import load_config
from srlm.train.sft import SFTConfig, SFTStage


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture
def calls(monkeypatch):
    sft._TOKENIZED.clear()
    seen = []
    real = chat.tokenize_conversation

    def counting(tokenizer, messages, **kw):
        seen.append(messages[-1]["content"])
        return real(tokenizer, messages, **kw)

    monkeypatch.setattr(chat, "tokenize_conversation", counting)
    yield seen
    sft._TOKENIZED.clear()


def _stage(tmp_path, tok, **extra):
    cfg = load_config(SFTConfig, None, sft_overrides(tmp_path, "unused", **extra))
    return SFTStage(cfg, tok)


def test_same_data_and_tokenizer_is_tokenized_once(tok_dir, tmp_path, calls):
    first = _stage(tmp_path, Tokenizer.from_dir(tok_dir))
    n = len(calls)
    assert n == 64
    # a reloaded tokenizer (another object, same content) and another max_seq_len still hit the cache
    second = _stage(tmp_path, Tokenizer.from_dir(tok_dir), max_seq_len=32)
    assert len(calls) == n
    assert [a.tolist() for a, _ in first.train] == [
        a.tolist() for a, _ in SFTStage(first.config, Tokenizer.from_dir(tok_dir)).train
    ]
    assert second.truncated > 0 and max(len(a) for a, _ in second.train) <= 32
    assert [a[:32].tolist() for a, _ in first.train] == [a.tolist() for a, _ in second.train]


def test_other_options_or_tokenizer_content_are_tokenized_again(tok_dir, tmp_path, calls):
    tok = Tokenizer.from_dir(tok_dir)
    _stage(tmp_path, tok)
    n = len(calls)
    _stage(tmp_path, tok, think="false")
    assert len(calls) == 2 * n and not calls[-1].startswith("<think>")
    other = Tokenizer.from_dir(tok_dir)
    other.chat_template = other.chat_template.replace("<|im_start|>", "<|im_start|> ")
    _stage(tmp_path, other)
    assert len(calls) == 3 * n
