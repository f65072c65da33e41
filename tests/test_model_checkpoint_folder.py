"""A whole srlm checkpoint folder (model + trained tokenizer + chat template) works in transformers."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

import srlm
from srlm.model import CausalLM, preset
from srlm.tokenizer import train_bpe

CORPUS = [
    f"Ann has {i} apples. Bob has {i * 3 % 50} more apples than Ann. How many apples does Bob have?" for i in range(60)
] + ["The answer is 42.", "<think>Bob = 3 + 4 = 7.</think> The answer is 7."]


def test_saved_folder_loads_in_transformers_with_same_chat_ids_and_logits(tmp_path):
    tok = train_bpe(CORPUS, vocab_size=300)
    torch.manual_seed(0)
    model = CausalLM(
        preset(
            "tiny",
            vocab_size=tok.vocab_size,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            initializer_range=0.1,
        )
    ).eval()
    srlm.save(model, tmp_path, tokenizer=tok)
    names = {p.name for p in tmp_path.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names

    model2, tok2 = srlm.load(tmp_path)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    messages = [
        {"role": "user", "content": "Ann has 3 apples. How many?"},
        {"role": "assistant", "content": "<think>Ann = 3.</think> The answer is 3."},
        {"role": "user", "content": "And Bob?"},
    ]
    ids = tok2.apply_chat_template(messages, add_generation_prompt=True)
    hf_ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    hf_ids = hf_ids["input_ids"] if not isinstance(hf_ids, list) else hf_ids
    assert ids == list(hf_ids)
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (hf_model(x).logits - model2(x)).abs().max() <= 1e-4
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.eos_token_id
