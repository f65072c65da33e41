"""The model room: configuration, presets, the decoder, its KV cache, and checkpoint I/O."""

from srlm.model.cache import KVCache
from srlm.model.checkpoint import load, load_model, load_tokenizer, save
from srlm.model.config import ModelConfig
from srlm.model.presets import PRESETS, preset
from srlm.model.transformer import CausalLM

__all__ = ["CausalLM", "KVCache", "ModelConfig", "PRESETS", "preset", "load", "load_model", "load_tokenizer", "save"]
