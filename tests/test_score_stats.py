"""Aggregate statistics of per-seed scores against independent computations and a coverage bound."""

import numpy as np
import pytest
import scipy.stats

from pgjax import score_stats


def test_interquartile_mean_matches_scipy_trim_mean_and_a_hand_value():
    # 8 seeds: the lowest 2 and highest 2 are cut, the middle four averaged.
    assert score_stats.iqm([500.0, 10.0, 480.0, 490.0, 500.0, 20.0, 495.0, 500.0]) == (480 + 490 + 495 + 500) / 4
    rng = np.random.default_rng(0)
    for n in range(1, 14):
        scores = rng.normal(size=(3, n))
        np.testing.assert_allclose(score_stats.interquartile_mean(scores), scipy.stats.trim_mean(scores, 0.25, axis=1))
        np.testing.assert_allclose(score_stats.interquartile_mean(scores.T, axis=0),
                                   scipy.stats.trim_mean(scores, 0.25, axis=1))
    # NaN seeds (no finished episode) are dropped before the cut.
    assert score_stats.iqm([np.nan, 1.0, 2.0, 3.0, 4.0]) == 2.5


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    # 300 samples of 40 seeds from N(1, 2^2): the mean's 95% percentile interval should miss about 5% of the
    # time. Binomial(300, 0.05) lies in [5, 30] with probability > 0.999; the percentile bootstrap is a little
    # narrow at n = 40 (a miss rate of about 6.5% still stays in it with probability > 0.99). A 99% interval
    # would miss about 3 times, an 80% one about 60.
    rng = np.random.default_rng(1)
    misses = 0
    for trial in range(300):
        low, high = score_stats.bootstrap_interval(rng.normal(1.0, 2.0, size=40), np.mean, num_resamples=1000,
                                                   seed=trial)
        misses += not low <= 1.0 <= high
    assert 5 <= misses <= 30, misses


def test_bootstrap_interval_is_reproducible_and_brackets_the_statistic():
    scores = np.array([500.0, 500.0, 499.0, 210.0, 500.0, 480.0, np.nan, 495.0, 500.0, 350.0])
    a = score_stats.bootstrap_interval(scores, seed=3)
    assert a == score_stats.bootstrap_interval(scores, seed=3)
    assert a != score_stats.bootstrap_interval(scores, seed=4)
    assert a[0] <= score_stats.iqm(scores) <= a[1]
    # One resample's interval is that resample's statistic, recomputed here from the same generator.
    values = scores[~np.isnan(scores)]
    resample = values[np.random.default_rng(5).integers(0, values.size, size=(1, values.size))]
    expected = float(np.median(resample))
    assert score_stats.bootstrap_interval(scores, np.median, num_resamples=1, seed=5) == (expected, expected)
    for confidence in (95, 0.0, 1.0):  # (0, 1), open: 0 and 1 have no central interval
        with pytest.raises(ValueError, match="confidence must be in"):
            score_stats.bootstrap_interval(scores, confidence=confidence)
    with pytest.raises(ValueError, match="no value that is not NaN"):
        score_stats.bootstrap_interval([np.nan, np.nan])
    with pytest.raises(ValueError, match="scores is empty"):  # it blamed unfinished episodes
        score_stats.iqm([])


def test_probability_of_improvement_matches_the_pairwise_count():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 5, size=11).astype(float)  # small integers: many ties
    y = rng.integers(0, 5, size=7).astype(float)
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in x for b in y]
    assert score_stats.probability_of_improvement(x, y) == pytest.approx(np.mean(pairs))
    assert score_stats.probability_of_improvement(x, y) + score_stats.probability_of_improvement(y, x) == 1.0
    assert score_stats.probability_of_improvement(x, x) == 0.5
    assert score_stats.probability_of_improvement([3.0, 4.0], [1.0, 2.0, np.nan]) == 1.0
    # And scipy's Mann-Whitney U, its own computation of the same count.
    u = scipy.stats.mannwhitneyu(x, y).statistic
    assert score_stats.probability_of_improvement(x, y) == pytest.approx(u / (x.size * y.size))


