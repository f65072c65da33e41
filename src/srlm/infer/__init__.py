"""The inference room: batched generation over token ids, sampling, int8 weights, and the
`generate` / `chat` / `bench` commands. Reads checkpoints from `srlm.model`; knows nothing of
training or evaluation (the eval harness reaches it through `srlm.infer.backend.EngineBackend`).
"""

from srlm.infer.engine import Completion, Engine
from srlm.infer.sampling import SamplingParams

__all__ = ["Completion", "Engine", "SamplingParams"]
