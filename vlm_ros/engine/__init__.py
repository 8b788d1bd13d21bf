"""Generation engines: batch-1 greedy decoding with streaming, stop strings, token budget and deadline."""

from vlm_ros.engine.torch_engine import GenerationResult, StopReason, TorchEngine

__all__ = ["GenerationResult", "StopReason", "TorchEngine"]
