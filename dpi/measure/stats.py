"""Small statistics for measurements: proportions with confidence intervals, goodput summaries.

Kept pure (numbers in, numbers out) so that what the reproductions claim can be unit-tested without a lab.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


@dataclass(frozen=True)
class Proportion:
    """k successes out of n trials, with a Wilson score interval.

    Wilson rather than the textbook normal ("Wald") interval: the FET share is ~26 % and small runs have n of a
    few tens, where Wald's interval is too narrow and can leave [0, 1]; Wilson's stays inside and keeps its
    coverage close to the nominal level.
    """

    k: int
    n: int
    low: float
    high: float
    confidence: float = 0.95

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else math.nan

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def contains(self, p: float) -> bool:
        return self.low <= p <= self.high

    def text(self) -> str:
        if not self.n:
            return "n = 0"
        return (f"{self.value * 100:.1f} % ({self.k}/{self.n}; 95 % CI {self.low * 100:.1f}-"
                f"{self.high * 100:.1f} %)")


def wilson(k: int, n: int, z: float = Z95) -> Proportion:
    """Wilson score interval for k of n (n = 0 gives the uninformative [0, 1])."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return Proportion(0, 0, 0.0, 1.0)
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # k = 0 and k = n: the bound at the data is exact, do not let float rounding move it off 0 / 1
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return Proportion(k, n, low, high)


def series_kbps(byte_bins: Sequence[int], interval: float) -> list[float]:
    """Bytes per bin -> kbit/s per bin."""
    if interval <= 0:
        raise ValueError("interval must be > 0")
    return [b * 8 / interval / 1000 for b in byte_bins]


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what is there): a policer's drop-and-recover cycle of
    about a second (T21-4: 16 KB in 100 ms, then ~900 ms of drops) is unreadable in 100 ms bins without it."""
    if window < 1:
        raise ValueError("window must be >= 1")
    out: list[float] = []
    acc = 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


@dataclass(frozen=True)
class Goodput:
    """Summary of one download's body-bytes series."""

    total_bytes: int
    seconds: float
    mean_kbps: float  # over the whole run
    steady_kbps: float  # over the steady part (after `skip` seconds): what a policer converges to
    steady_from: float  # seconds
    p10_kbps: float  # 1-second windows of the steady part: 10th and 90th percentiles (how bursty it is)
    p90_kbps: float


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def goodput(byte_bins: Sequence[int], interval: float, skip: float | None = None) -> Goodput:
    """Goodput of a series of body bytes per `interval` seconds.

    `skip`: seconds left out of the steady figure (slow start and the initial bucket, T21-4's 16 KB burst);
    default a quarter of the run, at least one second. Empty series give zeros.
    """
    if interval <= 0:
        raise ValueError("interval must be > 0")
    n = len(byte_bins)
    seconds = n * interval
    total = int(sum(byte_bins))
    if n == 0:
        return Goodput(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    if skip is None:
        skip = max(1.0, seconds / 4)
    first = min(n - 1, round(skip / interval))
    steady = byte_bins[first:]
    steady_secs = len(steady) * interval
    per_second = max(1, round(1.0 / interval))
    windows = sorted(sum(steady[i:i + per_second]) * 8 / (per_second * interval) / 1000
                     for i in range(0, len(steady) - per_second + 1, per_second))
    return Goodput(
        total_bytes=total,
        seconds=seconds,
        mean_kbps=total * 8 / seconds / 1000,
        steady_kbps=sum(steady) * 8 / steady_secs / 1000 if steady_secs else 0.0,
        steady_from=first * interval,
        p10_kbps=_percentile(windows, 0.10),
        p90_kbps=_percentile(windows, 0.90),
    )


def bracket(times_outcomes: Sequence[tuple[float, bool]]) -> tuple[float | None, float | None]:
    """(last time blocked, first time open after it) of a series of (seconds since trigger, blocked?).

    The residual window lies between the two: the estimate of its length a client can make by probing.
    """
    last_blocked: float | None = None
    for t, blocked in times_outcomes:
        if blocked:
            last_blocked = t
    if last_blocked is None:
        return None, next((t for t, b in times_outcomes if not b), None)
    first_open = next((t for t, b in times_outcomes if t > last_blocked and not b), None)
    return last_blocked, first_open
