"""Seed statistics: the mean of runs that differ only in their seeds, with a Student-t confidence interval, and the
paired difference of two methods trained on the same seeds, with a verdict a reader can act on.

Pure functions over plain floats; a single value gets no interval (one seed says nothing about seed noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

LEVEL = 0.95


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t distribution with df degrees of freedom."""
    from scipy.stats import t  # scipy comes with scikit-learn, a dependency; imported only when an interval is drawn

    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    return float(t.ppf(p, df))


@dataclass(frozen=True)
class Estimate:
    """n values summarized: mean, sample standard deviation and the half-width of the confidence interval
    (std and half_width are None for a single value)."""

    n: int
    mean: float
    std: float | None
    half_width: float | None

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def text(self, digits: int = 2, sign: bool = False) -> str:
        """'61.00 ± 12.71 (n=2)', or '50.00 (1 seed)': one seed is labelled, never given an interval."""
        mean = f"{self.mean:+.{digits}f}" if sign else f"{self.mean:.{digits}f}"
        if self.half_width is None:
            return f"{mean} (1 seed)"
        return f"{mean} ± {self.half_width:.{digits}f} (n={self.n})"

    def to_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "std": self.std, "ci_low": self.low, "ci_high": self.high,
                "ci_half_width": self.half_width}


def estimate(values: Sequence[float], level: float = LEVEL) -> Estimate:
    """Mean and two-sided `level` confidence interval of the mean, mean ± t(1 - (1 - level) / 2, n - 1) * s / sqrt(n)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarize")
    mean = math.fsum(values) / n
    if n == 1:
        return Estimate(1, mean, None, None)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return Estimate(n, mean, std, t_quantile(1 - (1 - level) / 2, n - 1) * std / math.sqrt(n))


def verdict(diff: Estimate) -> str:
    """'ahead' or 'behind' when the interval of a difference excludes 0, 'within noise' when it holds 0, and
    'one seed' when there is no interval to judge by."""
    if diff.half_width is None:
        return "one seed"
    if diff.low > 0:
        return "ahead"
    if diff.high < 0:
        return "behind"
    return "within noise"


def paired_difference(a: Mapping[Hashable, float], b: Mapping[Hashable, float], level: float = LEVEL) -> Estimate | None:
    """a - b over the seeds both have (keys are seeds): pairing removes what a seed does to both methods alike.
    None when they share no seed."""
    common = [s for s in a if s in b]
    return estimate([a[s] - b[s] for s in common], level) if common else None
