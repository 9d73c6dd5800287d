"""The pipeline's one progress line: stage, units, elapsed time and an ETA that learns the machine's speed."""

import io
import json

from posttrain.progress import PRIOR_S, RunProgress, clock, max_logged_step


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_clock_format():
    assert clock(0) == "0:00" and clock(75) == "1:15" and clock(3725) == "1:02:05"


def test_eta_from_expectations_then_scaled_by_measured_speed(tmp_path):
    now, out = Clock(), io.StringIO()
    p = RunProgress([("sft", 100.0), ("dpo", 200.0), ("eval", 50.0)], tmp_path / "progress.json", every_s=0,
                    stream=out, now=now)
    p.start("sft")
    assert p.remaining() == 350.0  # nothing measured yet: the expectations as they are
    now.t += 180.0  # sft takes 1.8x its expectation
    p.finish("sft")
    assert p.speed() == (180 + PRIOR_S) / (100 + PRIOR_S) == 1.5  # shrunk towards 1 by the prior
    p.start("dpo")
    assert p.remaining() == 1.5 * 200 + 1.5 * 50
    line = out.getvalue().splitlines()[-1]
    assert line.startswith("[progress] 2/3 dpo · elapsed 3:00 · ETA 6:15")
    saved = json.loads((tmp_path / "progress.json").read_text())
    assert saved["remaining_s"] == 375.0 and saved["stages"][0]["seconds"] == 180.0


def test_a_tiny_fast_stage_barely_moves_the_estimate():
    now = Clock()
    p = RunProgress([("decontaminate", 2.0), ("sft", 100.0)], None, every_s=0, stream=io.StringIO(), now=now)
    p.start("decontaminate")
    now.t += 0.5
    p.finish("decontaminate")
    assert 0.95 < p.speed() < 1.0


def test_eta_extrapolates_from_logged_steps(tmp_path):
    now = Clock()
    metrics = tmp_path / "metrics.jsonl"
    p = RunProgress([("rlvr", None)], None, every_s=0, stream=io.StringIO(), now=now)
    p.start("rlvr", done=lambda: max_logged_step(metrics), total=20)
    assert p.remaining() is None and "ETA unknown" in p.line()  # no expectation, no steps yet
    metrics.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6)) + '{"step": 9')
    now.t += 50.0  # 5 of 20 steps in 50 s (the torn last line is ignored)
    assert max_logged_step(metrics) == 5
    assert p.remaining() == 150.0
    assert "rlvr step 5/20" in p.line()


def test_skipped_stages_are_not_counted(tmp_path):
    now = Clock()
    p = RunProgress([("sft", 100.0), ("dpo", 100.0)], None, every_s=0, stream=io.StringIO(), now=now)
    p.skip("sft")
    p.start("dpo")
    assert p.remaining() == 100.0
    assert p.line().startswith("[progress] 1/1 dpo")
