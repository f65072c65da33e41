"""Random-weight transformers models for parity tests, built locally (nothing is downloaded)."""

import torch


def hf_model(cls_name: str, overrides: dict, vocab_size: int):
    """A 3-layer, 64-wide transformers model of config class `cls_name`; weights get extra noise (std 0.05)
    so logits are far from ties and greedy choices are stable, and differences would show."""
    import transformers

    cfg = getattr(transformers, cls_name)(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=112,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=256,
        **overrides,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model
