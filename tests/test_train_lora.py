"""LoRA SFT: only adapters train, the merged model is saved, and PEFT loads the adapter with the same logits."""

import json

import pytest
import torch

from _train_fixtures import make_tokenizer, sft_overrides
from srlm.model import load_model
from srlm.train.config import load_config
from srlm.train.lora import LoRAConfig, LoRALinear, apply_lora, merged_model
from srlm.train.sft import SFTConfig, run


def test_lora_sft_merged_save_and_peft_parity(tmp_path):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    tok = make_tokenizer(tmp_path / "tok")
    base_dir = tmp_path / "base"
    # a base checkpoint to adapt: 2 steps of full SFT
    run(load_config(SFTConfig, None, sft_overrides(base_dir, tok, steps=2)))
    base = base_dir / "final"
    out = tmp_path / "lora"
    cfg = load_config(
        SFTConfig,
        None,
        sft_overrides(
            out,
            tok,
            model=str(base),
            tokenizer=str(base),
            steps=8,
            lr=2e-2,
            **{
                "lora.enabled": "true",
                "lora.rank": 4,
                "lora.alpha": 8,
                "lora.target_modules": "[q_proj, v_proj, down_proj]",
            },
        ),
    )
    run(cfg)
    adapter = out / "final" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    from safetensors.torch import load_file

    keys = sorted(load_file(adapter / "adapter_model.safetensors"))
    assert keys[0] == "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"
    assert len(keys) == 2 * 3 * 2  # A and B x 3 modules x 2 layers

    base_sd, merged_sd = load_model(base).state_dict(), load_model(out / "final").state_dict()
    changed = {k for k in base_sd if not torch.equal(base_sd[k], merged_sd[k])}
    assert changed == {
        f"model.layers.{i}.{m}.weight"
        for i in range(2)
        for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")
    }

    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 8]])
    srlm_logits = load_model(out / "final")(ids)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    peft_model = peft.PeftModel.from_pretrained(hf, str(adapter)).eval()
    with torch.no_grad():
        peft_logits = peft_model(input_ids=ids).logits
    torch.testing.assert_close(peft_logits, srlm_logits.detach(), rtol=1e-4, atol=1e-4)
    # and the adapter matters (the test could not pass with a zero adapter)
    plain = load_model(base)(ids).detach()
    assert (plain - srlm_logits.detach()).abs().max() > 1e-3


def test_lora_freezes_base_and_merges_exactly():
    from srlm.model import CausalLM, preset

    torch.manual_seed(0)
    model = CausalLM(
        preset(
            "tiny",
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    apply_lora(model, LoRAConfig(enabled=True, rank=2, alpha=4, target_modules=["all-linear"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 7
    for m in model.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_B.weight)
    ids = torch.randint(0, 64, (2, 6))
    torch.testing.assert_close(merged_model(model)(ids), model(ids), rtol=1e-5, atol=1e-5)
