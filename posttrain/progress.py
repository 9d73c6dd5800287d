"""One progress line for a whole multi-stage run: the current stage, its progress, the time so far
and an estimate of the time left.

    progress = RunProgress([("sft", 60.0), ("dpo", 120.0), ("eval", None)], log_path)
    progress.start("sft", done=lambda: steps_logged(), total=40)
    ...
    progress.finish("sft")

The estimate combines two sources. Each stage may carry an expected duration (what it took on the
reference machine, from the recipe); finished stages tell how much slower or faster this machine
is than that reference, and the expectations of the stages still to come are scaled by it. Inside
a stage that reports progress (`done()` of `total` units: optimizer steps, evaluated samples),
the remaining time is extrapolated from its own rate once a few units are done. A line is printed
when a stage starts and every `every_s` seconds from a background thread (the stage's own logs go
on in between), and the newest line is kept in `progress.json` for tools that watch the run.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence


PRIOR_S = 60.0


def clock(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


@dataclass
class _Stage:
    name: str
    expected_s: float | None
    started: float | None = None
    seconds: float | None = None  # set when finished
    done: Callable[[], float] | None = None
    total: float | None = None
    unit: str = "step"


@dataclass
class RunProgress:
    plan: Sequence[tuple[str, float | None]]  # (stage, expected seconds or None), in run order
    path: Path | None = None  # progress.json
    every_s: float = 30.0
    stream: object = None
    now: Callable[[], float] = time.time
    stages: list[_Stage] = field(init=False)

    def __post_init__(self):
        self.stages = [_Stage(n, e) for n, e in self.plan]
        self.t0 = self.now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _get(self, name: str) -> _Stage:
        for st in self.stages:
            if st.name == name:
                return st
        raise KeyError(f"no stage {name!r} in the progress plan ({', '.join(s.name for s in self.stages)})")

    def start(self, name: str, done: Callable[[], float] | None = None, total: float | None = None,
              unit: str = "step") -> None:
        st = self._get(name)
        st.started, st.done, st.total, st.unit = self.now(), done, total, unit
        self.emit()

    def finish(self, name: str, seconds: float | None = None) -> None:
        st = self._get(name)
        st.seconds = seconds if seconds is not None else self.now() - (st.started or self.now())

    def skip(self, name: str) -> None:
        """A stage that will not run (finished earlier, or not selected): no time left for it."""
        self._get(name).seconds = 0.0

    # -- the estimate ------------------------------------------------------------------------

    def speed(self) -> float:
        """Measured / expected over the finished stages that had an expectation, shrunk towards 1 by
        `PRIOR_S` seconds of pseudo-evidence, so a 2-second stage that ran in 0.5 s does not make
        the whole run look 4x faster."""
        pairs = [(s.seconds, s.expected_s) for s in self.stages
                 if s.seconds is not None and s.expected_s and s.started is not None]
        return (sum(a for a, _ in pairs) + PRIOR_S) / (sum(e for _, e in pairs) + PRIOR_S)

    def _fraction(self, st: _Stage) -> float | None:
        if st.done is None or not st.total:
            return None
        try:
            return min(1.0, max(0.0, float(st.done()) / float(st.total)))
        except (OSError, ValueError, ZeroDivisionError):
            return None

    def remaining(self) -> float | None:
        """Seconds left, or None when some stage still to run has no basis for an estimate."""
        f, left, t = self.speed(), 0.0, self.now()
        for st in self.stages:
            if st.seconds is not None:
                continue
            if st.started is None:
                if st.expected_s is None:
                    return None
                left += st.expected_s * f
                continue
            elapsed, frac = t - st.started, self._fraction(st)
            if frac is not None and frac >= 0.1:
                left += elapsed * (1 - frac) / frac
            elif st.expected_s is not None:
                left += max(st.expected_s * f - elapsed, 0.0)
            else:
                return None
        return left

    def line(self) -> str:
        current = next((s for s in self.stages if s.started is not None and s.seconds is None), None)
        to_run = [s for s in self.stages if not (s.seconds == 0.0 and s.started is None)]
        parts = []
        if current is not None:
            k = to_run.index(current) + 1 if current in to_run else 0
            what = f"{k}/{len(to_run)} {current.name}"
            frac = self._fraction(current)
            if frac is not None:
                what += f" {current.unit} {int(current.done())}/{int(current.total)}"
            parts.append(what)
        parts.append(f"elapsed {clock(self.now() - self.t0)}")
        left = self.remaining()
        if left is None:
            parts.append("ETA unknown")
        else:
            parts.append(f"ETA {clock(left)} (done ~{time.strftime('%H:%M', time.localtime(self.now() + left))})")
        return "[progress] " + " · ".join(parts)

    # -- output ------------------------------------------------------------------------------

    def emit(self) -> str:
        text = self.line()
        print(text, file=self.stream or sys.stdout, flush=True)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"line": text, "elapsed_s": self.now() - self.t0,
                                       "remaining_s": self.remaining(),
                                       "stages": [{"name": s.name, "expected_s": s.expected_s, "seconds": s.seconds}
                                                  for s in self.stages]}, indent=2))
            tmp.replace(self.path)
        return text

    def __enter__(self) -> "RunProgress":
        def loop():
            while not self._stop.wait(self.every_s):
                self.emit()

        if self.every_s > 0:
            self._thread = threading.Thread(target=loop, name="run-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def max_logged_step(metrics_path: Path) -> float:
    """The highest `step` a stage has logged to its metrics.jsonl so far (0 before the first)."""
    best = 0.0
    try:
        text = metrics_path.read_text(encoding="utf-8")
    except OSError:
        return 0.0
    for line in text.splitlines():
        try:
            step = json.loads(line).get("step")
        except ValueError:  # a line being written
            continue
        if isinstance(step, (int, float)):
            best = max(best, float(step))
    return best
