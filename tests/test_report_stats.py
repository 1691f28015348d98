"""Report statistics on constructed numbers with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from l2lbench.report import stats


def test_bootstrap_interval_contains_the_true_mean():
    sample = np.random.default_rng(1).normal(5.0, 1.0, size=20)
    low, high = stats.bootstrap_ci(sample, seed=0)
    assert low < 5.0 < high
    assert low < sample.mean() < high


def test_bootstrap_intervals_cover_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    hits = sum(low < 1.0 < high for low, high in (stats.bootstrap_ci(rng.normal(1.0, 0.5, 10), seed=0) for _ in range(60)))
    assert hits >= 51  # 85%: BCa undercovers a little with 10 values, never badly


def test_bootstrap_is_reproducible_and_handles_degenerate_samples():
    x = np.array([0.3, 0.1, 0.7, 0.4, 0.2])
    assert stats.bootstrap_ci(x, seed=3) == stats.bootstrap_ci(x, seed=3)
    assert stats.bootstrap_ci(x, seed=3) != stats.bootstrap_ci(x, seed=4)
    assert all(math.isnan(v) for v in stats.bootstrap_ci(np.array([2.0]), seed=0))
    assert stats.bootstrap_ci(np.array([2.0, 2.0, 2.0]), seed=0) == (2.0, 2.0)
    low, high = stats.bootstrap_ci(np.array([1.0, 2.0]), seed=0)
    assert 1.0 <= low <= high <= 2.0


def test_mean_ci_ignores_diverged_values_and_has_no_interval_for_one_seed():
    est = stats.mean_ci(np.array([1.0, np.nan, 3.0, np.inf]), seed=0)
    assert est.mean == 2.0 and est.n == 2 and est.low <= 2.0 <= est.high
    one = stats.mean_ci(np.array([0.25]), seed=0)
    assert one.mean == 0.25 and one.n == 1 and math.isnan(one.low) and math.isnan(one.high)
    assert stats.mean_ci(np.array([np.nan]), seed=0).n == 0


def test_bootstrap_band_brackets_the_mean_curve():
    curves = np.array([[3.0, 2.0, 1.0], [3.0, 2.2, 1.4], [3.0, 1.8, 0.9], [3.0, 2.1, 1.1]])
    low, high = stats.bootstrap_band(curves, seed=0)
    mean = curves.mean(axis=0)
    assert low.shape == high.shape == (3,)
    assert np.all(low <= mean + 1e-12) and np.all(mean <= high + 1e-12)
    assert low[0] == high[0] == 3.0  # every seed starts at 3: no uncertainty
    assert np.isnan(stats.bootstrap_band(curves[:1], seed=0)[0]).all()


def test_area_under_curve_is_the_mean_loss_over_evaluations():
    assert stats.area_under_curve(np.array([2.0, 1.0, 0.5, 0.5])) == pytest.approx(1.0)
    assert math.isnan(stats.area_under_curve(np.array([])))


def test_steps_to_reach():
    steps, curve = np.array([0, 10, 20, 30]), np.array([2.0, 1.1, 0.6, 0.5])
    assert stats.steps_to_reach(steps, curve, 0.6) == 20
    assert stats.steps_to_reach(steps, curve, 5.0) == 0
    assert stats.steps_to_reach(steps, curve, 0.4) is None


def test_speed_up_by_hand():
    steps = np.array([0, 10, 20, 30])
    reference = np.array([2.0, 1.1, 0.6, 0.5])
    # sgd ends at 0.8 at step 30; the reference is below 0.8 first at step 20: 20 / 30.
    assert stats.speed_up(steps, np.array([2.0, 1.5, 1.0, 0.8]), steps, reference) == stats.SpeedUp(20 / 30)
    # Ends at 0.45, first reached at step 20; the reference never gets there in 30 steps.
    fast = stats.speed_up(steps, np.array([2.0, 0.5, 0.4, 0.45]), steps, reference)
    assert fast == stats.SpeedUp(30 / 20, lower_bound=True)
    # The reference against itself.
    assert stats.speed_up(steps, reference, steps, reference) == stats.SpeedUp(1.0)


def test_speed_up_is_undefined_when_nothing_was_learned():
    steps = np.array([0, 10])
    assert stats.speed_up(steps, np.array([1.0, 2.0]), steps, np.array([1.0, 0.5])) is None
    assert stats.speed_up(steps[:0], np.array([]), steps, np.array([1.0, 0.5])) is None


def test_stability_and_penalised_mean():
    assert stats.stability(np.array([0.35, 0.55]), np.array([0.3, 0.5])) == pytest.approx((0.35 / 0.3 + 1.1) / 2)
    assert stats.penalised_mean(np.array([0.3, np.nan, 0.3]), worst=0.8) == pytest.approx(1.4 / 3)
    assert math.isnan(stats.penalised_mean(np.array([]), worst=1.0))


@pytest.mark.parametrize(
    "scores, last, expected",
    [
        ([0.5, 0.2, 0.9], None, [2, 1, 3]),
        ([0.5, 0.5, 0.9], None, [1.5, 1.5, 3]),
        ([0.5, 0.1, 0.9], [False, True, False], [1, 3, 2]),  # diverged-majority ranks last
        ([np.nan, 0.1, 0.2, 0.05], [True, False, False, True], [4, 1, 2, 3]),
        ([np.nan, 1.0], None, [2, 1]),
    ],
)
def test_ranks(scores, last, expected):
    np.testing.assert_array_equal(stats.ranks(np.array(scores), None if last is None else np.array(last)), expected)


def test_smallest_possible_wilcoxon_p_and_the_seeds_it_needs():
    assert stats.min_wilcoxon_p(5) == 0.0625 and stats.min_wilcoxon_p(6) == 0.03125
    assert stats.seeds_needed(0.05) == 6 and stats.seeds_needed(0.0625) == 6 and stats.seeds_needed(0.01) == 8
    with pytest.raises(ValueError, match="invalid alpha: 0"):
        stats.seeds_needed(0)


def test_wilcoxon_finds_a_large_consistent_difference():
    b = 1.0 + 0.01 * np.arange(8)
    test = stats.paired_wilcoxon(b - 0.5, b)
    assert test.verdict == "better" and test.p_value == pytest.approx(2 / 2**8)
    assert test.n == 8 and test.mean_difference == pytest.approx(-0.5)
    assert stats.paired_wilcoxon(b + 0.5, b).verdict == "worse"


def test_wilcoxon_does_not_find_a_difference_in_noise():
    # Differences of alternating sign, no direction: signed-rank sums 16 vs 20.
    b = np.random.default_rng(0).normal(1.0, 0.1, 8)
    noise = np.array([0.01, -0.02, 0.03, -0.04, 0.05, -0.06, 0.07, -0.08])
    test = stats.paired_wilcoxon(b + noise, b)
    assert test.p_value > 0.5 and test.verdict == "not resolved with 8 seeds"


def test_wilcoxon_with_identical_results_or_too_few_seeds():
    x = np.array([0.5, 0.4, 0.3])
    assert stats.paired_wilcoxon(x, x).verdict == "no difference (identical)"
    assert stats.paired_wilcoxon(x, x).p_value == 1.0
    few = stats.paired_wilcoxon(np.zeros(5), np.ones(5))
    assert math.isnan(few.p_value) and few.verdict == "cannot be resolved with 5 seeds (needs at least 6 that differ)"
    # Six seeds, one tie: five pairs differ, which can never reach p < 0.05 either.
    tied = stats.paired_wilcoxon(np.array([0, 0, 0, 0, 0, 1.0]), np.ones(6))
    assert tied.nonzero == 5 and tied.verdict.startswith("cannot be resolved with 6 seeds")
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired_wilcoxon(np.zeros(3), np.zeros(4))


def test_a_diverged_seed_is_worse_than_any_finished_one():
    finished = np.array([5.0, 0.1, 9.0, 0.2, 7.0, 0.3, 8.0, 0.4])
    test = stats.paired_wilcoxon(np.full(8, np.nan), finished)
    assert test.verdict == "worse" and test.p_value == pytest.approx(2 / 2**8) and math.isnan(test.mean_difference)
    # Seeds where both diverged are ties; a diverged pair out-ranks any finite difference.
    a = np.array([np.nan, np.nan, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    b = np.array([np.nan, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2])
    test = stats.paired_wilcoxon(a, b)
    # One large positive rank (8) against seven small negative ones (28): not resolved.
    assert test.nonzero == 8 and test.verdict == "not resolved with 9 seeds"
    assert test.mean_difference == pytest.approx(-0.1)