def test_performance_profile_counts_seeds_at_or_above_each_threshold():
    scores = [500.0, 475.0, np.nan, 120.0]
    profile = score_stats.performance_profile(scores, [0.0, 120.0, 121.0, 475.0, 500.0, 501.0])
    np.testing.assert_array_equal(profile, [0.75, 0.75, 0.5, 0.5, 0.25, 0.0])  # the NaN seed reaches nothing
    with pytest.raises(ValueError, match="1-D"):
        score_stats.performance_profile(np.ones((2, 2)), [0.0])
    with pytest.raises(ValueError, match="at least one seed"):
        score_stats.performance_profile([], [0.0])
    np.testing.assert_array_equal(score_stats.performance_profile([475.0], [474.0, 476.0]), [1.0, 0.0])  # one seed


def test_bootstrap_interval_is_the_central_quantiles_of_the_resampled_statistic():
    """The 95% interval is the 2.5% and 97.5% quantiles of the resampled statistic, recomputed here from the same
    generator draws (quantiles at 1.25% / 98.75%, a doubly halved tail, give a wider interval)."""
    scores = np.random.default_rng(9).normal(10.0, 3.0, size=12)
    rng = np.random.default_rng(7)
    resampled = np.mean(scores[rng.integers(0, scores.size, size=(500, scores.size))], axis=-1)
    got = score_stats.bootstrap_interval(scores, np.mean, num_resamples=500, seed=7)
    assert got == pytest.approx(tuple(np.quantile(resampled, [0.025, 0.975])), rel=1e-12)
    got_80 = score_stats.bootstrap_interval(scores, np.mean, confidence=0.8, num_resamples=500, seed=7)
    assert got_80 == pytest.approx(tuple(np.quantile(resampled, [0.1, 0.9])), rel=1e-12)


def test_infinite_scores_are_kept_as_extremes_and_never_give_nan():
    """A diverged seed's +inf is an order statistic like any other: cut by the IQM when it is in the top quarter, and
    an interval's upper bound when resamples carry it into the middle. Interpolating between two equal infinite
    quantiles gave NaN (inf - inf) before; +inf and -inf together have no mean, and are refused."""
    one_inf = np.array([500.0] * 6 + [np.inf, 100.0])
    assert score_stats.iqm(one_inf) == 500.0
    low, high = score_stats.bootstrap_interval(one_inf)  # (400.0, nan) before
    assert np.isfinite(low) and low <= 500.0 and high == np.inf
    assert score_stats.bootstrap_interval(-one_inf)[0] == -np.inf
    half_inf = np.array([500.0] * 4 + [np.inf] * 4)
    assert score_stats.iqm(half_inf) == np.inf
    assert score_stats.bootstrap_interval(half_inf) == (500.0, np.inf)
    assert score_stats.probability_of_improvement(half_inf, [1e308]) == 0.5  # the four inf seeds beat it
    both = [1.0, np.inf, -np.inf]
    for statistic in (score_stats.iqm, score_stats.bootstrap_interval,
                      lambda s: score_stats.probability_of_improvement(s, [0.0])):
        with pytest.raises(ValueError, match=r"both \+inf and -inf \(1 and 1 seeds\)"):
            statistic(both)
    # A quantile between an infinite and a finite order statistic is the infinite one (NaN before: -inf + inf).
    ten = np.arange(10.0)
    for resampled, expected in ((np.r_[-np.inf, ten], (-np.inf, 8.5)), (np.r_[ten, np.inf], (0.5, np.inf))):
        got = score_stats.bootstrap_interval([1.0, 2.0], lambda s, axis, r=resampled: r, confidence=0.9,
                                             num_resamples=11)
        assert got == pytest.approx(expected, rel=1e-12), (got, expected)
    with pytest.raises(ValueError, match="statistic returned NaN"):
        score_stats.bootstrap_interval([1.0, 2.0], lambda s, axis: np.full(s.shape[0], np.nan))
    with pytest.raises(ValueError, match="statistic returned NaN"):  # on one resample of many
        score_stats.bootstrap_interval([1.0, 2.0], lambda s, axis: np.r_[np.nan, np.ones(s.shape[0] - 1)])
