"""Per-step metrics: `metrics.jsonl` in the run directory, a progress bar, and the experiment
trackers of `run.report_to` (`posttrain.tracking`: TensorBoard, W&B, MLflow, trackio)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

from posttrain.tracking import Trackers, open_trackers


class MetricsLogger:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int = 0, enabled: bool = True,
                 tensorboard: bool = False, desc: str = "train", progress: bool = True,
                 report_to: Sequence[str] = (), run_name: str | None = None, run_group: str | None = None,
                 config: dict[str, Any] | None = None):
        """Rank 0 (`enabled`) writes; `tensorboard=True` is the older spelling of
        report_to=[tensorboard]; `config` (the resolved stage config) is logged once, with the run
        directory's config.yaml as a file."""
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.start = time.time()
        self.bar = None
        self.trackers = Trackers()
        if not enabled:
            return
        if start_step:
            self._truncate_after(start_step)
        names = list(report_to) + (["tensorboard"] if tensorboard else [])
        if names:  # before the bar: the libraries print where they write
            self.trackers = open_trackers(names, run_dir, name=run_name, group=run_group, config=config,
                                          job_type=desc, start_step=start_step)
            self.trackers.log_artifact(Path(run_dir) / "config.yaml")
        from tqdm.auto import tqdm

        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True, mininterval=1.0)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint so the file holds one curve."""
        if not self.path.is_file():
            return
        rows = [r for r in self.path.read_text().splitlines() if r.strip()]
        keep = [r for r in rows if json.loads(r).get("step", 0) <= step]
        self.path.write_text("".join(r + "\n" for r in keep))

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        self.trackers.log_metrics(step, row)  # numbers only: 'nan' strings and text are skipped
        if self.bar is not None:
            self.bar.update(1)
            short = {k: row[k] for k in ("loss", "lr", "tokens_per_s") if k in row}
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in short.items()})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.trackers.finish()


def _clean(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
