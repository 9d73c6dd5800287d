"""Uncertainty for eval metrics: 95% intervals, pass@k, and paired comparisons of two runs.

    intervals = metric_intervals(task, scores, samples)          # {metric: {low, high, n, method}}
    diff = paired_bootstrap_metrics(task, scores_a, scores_b, samples)   # {metric: {delta, low, ...}}

Which interval a metric gets (`metric_intervals`):

- `wilson`: the metric is the plain mean of a per-sample 0/1 score field (GSM8K exact_match,
  MATH-500 exact_match_flex, IFEval prompt-level accuracy). Detected, not declared: the metric must
  equal that field's mean on the full set *and* on a few resamples of the samples, which rules out
  a macro average or a per-subject breakdown that happens to equal the micro mean. The field named
  like the metric is tried first.
- `bootstrap`: anything else (per-subject macro averages, IFEval instruction-level accuracy, means
  of graded scores): samples are resampled with replacement and `task.aggregate` is re-run on each
  resample, so the interval follows exactly how the task computes the metric, with the sample as
  the resampling unit (all instructions of one IFEval prompt move together).
- no interval: counts (`num_samples`, `num_*`, `*_count`) and non-numeric or non-finite values.

Bootstrap intervals are percentile intervals; every random draw comes from
`numpy.random.default_rng(seed)`, so a seed fixes the result. With few samples (tens) bootstrap
intervals are too narrow; the Wilson interval stays honest down to n = 1.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Callable, Iterator, Sequence

import numpy as np

Z95 = 1.959964  # the 97.5% quantile of the standard normal: a two-sided 95% interval
_SAME = 1e-9  # float tolerance when checking that a metric is a field's mean
_DETECT_RESAMPLES = 3
_MAX_BATCH_CELLS = 2_000_000  # indices drawn per batch (16 MB of int64)


# -- intervals for one quantity ----------------------------------------------------------------


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion `successes / n`.

    n = 0 gives (0.0, 1.0): nothing is known, and unlike NaN it stays valid JSON in summary files.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def _index_batches(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """`n_boot` resamples of range(n) with replacement, as 2-D batches (one resample a row).
    Batch size depends only on n, so a seed gives the same resamples on every path."""
    rng = np.random.default_rng(seed)
    per_batch = max(1, min(n_boot, _MAX_BATCH_CELLS // max(n, 1)))
    done = 0
    while done < n_boot:
        rows = min(per_batch, n_boot - done)
        yield rng.integers(0, n, size=(rows, n))
        done += rows


def _resamples(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    for batch in _index_batches(n, n_boot, seed):
        yield from batch


def _check_boot(n_boot: int, alpha: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _percentiles(draws: Sequence[float] | np.ndarray, alpha: float) -> tuple[float, float]:
    low, high = np.quantile(np.asarray(draws, dtype=float), [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_interval(values: Sequence[float] | np.ndarray, stat: Callable[[np.ndarray], float] = np.mean,
                       n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat(values)` (resampling values with replacement)."""
    _check_boot(n_boot, alpha)
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap_interval needs a non-empty 1-D sequence, got shape {x.shape}")
    if stat is np.mean:  # the common case, vectorised over a batch of resamples
        draws = np.concatenate([x[b].mean(axis=1) for b in _index_batches(x.size, n_boot, seed)])
    else:
        draws = np.array([stat(x[idx]) for idx in _resamples(x.size, n_boot, seed)], dtype=float)
    return _percentiles(draws, alpha)


# -- pass@k ------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem from n samples of which c pass (Chen et al. 2021, "Evaluating
    Large Language Models Trained on Code"): 1 - C(n-c, k) / C(n, k), computed as the stable
    product 1 - prod_{i=n-c+1}^{n} (1 - k/i) instead of with huge binomials."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset contains a passing sample
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


# -- which metrics get intervals, and how ------------------------------------------------------


