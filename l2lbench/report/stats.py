"""Statistics for reports: pure functions of numpy arrays, each tested on known answers.

Conventions used throughout the report:

* A *finished* seed is a run stored as ``ok``; a *diverged* seed stopped with a
  non-finite loss and its curves are cut where it diverged.
* Means, confidence intervals, best losses and curve areas are over the finished seeds;
  the fraction of seeds that diverged is reported beside them.
* For ranking, a diverged seed's final loss counts as the worst final loss any seed
  finished with on the task (:func:`penalised_mean`), and an optimiser with more than
  half of its seeds diverged ranks after every other (:func:`ranks`).
* In paired tests a diverged seed is worse than every finished one
  (:func:`paired_wilcoxon`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as sps

#: The significance level of the paired comparisons.
ALPHA = 0.05
#: Seeds the bootstrap resampling, so a report is the same every time it is made.
BOOTSTRAP_SEED = 0
#: Resamples of the two-level bootstrap over meta-training seeds, then seeds.
META_BOOTSTRAP = 2000


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its bootstrap confidence interval (nan bounds for < 2 seeds)."""

    mean: float
    low: float
    high: float
    n: int


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float).ravel()
    return values[np.isfinite(values)]


def bootstrap_ci(
    values: np.ndarray, *, seed: int, confidence: float = 0.95, n_resamples: int = 9999
) -> tuple[float, float]:
    """Bias-corrected and accelerated (BCa) bootstrap interval of the mean.

    Efron & Tibshirani (1993), via :func:`scipy.stats.bootstrap`. The resampling is
    seeded, so the same values always give the same interval. Fewer than two values
    have no interval (nan, nan); identical values have the zero-width interval.

    Args:
        values: one number per seed; non-finite entries are ignored.
        seed: seeds the resampling generator.
        confidence: the interval's coverage.
        n_resamples: bootstrap resamples.

    Returns:
        (low, high).

    Example:
        >>> bootstrap_ci(np.array([1.0, 1.0, 1.0]), seed=0)
        (1.0, 1.0)
    """
    x = _finite(values)
    if x.size < 2:
        return (math.nan, math.nan)
    if np.ptp(x) == 0:
        return (float(x[0]), float(x[0]))
    with warnings.catch_warnings():
        # BCa warns (and returns nan) on degenerate resamples of tiny samples; we then
        # fall back to the percentile interval below.
        warnings.simplefilter("ignore")
        ci = _bootstrap(x, seed, confidence, n_resamples, "BCa")
        if not (math.isfinite(ci[0]) and math.isfinite(ci[1])):
            ci = _bootstrap(x, seed, confidence, n_resamples, "percentile")
    return ci


