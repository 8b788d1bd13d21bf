"""The one place that knows how the installed transformers names a model's KV cache.

transformers 5.24 calls it `cache` (forward argument and output field); 5.20, the newest release for Python 3.10
(JetPack 6), calls it `past_key_values`. Decided once, at import, from the fields of transformers' own output class.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers.modeling_outputs import CausalLMOutputWithPast

CACHE_NAME = ("cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}
              else "past_key_values")


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """The forward keyword that passes `cache` (a transformers Cache) to a model."""
    return {CACHE_NAME: cache}


def output_cache(output: Any) -> Any:
    """The KV cache a model's forward returned (with use_cache=True)."""
    return getattr(output, CACHE_NAME)
