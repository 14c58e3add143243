"""A median with a distribution-free confidence interval, the statistic every profile rule reads.

Timings are skewed (a preempted block is slower, never faster) and few (ten to a few
hundred), so the interval comes from order statistics: for n sorted values, the median
lies between the k-th smallest and the k-th largest with a probability given by the
binomial distribution, whatever the distribution of the values. No resampling, so the
same samples always give the same interval.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Estimate", "median_estimate", "CONFIDENCE"]

#: The confidence of every interval in a profile.
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A median and its confidence interval, from `n` values."""

    value: float
    low: float
    high: float
    n: int

    @property
    def relative_half_width(self) -> float:
        """Half the interval's width as a share of the value (inf when the value is 0)."""
        return (self.high - self.low) / 2 / abs(self.value) if self.value else math.inf

    def to_dict(self) -> dict[str, float | int]:
        return {"value": round(self.value, 6), "low": round(self.low, 6), "high": round(self.high, 6), "n": self.n}


def median_estimate(values: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """The median of `values` and a `confidence` interval for it (the full range when n is too small for one)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    n = len(ordered)
    k = _rank(n, (1 - confidence) / 2)
    return Estimate(statistics.median(ordered), ordered[k - 1], ordered[n - k], n)


def _rank(n: int, tail: float) -> int:
    """The largest k (1-based, at most n/2) with P(Binomial(n, 1/2) <= k - 1) <= tail; 1 when none is."""
    if n > 1000:  # the normal approximation is exact enough here, and the binomial sums get slow
        return max(1, math.floor((n - 1.96 * math.sqrt(n)) / 2))
    total = 2**n
    cumulative = 0
    k = 1
    for j in range(n // 2 + 1):
        cumulative += math.comb(n, j)  # P(B <= j) * 2**n
        if cumulative * 1.0 / total > tail:
            break
        k = j + 1
    return min(max(k, 1), (n + 1) // 2)
