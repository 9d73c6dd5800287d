"""The on-disk record of an evaluation run: per-sample JSONL, per-task meta, summary files.

Layout of a run directory:

    <task>.jsonl       one row per scored sample, appended and flushed after every engine call
    <task>.meta.json   what produced the rows (model, decoding) and the timing of each engine call
    summary.json       metrics recomputed from the JSONL rows, plus timing
    summary.md         the same as markdown tables

A killed run leaves at most one partial last line; `read_rows` drops it (and truncates the file)
so appending resumes cleanly.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def rows_path(out_dir: Path, task: str) -> Path:
    return Path(out_dir) / f"{task}.jsonl"


def meta_path(out_dir: Path, task: str) -> Path:
    return Path(out_dir) / f"{task}.meta.json"


def read_rows(path: Path) -> dict[str, dict]:
    """Rows of a results file by sample id. A torn last line (no newline: the process died while
    writing it) is cut off the file; any other bad line is an error naming file:line."""
    path = Path(path)
    if not path.exists():
        return {}
    data = path.read_bytes()
    rows: dict[str, dict] = {}
    offset = 0
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        start, offset = offset, offset + len(raw) + 1
        if not raw.strip():
            continue
        torn = offset > len(data)  # the last chunk, not terminated by a newline
        try:
            row = json.loads(raw)
            if not isinstance(row, dict) or "id" not in row:
                raise ValueError("not a result row")
        except ValueError:
            if torn:
                with open(path, "r+b") as fh:
                    fh.truncate(start)
                break
            raise ValueError(f"{path}:{lineno}: corrupt result row; delete the file to re-run this task") from None
        if torn:  # a complete JSON object whose newline never made it: terminate it
            with open(path, "ab") as fh:
                fh.write(b"\n")
        rows[str(row["id"])] = row
    return rows


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append rows and force them to disk, so a kill right after loses nothing."""
    if not rows:
        return
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def write_json_atomic(path: Path, obj: Any) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_meta(path: Path) -> dict | None:
    path = Path(path)
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise ValueError(f"{path}: corrupt meta file; delete it (and the task's .jsonl) to re-run") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: corrupt meta file; delete it (and the task's .jsonl) to re-run")
    return meta


def check_fingerprint(meta: dict | None, fingerprint: dict, where: Path) -> None:
    """Refuse to mix rows produced under different settings into one result file."""
    if meta is None:
        return
    old = meta.get("fingerprint", {})
    for key, value in fingerprint.items():
        if key in old and old[key] != value:
            raise ValueError(
                f"{where}: existing results were produced with {key}={old[key]!r}, this run has "
                f"{key}={value!r}; use another output_dir or overwrite=true"
            )


def headline_metrics(metrics: dict[str, float], primary: str) -> list[str]:
    """The primary metric first, then every other aggregate rate (no per-subject breakdowns, no counts)."""
    from posttrain.evaluation.stats import is_count_metric

    rest = [k for k in metrics if k != primary and not is_count_metric(k) and "/" not in k]
    return ([primary] if primary in metrics else []) + rest


def markdown_summary(summary: dict) -> str:
    lines = [f"# Evaluation of `{summary['model']}`", "",
             "| task | n | metric | score (%) | 95% interval |", "|---|---:|---|---:|---|"]
    for name, t in summary["tasks"].items():
        for metric in headline_metrics(t["metrics"], t["primary_metric"]):
            label = f"**{metric}**" if metric == t["primary_metric"] else metric
            iv = t.get("intervals", {}).get(metric)
            span = f"[{100 * iv['low']:.1f}, {100 * iv['high']:.1f}] ({iv['method']})" if iv else ""
            lines.append(f"| {name} | {t['n']} | {label} | {100 * t['metrics'][metric]:.2f} | {span} |")
    lines += ["", "| task | n | generated tokens | generation s | tokens/s | wall s (last run) |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, t in summary["tasks"].items():
        lines.append(f"| {name} | {t['n']} | {t['generated_tokens']} | {t['generation_s']:.1f} | "
                     f"{t['tokens_per_s']:.1f} | {t['wall_s']:.1f} |")
    if summary.get("skipped"):
        lines += ["", "Skipped, no data on this machine:", ""]
        lines += [f"- {name}: {why}" for name, why in summary["skipped"].items()]
    lines += ["", "n: the first n samples of each task's data. Bold: each task's primary metric. Intervals: "
              "Wilson for accuracies over samples, else a bootstrap over samples of the task's own aggregation. "
              "Generation s and tokens/s cover every engine call that produced the task's rows (resumed runs "
              "included)."]
    return "\n".join(lines) + "\n"
