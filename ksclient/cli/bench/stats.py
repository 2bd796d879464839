"""Latency summaries shared by the benchmarks: percentiles of nanosecond samples, in µs.

The latency benchmarks (``portcls bench``, ``scripts/bench_rtmidi_jack.py``) summarise
their sample sets here, so a "p99" means the same thing everywhere: linear
interpolation between the closest ranks (numpy's default), over every sample,
nothing trimmed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Summary", "no_nan", "percentile", "ratio", "summarize"]


def percentile(ordered: Sequence[float], q: float) -> float:
    """Percentile ``q`` (0-100) of already sorted values, interpolating between the
    closest ranks; NaN for no values."""
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


@dataclass(frozen=True, slots=True)
class Summary:
    """A latency sample set summarised in microseconds (None where there were no samples)."""

    samples: int
    p50_us: float | None
    p90_us: float | None
    p99_us: float | None
    p999_us: float | None
    max_us: float | None
    mean_us: float | None

    def to_json(self) -> dict[str, Any]:
        """The figures as the JSON report holds them (``p50_us``, ..., ``samples``)."""
        return {
            "p50_us": self.p50_us,
            "p90_us": self.p90_us,
            "p99_us": self.p99_us,
            "p999_us": self.p999_us,
            "max_us": self.max_us,
            "mean_us": self.mean_us,
            "samples": self.samples,
        }


def summarize(samples_ns: Iterable[int]) -> Summary:
    """Summarise round-trip or latency samples given in nanoseconds."""
    ordered = sorted(samples_ns)
    if not ordered:
        return Summary(0, None, None, None, None, None, None)

    def us(q: float) -> float:
        return percentile(ordered, q) / 1000.0

    return Summary(
        samples=len(ordered),
        p50_us=us(50),
        p90_us=us(90),
        p99_us=us(99),
        p999_us=us(99.9),
        max_us=ordered[-1] / 1000.0,
        mean_us=math.fsum(ordered) / len(ordered) / 1000.0,
    )


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing (or NaN) or b is zero."""
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return None
    return a / b


def no_nan(value: Any) -> Any:
    """The same structure with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [no_nan(v) for v in value]
    return value
