import json

import pytest
import torch

from _train_fixtures import make_tokenizer, sft_overrides
from srlm.data.chat import load_conversations, read_conversations, tokenize_conversation
from srlm.errors import SrlmError
from srlm.tokenizer import Tokenizer
from srlm.train.config import load_config
from srlm.train.sft import SFTConfig, SFTStage, prepare, run


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_assistant_only_labels(tok_dir):
    tok = Tokenizer.from_dir(tok_dir)
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "<think>\n2 + 3 = 5\n</think>\n\nThe answer is 5."},
        {"role": "user", "content": "And 4 + 4?"},
        {"role": "assistant", "content": "The answer is 8."},
    ]
    ids, labels = tokenize_conversation(tok, msgs)
    assert ids == tok.apply_chat_template(msgs)
    sup = [i for i, l in zip(ids, labels) if l != -100]
    assert tok.decode(sup) == ("<think>\n2 + 3 = 5\n</think>\n\nThe answer is 5.<|im_end|>The answer is 8.<|im_end|>")
    assert all(l == -100 or l == i for i, l in zip(ids, labels))


def test_template_breaking_prefix_property_is_an_error(tok_dir):
    tok = Tokenizer.from_dir(tok_dir)
    # renders the last assistant turn with an extra marker, so earlier renderings are not prefixes
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
        "{% if loop.last %}!{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(SrlmError, match="prefix property at message 1"):
        tokenize_conversation(
            tok,
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "yo"},
                {"role": "user", "content": "ok"},
            ],
        )


def test_data_sources_and_bad_lines(tmp_path):
    good = tmp_path / "gsm.jsonl"
    good.write_text(
        json.dumps({"question": "Tom has 3 apples and gets 2. How many?", "answer": "3 + 2 = <<3+2=5>>5\n#### 5"})
        + "\n\n"
        + json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
        + "\n"
    )
    convs = read_conversations(good)
    assert convs[0][1]["content"] == "<think>\n3 + 2 = 5\n</think>\n\nThe answer is 5."
    assert convs[1][1]["content"] == "hello"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n{oops\n")
    with pytest.raises(SrlmError, match=r"bad.jsonl:1: conversation has no assistant"):
        read_conversations(bad)
    bad.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n{oops\n')
    with pytest.raises(SrlmError, match=r"bad.jsonl:2: not valid JSON"):
        read_conversations(bad)
    synth = load_conversations("synth-gsm", {"n_train": 3, "difficulties": [1]})
    assert len(synth) == 3 and synth[0][1]["content"].startswith("<think>\n")
    assert synth[0][1]["content"].rstrip().split("\n")[-1].startswith("The answer is ")


def test_empty_dataset_is_an_error(tmp_path, tok_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    cfg = load_config(SFTConfig, None, sft_overrides(tmp_path / "run", tok_dir, data=f"[{empty}]"))
    with pytest.raises(SrlmError, match="no trainable conversation"):
        run(cfg)


def _final_weights(path):
    from srlm.model import load_model

    return load_model(path).state_dict()


def test_sft_learns_and_accumulation_is_exact(tmp_path, tok_dir):
    cfg = load_config(SFTConfig, None, sft_overrides(tmp_path / "a", tok_dir, steps=12, val_size=8, eval_every=12))
    res = run(cfg)
    lines = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if "loss" in r]
    assert len(losses) == 12 and losses[-1] < losses[0] - 0.5, losses
    assert "eval/val_loss" in res
    # batch 4 in one micro-batch == 4 micro-batches of 1 (token-weighted), up to float rounding
    one = load_config(SFTConfig, None, sft_overrides(tmp_path / "b", tok_dir, steps=3, bucket_window=0))
    four = load_config(SFTConfig, None, sft_overrides(tmp_path / "c", tok_dir, steps=3, grad_accum=4, bucket_window=0))
    run(one), run(four)
    wa, wb = _final_weights(tmp_path / "b" / "final"), _final_weights(tmp_path / "c" / "final")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    # a naive mean of per-micro-batch means would differ: make sure the test can tell
    stage = SFTStage(one, prepare(one)[1])
    ns = [b["num_tokens"] for b, _ in zip(stage.batches(0, 1), range(4))]
    assert len(set(ns)) > 1


def test_refuses_existing_out_dir_and_foreign_resume(tmp_path, tok_dir):
    run(load_config(SFTConfig, None, sft_overrides(tmp_path / "r", tok_dir, steps=2, save_every=1)))
    assert sorted(p.name for p in (tmp_path / "r").iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint-000001",
        "checkpoint-000002",
    ]
    with pytest.raises(SrlmError, match="already has checkpoints"):
        run(load_config(SFTConfig, None, sft_overrides(tmp_path / "r", tok_dir, steps=4)))
    with pytest.raises(SrlmError, match="made by another config.*lr"):
        run(load_config(SFTConfig, None, sft_overrides(tmp_path / "r", tok_dir, steps=4, lr=1e-3, resume="true")))
