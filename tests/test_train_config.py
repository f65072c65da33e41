from pathlib import Path

import pytest
import yaml

from srlm.errors import SrlmError
from srlm.train.config import load_config, parse_overrides, to_yaml
from srlm.train.pretrain import PretrainConfig
from srlm.train.sft import SFTConfig

RECIPES = Path(__file__).resolve().parents[1] / "src" / "srlm" / "recipes" / "configs"


def test_overrides_are_yaml_scalars_and_nested():
    cfg = load_config(
        SFTConfig,
        None,
        [
            "lr=3e-4",
            "lora.rank=8",
            "lora.enabled=true",
            "betas=[0.9,0.99]",
            "eval_tasks=synth-gsm",
            "init_from=null",
            "steps=1e3",
        ],
    )
    assert cfg.lr == 3e-4 and isinstance(cfg.lr, float)
    assert cfg.lora.rank == 8 and cfg.lora.enabled and cfg.lora.alpha == 32.0
    assert cfg.betas == [0.9, 0.99] and cfg.eval_tasks == ["synth-gsm"] and cfg.init_from is None
    assert cfg.steps == 1000 and isinstance(cfg.steps, int)
    assert parse_overrides(["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


def test_file_then_overrides_and_roundtrip(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 10\nlora:\n  rank: 4\n  dropout: 0.1\n")
    cfg = load_config(SFTConfig, f, ["lora.rank=2"])
    assert (cfg.steps, cfg.lora.rank, cfg.lora.dropout) == (10, 2, 0.1)
    saved = tmp_path / "saved.yaml"
    saved.write_text(to_yaml(cfg))
    assert load_config(SFTConfig, saved) == cfg


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 10\nlearning_rate: 0.1\n")
    with pytest.raises(SrlmError, match=r"c.yaml:2: unknown SFTConfig key 'learning_rate'"):
        load_config(SFTConfig, f)
    f.write_text("lora:\n  rnak: 4\n")
    with pytest.raises(SrlmError, match=r"c.yaml:2: .*'lora.rnak'.*Did you mean lora.'rank'"):
        load_config(SFTConfig, f)
    with pytest.raises(SrlmError, match=r"override.*'max_grad_nrom'.*Did you mean 'max_grad_norm'"):
        load_config(SFTConfig, None, ["max_grad_nrom=1"])


def test_bad_yaml_and_bad_values(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 10\nlr: [0.1\nseed: 1\n")
    with pytest.raises(SrlmError, match=r"c.yaml:\d+: malformed YAML"):
        load_config(SFTConfig, f)
    with pytest.raises(SrlmError, match="steps: expected an integer"):
        load_config(SFTConfig, None, ["steps=many"])
    with pytest.raises(SrlmError, match="lora.rank must be a positive"):
        load_config(SFTConfig, None, ["lora.rank=0"])
    with pytest.raises(SrlmError, match="not key=value"):
        load_config(SFTConfig, None, ["lr"])


def test_shipped_recipes_load():
    for name, cls in [
        ("sft-tiny.yaml", SFTConfig),
        ("pretrain-tiny.yaml", PretrainConfig),
        ("sft-lora-qwen2.5-0.5b-gsm8k.yaml", SFTConfig),
    ]:
        cfg = load_config(cls, RECIPES / name)
        assert cfg.steps > 0
        assert yaml.safe_load(to_yaml(cfg))["out_dir"] == cfg.out_dir
