"""The inference room: batched generation over token ids, continuous batching (`batch`), sampling
(`SamplingParams`), int8/int4 weights, loading a checkpoint (`load_engine`). The `generate`, `chat`
and `bench` commands that use it live in `srlm.commands`.
Reads checkpoints from `srlm.model`; knows nothing of training or evaluation (the eval harness reaches
it through `srlm.infer.backend.EngineBackend`).
"""

from srlm.infer.engine import Completion, Engine
from srlm.infer.load import load_engine
from srlm.infer.sampling import SamplingParams

__all__ = ["Completion", "Engine", "SamplingParams", "load_engine"]
