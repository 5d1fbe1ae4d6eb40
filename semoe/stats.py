"""Uncertainty of the scores: bootstrap confidence intervals of a mean over questions and a
paired comparison of two methods on the same questions.

Pure numpy/scipy (``scipy.stats.bootstrap``, ``scipy.stats.permutation_test``), seeded, so
a run's intervals are the same every time they are computed from the same per-question
scores in the same order. Intervals are **percentile** bootstrap intervals (Efron &
Tibshirani 1993, ch. 13), the paired-bootstrap form of Koehn (2004, "Statistical significance
tests for machine translation evaluation") for differences: the percentile method gives the
point value for a sample whose values are all equal (every resample has that mean) where BCa
is undefined, and it is what NLP papers usually report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95
N_RESAMPLES = 9999
SEED = 0
BOOTSTRAP_METHOD = "percentile"
# Resamples drawn at a time: bounds memory to BATCH × n floats (the draws do not depend on it).
BATCH = 1000


@dataclass(frozen=True)
class Interval:
    """A 95 % interval ``[lo, hi]`` of a mean; both None when it is undefined (``reason``)."""

    lo: float | None
    hi: float | None
    reason: str | None = None


def _values(scores: Sequence[float | None]) -> np.ndarray:
    return np.asarray([s for s in scores if s is not None], dtype=float)


def bootstrap_interval(scores: Sequence[float | None], seed: int = SEED) -> Interval:
    """Percentile bootstrap ``CONFIDENCE`` interval of the mean of ``scores`` (one value per
    question, in a fixed order; None values are left out, e.g. recall of a question without
    gold passages). ``N_RESAMPLES`` resamples drawn from ``np.random.default_rng(seed)``.

    Fewer than two values give no interval (``lo = hi = None`` with the reason); values all
    equal give the point value on both ends (every resample has that mean)."""
    from scipy import stats  # ~0.8 s to import: only where an interval is computed

    values = _values(scores)
    if len(values) < 2:
        return Interval(None, None, f"{len(values)} value(s): an interval needs at least 2")
    ci = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=N_RESAMPLES,
        batch=BATCH,
        vectorized=True,
        confidence_level=CONFIDENCE,
        method=BOOTSTRAP_METHOD,
        random_state=np.random.default_rng(seed),
    ).confidence_interval
    return Interval(float(ci.low), float(ci.high))


@dataclass(frozen=True)
class PairedDifference:
    """Method A minus method B on the same ``n`` questions: the mean difference, its paired
    bootstrap interval and the two-sided paired permutation p-value (None when n < 2)."""

    n: int
    mean_diff: float | None
    lo: float | None
    hi: float | None
    p_value: float | None
    reason: str | None = None


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x - y, axis=axis)


def paired_difference(a: Sequence[float], b: Sequence[float], seed: int = SEED) -> PairedDifference:
    """Compare two methods' per-question scores ``a`` and ``b`` (same questions, same order).

    - interval: percentile bootstrap of the mean of ``a - b``, resampling questions (paired
      bootstrap, Koehn 2004);
    - p-value: ``scipy.stats.permutation_test`` with ``permutation_type='samples'``: under
      the null each question's two scores are exchangeable, i.e. the sign of each difference
      is flipped at random. Exact (all 2^n flips) when 2^n ≤ ``N_RESAMPLES``, else
      ``N_RESAMPLES`` random flips from ``seed`` (p = (hits + 1) / (N_RESAMPLES + 1)).

    A ``ValueError`` when the lengths differ; n < 2 gives the mean (if any) and no interval or p."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired scores need the same questions: {len(x)} and {len(y)} values")
    n = len(x)
    mean = float(np.mean(x - y)) if n else None
    if n < 2:
        return PairedDifference(n, mean, None, None, None, f"{n} question(s): a test needs at least 2")
    from scipy import stats

    interval = bootstrap_interval(list(x - y), seed)
    test = stats.permutation_test(
        (x, y),
        _mean_difference,
        permutation_type="samples",
        vectorized=True,
        n_resamples=N_RESAMPLES,
        batch=BATCH,
        alternative="two-sided",
        random_state=np.random.default_rng(seed),
    )
    return PairedDifference(n, mean, interval.lo, interval.hi, float(test.pvalue))
