"""Aggregate statistics of per-seed scores: robust to a few stragglers, with bootstrap intervals.

A seed sweep's final returns are rarely normal: most seeds solve the task and a few are left behind. The mean
moves with those few and the median ignores everything but the middle seed. These follow Agarwal et al. (2021),
"Deep RL at the Edge of the Statistical Precipice":

    IQM(x)        = mean of the middle 50% of the sorted scores (n // 4 cut from each end)
    P(X > Y)      = 1/(n m) sum_i sum_j [x_i > y_j] + 1/2 [x_i = y_j]      (probability of improvement)
    profile(tau)  = 1/n sum_i [x_i >= tau]                                  (fraction of seeds reaching tau)

and a percentile bootstrap over seeds for the interval of a statistic such as the IQM. Host-side NumPy: these
summarise finished runs (`runs.summarize_final_returns`, `experiments/compare.py`), they are not on the training
path. NaN scores (a seed without a finished episode) are dropped first; the profile counts them as reaching
nothing. Infinite scores are kept as the extremes they are (an IQM or an interval bound can be +-inf), but not both
signs at once: the mean of +inf and -inf is undefined, so that is a ValueError rather than a NaN.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from pgjax.validation import check_int


def _scores(scores) -> np.ndarray:
    """The non-NaN scores of a 1-D array, as float64; ValueError if there are none, or if +inf and -inf are both
    among them."""
    values = np.asarray(scores, dtype=float)
    if values.ndim != 1:
        raise ValueError(f"scores must be 1-D [seeds]; got shape {values.shape}.")
    if values.size == 0:
        raise ValueError("scores is empty: give one score per seed.")
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise ValueError("scores has no value that is not NaN: no seed finished an episode.")
    if np.isposinf(values).any() and np.isneginf(values).any():
        raise ValueError(f"scores holds both +inf and -inf ({int(np.isposinf(values).sum())} and "
                         f"{int(np.isneginf(values).sum())} seeds): their mean is undefined. Check the runs whose "
                         "returns overflowed, or drop them.")
    return values


def interquartile_mean(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """IQM over `axis`: the mean of the scores left once the lowest and highest n // 4 are cut (n scores along
    `axis`; equal to `scipy.stats.trim_mean(scores, 0.25, axis)`). [..., n] -> [...]. No NaN handling: see
    `iqm`."""
    values = np.sort(np.asarray(scores, dtype=float), axis=axis)
    n = values.shape[axis]
    cut = n // 4
    return np.take(values, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def iqm(scores) -> float:
    """The interquartile mean of one run's per-seed scores [seeds] (NaN dropped)."""
    return float(interquartile_mean(_scores(scores)))


def bootstrap_interval(
    scores,
    statistic: Callable[..., np.ndarray] = interquartile_mean,
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over seeds.

    scores [seeds] (NaN dropped) is resampled with replacement `num_resamples` times; `statistic(samples,
    axis=-1)` maps [num_resamples, n] -> [num_resamples] (`interquartile_mean`, `np.mean`, `np.median` all do).
    Returns the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of the resampled statistic. Deterministic
    for a given `seed`.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}.")
    check_int("bootstrap_interval: num_resamples", num_resamples)
    values = _scores(scores)
    rng = np.random.default_rng(seed)
    samples = values[rng.integers(0, values.size, size=(num_resamples, values.size))]
    resampled = np.asarray(statistic(samples, axis=-1), dtype=float)
    tail = (1 - confidence) / 2
    if np.isnan(resampled).any():
        raise ValueError("bootstrap_interval: the statistic returned NaN on a resample of the scores; give a "
                         "statistic defined on every resample.")
    # Interpolating towards an infinite order statistic gives that infinity, but NumPy's arithmetic (inf - inf,
    # inf * 0) gives NaN: take the infinite neighbour itself (+inf and -inf together were refused above).
    below, above = (np.quantile(resampled, [tail, 1 - tail], method=m) for m in ("lower", "higher"))
    with np.errstate(invalid="ignore"):
        linear = np.quantile(resampled, [tail, 1 - tail])
    low, high = np.where(np.isinf(below), below, np.where(np.isinf(above), above, linear))
    return float(low), float(high)


def probability_of_improvement(x, y) -> float:
    """P(X > Y) for a seed X of one run and a seed Y of another (ties count half): the Mann-Whitney U statistic
    over all n x m pairs, divided by n m. 0.5 when the runs are indistinguishable; x [n], y [m], NaN dropped."""
    x, y = np.sort(_scores(x)), np.sort(_scores(y))
    # For each x_i, how many y_j lie below it and how many equal it: two binary searches, O((n + m) log m).
    below = np.searchsorted(y, x, side="left")
    not_above = np.searchsorted(y, x, side="right")
    return float(np.sum(below + 0.5 * (not_above - below)) / (x.size * y.size))


def performance_profile(scores, thresholds) -> np.ndarray:
    """Fraction of seeds whose score is >= each threshold: scores [seeds] (NaN dropped: counted as not reaching
    any threshold), thresholds [T] -> [T]."""
    values = np.asarray(scores, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"scores must be 1-D [seeds] with at least one seed; got shape {values.shape}.")
    thresholds = np.asarray(thresholds, dtype=float)
    finite = np.sort(values[~np.isnan(values)])
    reached = finite.size - np.searchsorted(finite, thresholds, side="left")
    return reached / values.size