def is_count_metric(name: str) -> bool:
    """Sizes, not estimates: they get no interval."""
    leaf = name.rsplit("/", 1)[-1]
    return (leaf in ("n", "count", "num_samples", "judged", "judge_failures", "unavailable_instructions",
                     "avg_length")
            or leaf.startswith(("num_", "n_")) or leaf.endswith("_count"))


def interval_metrics(metrics: dict[str, Any]) -> list[str]:
    """The metrics that are finite numbers and not counts, in the task's order."""
    out = []
    for name, value in metrics.items():
        numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        if numeric and math.isfinite(float(value)) and not is_count_metric(name):
            out.append(name)
    return out


def binary_fields(scores: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Score fields that are 0/1 (or bool) in every sample, as float arrays."""
    if not scores:
        return {}
    out = {}
    for key in scores[0]:
        values = [s.get(key) for s in scores]
        if all(isinstance(v, (bool, int, float, np.integer, np.floating)) and v in (0, 1) for v in values):
            out[key] = np.asarray(values, dtype=float)
    return out


def _aggregate(task: Any, scores: Sequence[dict], samples: Sequence[Any], idx: np.ndarray) -> dict[str, Any]:
    ids = idx.tolist()  # plain ints: indexing lists with them is several times faster
    return task.aggregate([scores[i] for i in ids], [samples[i] for i in ids])


def _mean_field_of(metrics: Sequence[str], full: dict[str, Any], fields: dict[str, np.ndarray],
                   checks: list[tuple[np.ndarray, dict[str, Any]]]) -> dict[str, str]:
    """metric -> the 0/1 field it is the plain mean of, where the identity holds on the full set and
    on every check resample."""
    found = {}
    for metric in metrics:
        order = ([metric] if metric in fields else []) + [k for k in fields if k != metric]
        for key in order:
            x = fields[key]
            same = abs(x.mean() - float(full[metric])) <= _SAME and all(
                metric in m and abs(x[idx].mean() - float(m[metric])) <= _SAME for idx, m in checks)
            if same:
                found[metric] = key
                break
    return found


def _check_samples(scores: Sequence[dict], samples: Sequence[Any]) -> None:
    if len(scores) != len(samples):
        raise ValueError(f"{len(scores)} scores for {len(samples)} samples")


def metric_intervals(task: Any, scores: Sequence[dict[str, Any]], samples: Sequence[Any], n_boot: int = 1000,
                     seed: int = 0, alpha: float = 0.05) -> dict[str, dict[str, Any]]:
    """A (1 - alpha) interval for every metric `task.aggregate(scores, samples)` reports.

    Returns {metric: {"low", "high", "n", "method"}} ("wilson" or "bootstrap"; bootstrap entries add
    "n_boot", the resamples in which the metric existed: a small subject can be absent from some).
    `n` is the number of samples (the resampling unit). Counts and non-numeric metrics are left
    out; no samples gives {}.
    """
    _check_boot(n_boot, alpha)
    _check_samples(scores, samples)
    n = len(scores)
    if n == 0:
        return {}
    full = task.aggregate(list(scores), list(samples))
    wanted = interval_metrics(full)
    detect_rng = np.random.default_rng((seed, 1))  # apart from the bootstrap's own stream
    checks = [(idx, _aggregate(task, scores, samples, idx))
              for idx in detect_rng.integers(0, n, size=(_DETECT_RESAMPLES, n))]
    fields = binary_fields(scores)
    wilson = _mean_field_of(wanted, full, fields, checks)
    z = Z95 if alpha == 0.05 else NormalDist().inv_cdf(1 - alpha / 2)
    out: dict[str, dict[str, Any]] = {}
    for metric, key in wilson.items():
        low, high = wilson_interval(float(fields[key].sum()), n, z)
        out[metric] = {"low": low, "high": high, "n": n, "method": "wilson"}
    rest = [m for m in wanted if m not in wilson]
    if rest:
        draws: dict[str, list[float]] = {m: [] for m in rest}
        for idx in _resamples(n, n_boot, seed):
            m = _aggregate(task, scores, samples, idx)
            for metric in rest:
                if metric in m and math.isfinite(float(m[metric])):
                    draws[metric].append(float(m[metric]))
        for metric in rest:
            if draws[metric]:
                low, high = _percentiles(draws[metric], alpha)
                out[metric] = {"low": low, "high": high, "n": n, "method": "bootstrap",
                               "n_boot": len(draws[metric])}
    return {m: out[m] for m in wanted if m in out}


# -- paired comparisons ------------------------------------------------------------------------


def _delta_summary(delta: float, draws: np.ndarray, alpha: float) -> dict[str, Any]:
    """Interval, two-sided bootstrap p-value and significance of an observed delta.

    p = 2 * min(share of resampled deltas <= 0, share >= 0), each share with the +1 correction
    ((count + 1) / (n_boot + 1)) so a finite bootstrap never claims p = 0; capped at 1. It agrees
    with the interval: p < alpha about when the interval excludes 0."""
    draws = np.where(np.abs(draws) < _SAME, 0.0, draws)  # float noise of re-summed means is a tie, not a sign
    low, high = _percentiles(draws, alpha)
    b = draws.size
    below = (np.count_nonzero(draws <= 0) + 1) / (b + 1)
    above = (np.count_nonzero(draws >= 0) + 1) / (b + 1)
    delta = 0.0 if abs(delta) < _SAME else float(delta)
    return {"delta": delta, "low": low, "high": high, "p_value": float(min(1.0, 2 * min(below, above))),
            "significant": bool(low > 0 or high < 0)}


def paired_bootstrap_delta(a_values: Sequence[float] | np.ndarray, b_values: Sequence[float] | np.ndarray,
                           n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """mean(b) - mean(a) over paired values (the same samples scored in two runs), with a paired
    percentile bootstrap: {"delta", "low", "high", "p_value", "significant", "n"}."""
    _check_boot(n_boot, alpha)
    a, b = np.asarray(a_values, dtype=float), np.asarray(b_values, dtype=float)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired values need two non-empty 1-D sequences of one length, got {a.shape} and {b.shape}")
    d = b - a
    draws = np.concatenate([d[idx].mean(axis=1) for idx in _index_batches(d.size, n_boot, seed)])
    return {**_delta_summary(float(d.mean()), draws, alpha), "n": int(d.size)}


def paired_bootstrap_metrics(task: Any, scores_a: Sequence[dict[str, Any]], scores_b: Sequence[dict[str, Any]],
                             samples: Sequence[Any], n_boot: int = 2000, seed: int = 0,
                             alpha: float = 0.05) -> dict[str, dict[str, Any]]:
    """B - A for every metric of `task.aggregate`, on samples paired by position (`scores_a[i]` and
    `scores_b[i]` grade `samples[i]`). Each resample draws sample indices once and re-aggregates
    both runs on them. Returns {metric: {"a", "b", "delta", "low", "high", "p_value",
    "significant", "n"}} for the interval-able metrics both runs report."""
    _check_boot(n_boot, alpha)
    _check_samples(scores_a, samples)
    _check_samples(scores_b, samples)
    n = len(samples)
    if n == 0:
        return {}
    full_a = task.aggregate(list(scores_a), list(samples))
    full_b = task.aggregate(list(scores_b), list(samples))
    wanted = [m for m in interval_metrics(full_a) if m in interval_metrics(full_b)]
    draws: dict[str, list[float]] = {m: [] for m in wanted}
    for idx in _resamples(n, n_boot, seed):
        ma, mb = _aggregate(task, scores_a, samples, idx), _aggregate(task, scores_b, samples, idx)
        for metric in wanted:
            if metric in ma and metric in mb:
                draws[metric].append(float(mb[metric]) - float(ma[metric]))
    out = {}
    for metric in wanted:
        a, b = float(full_a[metric]), float(full_b[metric])
        if draws[metric]:
            out[metric] = {"a": a, "b": b, **_delta_summary(b - a, np.asarray(draws[metric]), alpha), "n": n}
    return out