def _bootstrap(x: np.ndarray, seed: int, confidence: float, n_resamples: int, method: str) -> tuple[float, float]:
    result = sps.bootstrap(
        (x,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method=method,
        rng=np.random.default_rng(seed),
    )
    return (float(result.confidence_interval.low), float(result.confidence_interval.high))


def mean_ci(values: np.ndarray, *, seed: int, confidence: float = 0.95) -> Estimate:
    """Mean of the finite values and its bootstrap interval (:func:`bootstrap_ci`).

    >>> mean_ci(np.array([2.0]), seed=0)
    Estimate(mean=2.0, low=nan, high=nan, n=1)
    """
    x = _finite(values)
    if x.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    low, high = bootstrap_ci(x, seed=seed, confidence=confidence)
    return Estimate(float(x.mean()), low, high, int(x.size))


def bootstrap_band(
    curves: np.ndarray, *, seed: int, confidence: float = 0.95, n_resamples: int = 2000
) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise percentile bootstrap band of the mean curve over seeds.

    Every resample draws whole seeds (rows), so one resample's mean curve is a curve
    some mix of seeds could have produced; the band is the pointwise percentiles of
    those mean curves. A single seed has no band (nan).

    Args:
        curves: (seeds, points).

    Returns:
        (low, high), each of shape (points,).
    """
    curves = np.asarray(curves, dtype=float)
    n, points = curves.shape
    if n < 2:
        return np.full(points, math.nan), np.full(points, math.nan)
    rows = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    means = curves[rows].mean(axis=1)  # (resamples, points)
    tail = 100 * (1 - confidence) / 2
    return np.percentile(means, tail, axis=0), np.percentile(means, 100 - tail, axis=0)


def two_level_interval(samples: Sequence[np.ndarray], *, seed: int, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval of the mean over meta-training seeds of the mean over seeds,
    resampling both levels: the meta-training seeds, then the seeds of each one drawn.

    Args:
        samples: per meta-training seed, its seeds' values; empty ones are left out.

    Returns:
        (low, high); (nan, nan) with fewer than two non-empty samples.
    """
    samples = [s for s in samples if len(s)]
    if len(samples) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(META_BOOTSTRAP)
    for b in range(META_BOOTSTRAP):
        chosen = rng.integers(len(samples), size=len(samples))
        means[b] = np.mean([rng.choice(samples[i], size=len(samples[i])).mean() for i in chosen])
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def area_under_curve(losses: np.ndarray) -> float:
    """The area under a test-loss curve per evaluation: the mean of the evaluated losses.

    Each evaluation weighs the same, so with evaluations every k steps this is the
    trapezoid-free area divided by the number of evaluations; it rewards optimisers
    that get low early, not only at the end.

    >>> area_under_curve(np.array([3.0, 2.0, 1.0]))
    2.0
    """
    losses = np.asarray(losses, dtype=float)
    return float(losses.mean()) if losses.size else math.nan


def steps_to_reach(steps: np.ndarray, curve: np.ndarray, target: float) -> int | None:
    """The first evaluated step at which ``curve`` is at or below ``target``; None if never.

    >>> steps_to_reach(np.array([0, 10, 20]), np.array([2.0, 1.0, 0.5]), 1.0)
    10
    """
    hits = np.flatnonzero(np.asarray(curve, dtype=float) <= target)
    return int(np.asarray(steps)[hits[0]]) if hits.size else None


@dataclass(frozen=True)
class SpeedUp:
    """Steps the reference needs / steps this optimiser needs to reach its final loss.

    ``lower_bound`` is True when the reference never reaches the loss: the speed-up is
    then at least ``value`` (the reference's last step / this optimiser's steps).
    """

    value: float
    lower_bound: bool = False


def speed_up(
    steps: np.ndarray, curve: np.ndarray, reference_steps: np.ndarray, reference_curve: np.ndarray
) -> SpeedUp | None:
    """Speed-up of an optimiser over a reference, from their mean test-loss curves.

    The target is the optimiser's final mean loss ``curve[-1]``. Steps are the
    evaluated steps, so the answer has the resolution of the evaluation interval.
    None when undefined: an empty curve, or the optimiser reaches its own final loss
    at step 0 (it learned nothing).

    Example:
        >>> s = np.array([0, 10, 20, 30])
        >>> speed_up(s, np.array([2.0, 1.0, 0.6, 0.5]), s, np.array([2.0, 1.5, 1.0, 0.5]))
        SpeedUp(value=1.0, lower_bound=False)
    """
    curve = np.asarray(curve, dtype=float)
    if curve.size == 0 or not np.isfinite(curve[-1]) or len(reference_steps) == 0:
        return None
    target = float(curve[-1])
    own = steps_to_reach(steps, curve, target)
    if not own:
        return None
    reached = steps_to_reach(reference_steps, reference_curve, target)
    if reached is None:
        return SpeedUp(float(reference_steps[-1]) / own, lower_bound=True)
    return SpeedUp(reached / own)


def stability(final: np.ndarray, best: np.ndarray) -> float:
    """Mean over seeds of final loss / best loss: 1 is monotone progress, above 1 backsliding.

    >>> stability(np.array([1.0, 3.0]), np.array([1.0, 2.0]))
    1.25
    """
    ratio = np.asarray(final, dtype=float) / np.asarray(best, dtype=float)
    ratio = ratio[np.isfinite(ratio)]
    return float(ratio.mean()) if ratio.size else math.nan


def penalised_mean(finals: np.ndarray, worst: float) -> float:
    """Mean final loss with every diverged seed (nan/inf) counted as ``worst``.

    ``worst`` is the worst final loss any seed finished with on the task, so a seed
    that diverged counts as at least as bad as every seed that did not.

    >>> penalised_mean(np.array([1.0, np.nan]), worst=3.0)
    2.0
    """
    finals = np.asarray(finals, dtype=float)
    if finals.size == 0:
        return math.nan
    return float(np.where(np.isfinite(finals), finals, worst).mean())


def ranks(scores: np.ndarray, last: np.ndarray | None = None) -> np.ndarray:
    """Ranks 1..n by ascending score, ties averaged; rows flagged ``last`` rank after all others.

    A nan score ranks after every finite one (in its group).

    >>> ranks(np.array([0.3, 0.1, 0.3, 0.05]), last=np.array([False, False, False, True]))
    array([2.5, 1. , 2.5, 4. ])
    """
    scores = np.asarray(scores, dtype=float)
    scores = np.where(np.isnan(scores), np.inf, scores)
    last = np.zeros(scores.shape, bool) if last is None else np.asarray(last, bool)
    out = np.empty(scores.shape, float)
    first = ~last
    if first.any():
        out[first] = sps.rankdata(scores[first])
    if last.any():
        out[last] = sps.rankdata(scores[last]) + first.sum()
    return out


def min_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p-value the exact Wilcoxon signed-rank test can give with n pairs.

    All n differences with the same sign: p = 2 / 2**n. With n <= 5 it exceeds 0.05, so
    five seeds can never show a significant difference at that level.

    >>> min_wilcoxon_p(6)
    0.03125
    """
    return 1.0 if n <= 0 else min(1.0, 2.0 ** (1 - n))


def seeds_needed(alpha: float = ALPHA) -> int:
    """The fewest differing pairs with which the signed-rank test can reach p < alpha.

    >>> seeds_needed(0.05)
    6
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"invalid alpha: {alpha} (expected a level in (0, 1])")
    # min_wilcoxon_p(n) = 2**(1 - n) < alpha  <=>  n > 1 - log2(alpha)
    return math.floor(1 - math.log2(alpha)) + 1


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of optimiser A with optimiser B on one task.

    Attributes:
        n: pairs (seeds both optimisers ran).
        nonzero: pairs whose difference is not zero (the pairs the test uses).
        mean_difference: mean of A - B over pairs where both finished (nan if none).
        p_value: two-sided Wilcoxon signed-rank p (nan when the test cannot run).
        verdict: "better" / "worse" (A than B, lower loss is better) at the given alpha,
            "no difference (identical)", "not resolved with N seeds", or
            "cannot be resolved with N seeds (needs at least M that differ)".
    """

    n: int
    nonzero: int
    mean_difference: float
    p_value: float
    verdict: str


def paired_wilcoxon(a: np.ndarray, b: np.ndarray, *, alpha: float = ALPHA) -> PairedTest:
    """Wilcoxon signed-rank test of paired final losses ``a`` vs ``b`` (Wilcoxon, 1945).

    Pairs are seeds (equal seed index: same initialisation and batches). A diverged
    seed (nan or inf) is worse than every finished one: it enters as a value above
    every finite value, far enough that its pair's difference out-ranks every finite
    difference; a pair where both diverged is a tie. Zero differences are dropped
    (Wilcoxon's method). When the pairs left could never reach p < alpha, the verdict
    says so instead of running the test.

    Example:
        >>> paired_wilcoxon(np.arange(8.0), np.arange(8.0) + 1).verdict
        'better'
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    both = np.isfinite(a) & np.isfinite(b)
    mean_difference = float((a[both] - b[both]).mean()) if both.any() else math.nan
    big = _above_every_difference(np.concatenate([a, b]))
    d = np.where(np.isfinite(a), a, big) - np.where(np.isfinite(b), b, big)
    nonzero = int(np.count_nonzero(d))
    n = int(a.size)
    seeds = f"{n} seed" + ("" if n == 1 else "s")
    needed = seeds_needed(alpha)
    if n > 0 and nonzero == 0:
        return PairedTest(n, 0, mean_difference, 1.0, "no difference (identical)")
    if nonzero < needed:
        return PairedTest(
            n, nonzero, mean_difference, math.nan, f"cannot be resolved with {seeds} (needs at least {needed} that differ)"
        )
    p = float(sps.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    if p >= alpha:
        return PairedTest(n, nonzero, mean_difference, p, f"not resolved with {seeds}")
    # The direction is the side with the larger signed-rank sum.
    signed_ranks = sps.rankdata(np.abs(d[d != 0])) * np.sign(d[d != 0])
    return PairedTest(n, nonzero, mean_difference, p, "better" if signed_ranks.sum() < 0 else "worse")


def _above_every_difference(x: np.ndarray) -> float:
    """A stand-in for a diverged loss that out-ranks every finite paired difference.

    The test only uses the order of |d|. With M the largest finite magnitude, a value
    of 3*M + 1 gives |diverged - finished| >= 2*M + 1 > every finite |difference| <= 2*M.
    """
    finite = np.abs(x[np.isfinite(x)])
    return 3.0 * (finite.max() if finite.size else 0.0) + 1.0
