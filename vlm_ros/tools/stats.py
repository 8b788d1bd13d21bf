"""Summary statistics shared by the benchmark and soak tools."""

from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    """The sample at quantile q (0..1) of values, nearest rank from below; NaN for no values."""
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")
