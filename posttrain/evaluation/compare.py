"""Compare two evaluation runs: per task and metric, A, B, B - A and a paired-bootstrap 95% interval.

    posttrain eval compare runs/eval/sft runs/eval/dpo          # prints the table
    compare_runs(Path("runs/eval/sft"), Path("runs/eval/dpo"))  # the same as a dict

Both directories are `posttrain eval` outputs (`<task>.jsonl` rows, see `results.py`). Rows are
paired by sample id over the ids present in both runs (how many were not is reported), and every
metric is recomputed from the paired rows only, so A and B are measured on the same samples: they
can differ from `summary.json` when a run has samples the other lacks.

Recomputing needs the task's own `aggregate`: a registered name (`gsm8k`, `math500`, ...) gives it;
a task whose rows carry `correct` and `score` is a `verifiable:NAME` set; anything else falls back
to the mean of each numeric per-sample score field, and the output says so. Aggregates that read
`sample.meta` (MATH's per-subject macro average) get it from the rows' `meta` when stored, else
from the task's default local data matched by id and ground truth, else the fallback.

Run directories are only read: a torn last line (a run still writing) is skipped, not truncated.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.config import field
from posttrain.evaluation.results import write_json_atomic
from posttrain.evaluation.stats import paired_bootstrap_metrics
from posttrain.evaluation.tasks import TASKS, Sample, get_task

VERIFIABLE_PREFIX = "verifiable:"


@dataclass
class CompareConfig:
    run_a: str = field(dataclasses.MISSING, "the baseline eval output directory (A)")
    run_b: str = field(dataclasses.MISSING, "the eval output directory compared with it (B); deltas are B - A")
    tasks: list[str] = field([], "tasks to compare (default: every task with results in both runs)")
    output: str = field("", "directory for compare.json and compare.md (default: print only)")
    n_boot: int = field(2000, "paired bootstrap resamples")
    seed: int = field(0, "bootstrap seed (a seed fixes every interval)")
    breakdowns: bool = field(False, "also list per-subject metrics (e.g. exact_match/algebra) in the table")

    def validate(self):
        if not self.run_a or not self.run_b:
            raise ValueError("compare needs two run directories: run_a and run_b")
        if self.n_boot < 1:
            raise ValueError(f"n_boot must be >= 1, got {self.n_boot}")


# -- reading a run -------------------------------------------------------------------------------


def read_run_rows(path: Path) -> dict[str, dict]:
    """Rows of `<task>.jsonl` by id, without modifying the file (unlike `results.read_rows`, which
    repairs a torn line for resuming): a torn last line is skipped, any other bad line is an error."""
    lines = Path(path).read_bytes().split(b"\n")
    rows: dict[str, dict] = {}
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("scores"), dict):
                raise ValueError("not a result row")
        except ValueError:
            if lineno == len(lines):  # no newline after it: being written, or the writer died
                break
            raise ValueError(f"{path}:{lineno}: corrupt result row (needs 'id' and a 'scores' mapping)") from None
        rows[str(row["id"])] = row
    return rows


def run_tasks(run: Path) -> list[str]:
    return sorted(p.name[: -len(".jsonl")] for p in run.glob("*.jsonl"))


def _check_run(run: Path) -> None:
    if not run.is_dir():
        raise ValueError(f"{run}: not a directory (give a `posttrain eval` output directory)")
    if not run_tasks(run):
        raise ValueError(f"{run}: no <task>.jsonl result files (is it a `posttrain eval` output directory?)")


def _model(run: Path) -> str | None:
    try:
        return json.loads((run / "summary.json").read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError, AttributeError):
        return None


def _file_name(requested: str) -> str:
    """The result file a task name writes (`<task.name>.jsonl`; `verifiable:NAME` stores as NAME)."""
    key = requested.strip()
    if key.lower() in TASKS or key.lower().startswith(VERIFIABLE_PREFIX):
        return get_task(key).name
    return key


# -- the task that recomputes the metrics --------------------------------------------------------


@dataclass
class FieldMeans:
    """Stand-in for a task we do not know: the mean of each numeric per-sample score field."""

    name: str
    fields: list[str]

    @property
    def primary_metric(self) -> str:
        return self.fields[0] if self.fields else ""

    def aggregate(self, scores: list[dict[str, Any]], samples: list[Sample]) -> dict[str, float]:
        return {k: sum(float(s[k]) for s in scores) / len(scores) for k in self.fields} if scores else {}


def _numeric_fields(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    return [k for k in rows[0]["scores"] if all(isinstance(r["scores"].get(k), (int, float)) for r in rows)]


def resolve_task(file_name: str, requested: str | None, rows: list[dict]) -> tuple[Any | None, str]:
    """(task object or None, where it came from) for the rows of `<file_name>.jsonl`."""
    if requested and requested.strip().lower().startswith(VERIFIABLE_PREFIX):
        return get_task(requested), "registry"
    if file_name.lower() in TASKS:
        return get_task(file_name), "registry"
    if rows and all({"correct", "score"} <= set(r["scores"]) for r in rows):
        return get_task(VERIFIABLE_PREFIX + file_name), "verifiable (detected from its score fields)"
    return None, "fallback"


def _canonical(value: Any) -> str:
    # stored ground truths went through JSON (tuples became lists): compare them the same way
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _same_truth(a: Any, b: Any) -> bool:
    return _canonical(a) == _canonical(b)


def _local_samples(task: Any) -> dict[str, Sample]:
    """The task's samples from its default data when that is a local file or directory (never the
    network: an `hf:` default is not loaded here)."""
    default = getattr(task, "default_path", None)
    if not callable(default):
        return {}
    path = str(default())
    if path.startswith("hf:") or not Path(path).exists():
        return {}
    try:
        return {s.id: s for s in task.load(path)}
    except (ValueError, OSError):
        return {}


def _works(task: Any, scores: list[list[dict]], samples: list[Sample]) -> str | None:
    """None if `task.aggregate` runs on these samples for every score list, else why not."""
    try:
        for s in scores:
            task.aggregate(s, samples)
    except Exception as e:  # noqa: BLE001 - any failure means these samples lack what it reads
        return f"{type(e).__name__}: {e}"
    return None


def task_samples(task: Any, ids: list[str], rows: dict[str, dict], scores: list[list[dict]],
                 notes: list[str]) -> list[Sample] | None:
    """Samples `task.aggregate` can run on, or None (then the caller falls back to field means)."""
    minimal = [Sample(id=i, messages=[], assistant_prefix="", ground_truth=rows[i].get("ground_truth"),
                      meta=dict(rows[i].get("meta") or {})) for i in ids]
    error = _works(task, scores, minimal)
    if error is None:
        return minimal
    loaded = _local_samples(task)
    if loaded and all(i in loaded and _same_truth(loaded[i].ground_truth, rows[i].get("ground_truth")) for i in ids):
        picked = [loaded[i] for i in ids]
        if _works(task, scores, picked) is None:
            notes.append(f"{task.name}: sample metadata taken from the task's default data (matched by id)")
            return picked
    notes.append(f"{task.name}: aggregate needs data the rows do not store ({error}) and the default data "
                 f"does not match; metrics are per-field means of the per-sample scores")
    return None


# -- comparing ------------------------------------------------------------------------------------


def compare_task(file_name: str, requested: str | None, rows_a: dict[str, dict], rows_b: dict[str, dict],
                 n_boot: int, seed: int) -> dict[str, Any]:
    ids = [i for i in rows_a if i in rows_b]  # run A's order
    paired_a, paired_b = [rows_a[i] for i in ids], [rows_b[i] for i in ids]
    scores_a, scores_b = [r["scores"] for r in paired_a], [r["scores"] for r in paired_b]
    notes: list[str] = []
    task, source = resolve_task(file_name, requested, paired_a)
    samples = task_samples(task, ids, rows_a, [scores_a, scores_b], notes) if task is not None and ids else None
    if task is None or samples is None:
        common = [k for k in _numeric_fields(paired_a) if k in set(_numeric_fields(paired_b))]
        if task is None:
            notes.append(f"{file_name}: not a registered task; metrics are per-field means of the per-sample scores")
        task, source = FieldMeans(file_name, common), "fallback"
        samples = [Sample(id=i, messages=[], assistant_prefix="", ground_truth=None) for i in ids]
    mismatched = sum(not _same_truth(a.get("ground_truth"), b.get("ground_truth")) for a, b in zip(paired_a, paired_b))
    if mismatched:
        notes.append(f"{file_name}: {mismatched} paired ids have different ground truths in A and B (different data?)")
    if not ids:
        notes.append(f"{file_name}: no sample id is in both runs")
    metrics = paired_bootstrap_metrics(task, scores_a, scores_b, samples, n_boot=n_boot, seed=seed) if ids else {}
    return {"source": source, "primary_metric": task.primary_metric, "n_paired": len(ids),
            "unpaired_a": len(rows_a) - len(ids), "unpaired_b": len(rows_b) - len(ids),
            "metrics": metrics, "notes": notes}


def _order(names: list[str]) -> list[str]:
    registry = list(TASKS)
    return sorted(names, key=lambda k: (registry.index(k) if k in registry else len(registry), k))


def compare_runs(run_a: Path, run_b: Path, tasks: list[str] | None = None, n_boot: int = 2000,
                 seed: int = 0) -> dict[str, Any]:
    """Compare two eval output directories task by task (B - A); see the module docstring.

    Returns {"run_a", "run_b", "model_a", "model_b", "n_boot", "seed", "only_in_a", "only_in_b",
    "tasks": {task: {"source", "primary_metric", "n_paired", "unpaired_a", "unpaired_b", "notes",
    "metrics": {metric: {"a", "b", "delta", "low", "high", "p_value", "significant", "n"}}}}}.
    """
    run_a, run_b = Path(run_a), Path(run_b)
    _check_run(run_a)
    _check_run(run_b)
    in_a, in_b = set(run_tasks(run_a)), set(run_tasks(run_b))
    if tasks:
        requested = {_file_name(t): t for t in tasks}
        absent = [t for f, t in requested.items() if f not in in_a or f not in in_b]
        if absent:
            raise ValueError(f"no results for {absent} in both runs; tasks in both: {_order(sorted(in_a & in_b))}")
    else:
        requested = {name: None for name in in_a & in_b}
        if not requested:
            raise ValueError(f"no task has results in both runs ({run_a}: {sorted(in_a)}; {run_b}: {sorted(in_b)})")
    out: dict[str, Any] = {"run_a": str(run_a), "run_b": str(run_b), "model_a": _model(run_a),
                           "model_b": _model(run_b), "n_boot": n_boot, "seed": seed,
                           "only_in_a": sorted(in_a - in_b), "only_in_b": sorted(in_b - in_a), "tasks": {}}
    for name in _order(list(requested)):
        rows_a = read_run_rows(run_a / f"{name}.jsonl")
        rows_b = read_run_rows(run_b / f"{name}.jsonl")
        out["tasks"][name] = compare_task(name, requested[name], rows_a, rows_b, n_boot, seed)
    return out


# -- reporting ------------------------------------------------------------------------------------


def _shown_metrics(t: dict[str, Any], breakdowns: bool) -> list[str]:
    names = [m for m in t["metrics"] if breakdowns or "/" not in m]
    primary = t["primary_metric"]
    return ([primary] if primary in names else []) + [m for m in names if m != primary]


def markdown_table(comparison: dict[str, Any], breakdowns: bool = False) -> str:
    """One row per (task, metric): A, B, delta, its 95% interval, `*` if the interval excludes 0,
    and n paired; values in points (x100). Per-subject rows only with `breakdowns`."""
    label_a = comparison.get("model_a") or comparison["run_a"]
    label_b = comparison.get("model_b") or comparison["run_b"]
    lines = [f"# B `{label_b}` vs A `{label_a}`", "",
             "| task | metric | A | B | Δ (B−A) | 95% CI of Δ | sig. | n paired |",
             "|---|---|---:|---:|---:|---|:-:|---:|"]
    notes: list[str] = []
    for name, t in comparison["tasks"].items():
        for metric in _shown_metrics(t, breakdowns):
            m = t["metrics"][metric]
            label = f"**{metric}**" if metric == t["primary_metric"] else metric
            lines.append(f"| {name} | {label} | {100 * m['a']:.2f} | {100 * m['b']:.2f} | {100 * m['delta']:+.2f} | "
                         f"[{100 * m['low']:+.2f}, {100 * m['high']:+.2f}] | {'*' if m['significant'] else ''} | "
                         f"{t['n_paired']} |")
        if t["unpaired_a"] or t["unpaired_b"]:
            notes.append(f"{name}: {t['unpaired_a']} samples only in A and {t['unpaired_b']} only in B were left out")
        notes += t["notes"]
    for side in ("a", "b"):
        if comparison[f"only_in_{side}"]:
            notes.append(f"only in {side.upper()} (not compared): {', '.join(comparison[f'only_in_{side}'])}")
    lines += ["", f"Values x100, computed on the samples present in both runs. *: the paired bootstrap 95% "
              f"interval of Δ excludes 0 ({comparison['n_boot']} resamples, seed {comparison['seed']}). "
              f"Bold: each task's primary metric."]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main(cfg: CompareConfig) -> int:
    comparison = compare_runs(Path(cfg.run_a), Path(cfg.run_b), cfg.tasks or None, n_boot=cfg.n_boot, seed=cfg.seed)
    text = markdown_table(comparison, breakdowns=cfg.breakdowns)
    print(text)
    if cfg.output:
        out = Path(cfg.output)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "compare.json", comparison)
        (out / "compare.md").write_text(text, encoding="utf-8")
        print(f"[compare] wrote {out / 'compare.json'} and {out / 'compare.md'}")
    return 0


CLI_STAGES = ("compare",)
USAGE = "usage: posttrain eval compare RUN_A RUN_B [--tasks a,b] [--output DIR] [--breakdowns] [key=value ...]"


def cli(argv: list[str], stage: str = "compare") -> int:
    """`posttrain eval compare RUN_A RUN_B [...]` (also `posttrain compare`): the two run
    directories come first, then flags or key=value overrides of CompareConfig."""
    from posttrain.config import describe, load_config, parse_argv

    runs = []
    while argv and len(runs) < 2 and not argv[0].startswith("-") and "=" not in argv[0]:
        runs, argv = runs + [argv[0]], argv[1:]
    path, overrides, want_help = parse_argv(argv, CompareConfig)
    if want_help:
        print(USAGE + "\n\nkeys:\n" + "\n".join("  " + line for line in describe(CompareConfig)))
        return 0
    if path is not None or len(runs) != 2:
        raise ValueError(USAGE)
    return main(load_config(CompareConfig, None, [f"run_a={runs[0]}", f"run_b={runs[1]}", *overrides]))


def stage_stats(eval_dirs: dict[str, Path], n_boot: int = 2000, seed: int = 0) -> dict:
    """For a pipeline's eval directories in stage order (label -> dir): each metric's 95% interval
    per label, and each label's paired-bootstrap delta against the label before it.

    -> {"intervals": {label: {"task/metric": [low, high]}},
        "deltas": {label: {"task/metric": {"delta", "low", "high", "significant", "n"}}}}
    """
    intervals: dict[str, dict[str, list[float]]] = {}
    for label, d in eval_dirs.items():
        path = Path(d) / "summary.json"
        summary = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        intervals[label] = {f"{task}/{m}": [iv["low"], iv["high"]] for task, t in summary.get("tasks", {}).items()
                            for m, iv in t.get("intervals", {}).items()}
    def delta(a: str, b: str) -> dict[str, dict]:
        cmp = compare_runs(Path(eval_dirs[a]), Path(eval_dirs[b]), n_boot=n_boot, seed=seed)
        return {f"{task}/{m}": {k: r[k] for k in ("delta", "low", "high", "significant", "n")}
                for task, t in cmp["tasks"].items() for m, r in t["metrics"].items()}

    labels = list(eval_dirs)
    deltas = {label: delta(prev, label) for prev, label in zip(labels, labels[1:])}
    out = {"intervals": intervals, "deltas": deltas}
    if len(labels) > 2:  # first -> last: what the whole run did (tasks scored on both ends only count)
        out["overall"] = {"from": labels[0], "to": labels[-1], "deltas": delta(labels[0], labels[-1])}
    return out


def implicit_reward_stats(eval_dirs: dict[str, Path], task: str = "preference") -> dict[str, dict]:
    """For each label whose predecessor (in stage order) also scored the preference task: the held-out
    *reward accuracy* of the label's model measured against that predecessor as reference, as DPO
    papers report it. Per pair, the implicit reward margin is the change of the log-prob margin
    (chosen − rejected) from the reference to the policy; it is correct when positive (a tie is
    not). Both the length-normalised margin (`dpo_norm`'s reward) and the summed one (`dpo`'s) are
    given; a model equal to its reference scores 0 (no pair positive), the chance level of a
    model that learned nothing generalisable is 50%.

    -> {label: {"reference", "n", "accuracy", "low", "high", "significant" (interval above 0.5),
    "accuracy_sum", "low_sum", "high_sum", "significant_sum"}}
    """
    from posttrain.evaluation.stats import wilson_interval

    labels, out = list(eval_dirs), {}
    for prev, label in zip(labels, labels[1:]):
        a_path, b_path = Path(eval_dirs[prev]) / f"{task}.jsonl", Path(eval_dirs[label]) / f"{task}.jsonl"
        if not (a_path.is_file() and b_path.is_file()):
            continue
        a, b = read_run_rows(a_path), read_run_rows(b_path)
        ids = sorted(set(a) & set(b))
        if not ids:
            continue
        entry: dict[str, Any] = {"reference": prev, "n": len(ids)}
        for key, suffix in (("margin", ""), ("margin_sum", "_sum")):
            wins = sum((b[i]["scores"][key] - a[i]["scores"][key]) > 0 for i in ids)
            low, high = wilson_interval(wins, len(ids))
            entry |= {f"accuracy{suffix}": wins / len(ids), f"low{suffix}": low, f"high{suffix}": high,
                      f"significant{suffix}": bool(low > 0.5)}
        out[label] = entry
    return out


def generation_stats(eval_dirs: dict[str, Path], n_boot: int = 2000, seed: int = 0) -> dict:
    """Response lengths and finish reasons of every generation task, per label (in stage order), with
    95% intervals, and each label's paired change in length against the label before it that scored
    the same task: what a stage did to how long (and how often cut at the budget) the model answers.

    -> {task: {label: {"n", "mean_tokens", "tokens_low", "tokens_high", "cut_rate", "cut_low",
    "cut_high", "finish": {reason: count}, "delta_tokens": {...} (paired, vs the previous label)}}}
    """
    from posttrain.evaluation.stats import bootstrap_interval, paired_bootstrap_delta, wilson_interval

    out: dict[str, dict[str, dict]] = {}
    tokens_by: dict[str, dict[str, dict[str, float]]] = {}
    for label, d in eval_dirs.items():
        for path in sorted(Path(d).glob("*.jsonl")):
            rows = [r for r in read_run_rows(path).values() if r.get("finish_reason") not in (None, "loglik")]
            if not rows:
                continue
            task = path.name[: -len(".jsonl")]
            per = {r["id"]: float(sum(_as_list(r["num_tokens"])) / len(_as_list(r["num_tokens"]))) for r in rows}
            finish = [f for r in rows for f in _as_list(r["finish_reason"])]
            cut = sum(f == "length" for f in finish)
            lo, hi = bootstrap_interval(list(per.values()), n_boot=n_boot, seed=seed)
            clo, chi = wilson_interval(cut, len(finish))
            entry = {"n": len(rows), "mean_tokens": sum(per.values()) / len(per), "tokens_low": lo,
                     "tokens_high": hi, "cut_rate": cut / len(finish), "cut_low": clo, "cut_high": chi,
                     "finish": {k: finish.count(k) for k in sorted(set(finish))}}
            prev = next((p for p in reversed(list(tokens_by.get(task, {}))) if p != label), None)
            if prev is not None:
                ids = sorted(set(per) & set(tokens_by[task][prev]))
                if ids:
                    entry["delta_tokens"] = {"from": prev, **paired_bootstrap_delta(
                        [tokens_by[task][prev][i] for i in ids], [per[i] for i in ids], n_boot=n_boot, seed=seed)}
            tokens_by.setdefault(task, {})[label] = per
            out.setdefault(task, {})[label] = entry
    return out


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]
