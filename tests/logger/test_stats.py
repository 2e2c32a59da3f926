"""Aggregate statistics: hand-computed estimators, stratified resampling, seeded intervals."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from jaxrl.logger import stats


def test_iqm_of_known_arrays():
    # 8 values: int(0.25 * 8) = 2 cut from each end -> mean(3, 4, 5, 6) = 4.5
    assert stats.iqm(np.arange(1.0, 9.0)) == pytest.approx(4.5)
    # two tasks: pooled 1,2,3,4,10,20,30,40 -> middle 3,4,10,20 -> 9.25
    scores = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])
    assert stats.iqm(scores) == pytest.approx(9.25)
    # an outlier does not move the IQM, it moves the mean
    spiked = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 1e6])
    assert stats.iqm(spiked) == pytest.approx(4.5)
    assert stats.mean(spiked) > 1e5


def test_iqm_matches_scipy_trim_mean():
    x = np.random.default_rng(3).normal(size=(13, 3))
    assert stats.iqm(x) == pytest.approx(scipy.stats.trim_mean(x, 0.25, axis=None))


def test_mean_median_optimality_gap_by_hand():
    scores = np.array([[0.5, 1.5], [0.1, 0.9]])  # task means 0.3, 1.2
    assert stats.mean(scores) == pytest.approx(0.75)
    assert stats.median(np.array([[0.0, 1.0, 5.0], [0.2, 1.0, 5.0]])) == pytest.approx(1.0)
    # 1 - mean(min(s, 1)) = 1 - (0.5 + 1 + 0.1 + 0.9) / 4
    assert stats.optimality_gap(scores) == pytest.approx(0.375)
    assert stats.optimality_gap(scores, gamma=2.0) == pytest.approx(2.0 - 0.75)


def test_aggregates_reduce_only_the_last_two_axes():
    batch = np.random.default_rng(0).random((5, 6, 3))
    for fn in (stats.iqm, stats.mean, stats.median, stats.optimality_gap):
        got = fn(batch)
        assert got.shape == (5,)
        np.testing.assert_allclose(got, [fn(b) for b in batch])


def test_interval_contains_point_and_is_seeded():
    scores = np.random.default_rng(1).normal(size=(10, 4))
    for name, fn in stats.AGGREGATES.items():
        est = stats.interval_estimate(scores, fn, reps=500, seed=7)
        assert est.low <= est.point <= est.high, name
        assert est.low < est.high, name
        assert stats.interval_estimate(scores, fn, reps=500, seed=7) == est
    other = stats.interval_estimate(scores, stats.iqm, reps=500, seed=8)
    assert other != stats.interval_estimate(scores, stats.iqm, reps=500, seed=7)


def test_interval_of_identical_scores_has_zero_width():
    est = stats.interval_estimate(np.full((5, 2), 0.3), stats.iqm, reps=100)
    assert est.low == est.point == est.high == pytest.approx(0.3)


def test_bootstrap_is_stratified_by_task():
    scores = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    for batch in stats.stratified_bootstrap(scores, reps=200, seed=0, max_elements=60):
        assert batch.shape[1:] == (3, 2) and batch.shape[0] <= 10
        assert np.isin(batch[:, :, 0], scores[:, 0]).all()  # task 0 only draws task 0's runs
        assert np.isin(batch[:, :, 1], scores[:, 1]).all()
    total = sum(len(b) for b in stats.stratified_bootstrap(scores, 205, 0, max_elements=60))
    assert total == 205


def test_memory_batching_does_not_change_the_resamples():
    scores = np.random.default_rng(2).random((4, 3))
    whole = np.concatenate(list(stats.stratified_bootstrap(scores, 300, seed=1)))
    pieces = list(stats.stratified_bootstrap(scores, 300, seed=1, max_elements=50))
    assert len(pieces) > 1
    np.testing.assert_array_equal(whole, np.concatenate(pieces))


def test_percentile_interval_covers_the_true_mean():
    """Coverage: the 95% interval of the mean holds the true mean in ~95% of experiments."""
    rng = np.random.default_rng(0)
    hits = 0
    trials = 200
    for t in range(trials):
        sample = rng.normal(loc=2.0, scale=1.0, size=(30, 1))
        est = stats.interval_estimate(sample, stats.mean, reps=400, seed=t)
        hits += est.low <= 2.0 <= est.high
    assert 0.85 <= hits / trials <= 0.99


def test_performance_profile_by_hand():
    scores = np.array([[0.2], [0.6], [1.0], [0.4]])
    np.testing.assert_allclose(stats.performance_profile(scores, [0.0, 0.5, 1.0]), [1, 0.5, 0])
    # two tasks weigh equally: task 0 has 1/2 above 0.5, task 1 has 2/2 -> 0.75
    two = np.array([[0.2, 0.9], [0.8, 0.7]])
    assert stats.performance_profile(two, [0.5]) == pytest.approx([0.75])
    est = stats.performance_profile_interval(two, np.linspace(0, 1, 11), reps=200)
    assert est.point.shape == est.low.shape == est.high.shape == (11,)
    assert np.all(est.low <= est.point) and np.all(est.point <= est.high)
    assert np.all(np.diff(est.point) <= 0)


def test_mean_interval_for_learning_curves():
    x = np.array([[np.nan, 1.0, 2.0], [np.nan, 3.0, 2.0], [np.nan, np.nan, 2.0]])
    mean, low, high = stats.mean_interval(x, reps=300, seed=0)
    assert np.isnan(mean[0]) and np.isnan(low[0])
    assert mean[1] == pytest.approx(2.0)
    assert low[1] <= 2.0 <= high[1] and low[1] >= 1.0 and high[1] <= 3.0
    assert mean[2] == low[2] == high[2] == pytest.approx(2.0)
    again = stats.mean_interval(x, reps=300, seed=0)
    np.testing.assert_array_equal(np.nan_to_num(low), np.nan_to_num(again[1]))


def test_bad_scores_are_errors():
    with pytest.raises(ValueError, match="finite"):
        stats.interval_estimate(np.array([1.0, np.nan]), stats.iqm)
    with pytest.raises(ValueError, match="runs, tasks"):
        stats.interval_estimate(np.zeros((0, 2)), stats.iqm)
    with pytest.raises(ValueError, match="ci"):
        stats.interval_estimate(np.ones(3), stats.iqm, ci=1.5)


def test_mean_difference_by_hand():
    """``[1, 2, 3]`` against ``[0, 0, 3, 5]``: means 2 and 2, sample variances 1 and
    18/3 = 6, so the difference is 0 with s.e. ``sqrt(1/3 + 6/4) = sqrt(11/6)``."""
    diff, se = stats.mean_difference([1.0, 2.0, 3.0], [0.0, 0.0, 3.0, 5.0])
    assert diff == 0.0
    np.testing.assert_allclose(se, np.sqrt(11 / 6))
    diff, _ = stats.mean_difference([4.0, 6.0], [1.0, 2.0])
    assert diff == 3.5
