"""Generation engines: batch-1 greedy decoding with streaming, token budget, deadline and cancel."""

from vlm_ros.engine.base import Engine, EngineError, GenerationResult, StopReason
from vlm_ros.engine.torch_engine import TorchEngine

__all__ = ["Engine", "EngineError", "GenerationResult", "StopReason", "TorchEngine"]
