"""Tiny random srlm models and text for the GGUF tests (nothing downloaded)."""

import torch

from srlm.model import CausalLM, ModelConfig

TEXTS = [
    "Tom has 12 apples and eats 3. How many are left? 12 - 3 = 9.",
    "  leading spaces,\ttabs\tand\n\nnewlines\r\n and trailing   ",
    "unicode: café, naïve, Ελληνικά, 日本語, emoji 🦙🚀, decomposed e\u0301",
    "<|im_start|>user\nWhat is 7 * 8?<|im_end|>\n<|im_start|>assistant\n<think>\n7*8=56\n</think>\n56<|im_end|>",
]


def tiny(model_type: str, tok, seed: int = 0, pad_rows: int = 3, **overrides) -> CausalLM:
    """A 2-layer model with GQA (4 q heads, 2 kv heads), weights far from init so logits differ clearly."""
    fields = dict(
        model_type=model_type,
        vocab_size=tok.vocab_size + pad_rows,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=model_type != "qwen2",
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = CausalLM(ModelConfig(**{**fields, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model
