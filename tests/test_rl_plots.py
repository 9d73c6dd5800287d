"""Seed-group curves and tables of RLVR evidence runs (posttrain.rl.plots), on hand-written metrics."""

import json

import pytest

from posttrain.rl import plots


def _run(d, accs, lens, rewards, refills=None, wall=10.0):
    d.mkdir(parents=True)
    rows = []
    for step, acc in accs.items():
        rows.append({"step": step, "eval/toy_eval/accuracy": acc, "eval/toy_eval/response_len": lens[step]})
    for step, r in rewards.items():
        row = {"step": step, "reward/mean": r, "response_len/mean": 20.0 + step}
        if refills:
            row["dynamic/refills"] = refills[step]
        rows.append(row)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "config.yaml").write_text("rollout:\n  prompts_per_step: 2\n  samples_per_prompt: 4\n")
    (d / "summary.json").write_text(json.dumps({"wall_s": wall}))


def test_band_and_table(tmp_path):
    g = tmp_path / "grpo"
    _run(g / "seed1", {0: 0.2, 2: 0.5}, {0: 30, 2: 20}, {1: 1.0, 2: 3.0}, wall=10)
    _run(g / "seed2", {0: 0.2, 2: 0.7}, {0: 30, 2: 24}, {1: 2.0, 2: 5.0}, wall=20)
    (g / "crashed").mkdir()  # no summary.json: not a finished run, left out
    runs = [plots.read_metrics(r) for r in plots.seed_runs(g)]
    assert plots.eval_name_of(runs[0]) == "toy_eval"
    steps, mean, lo, hi = plots.band(runs, "eval/toy_eval/accuracy")
    assert steps == [0, 2] and mean == pytest.approx([0.2, 0.6]) and lo == [0.2, 0.5] and hi == [0.2, 0.7]
    d = tmp_path / "dapo"
    # 2 steps of 2 × 4 samples, one refill at step 2: 8 + 16 = 24 samples generated
    _run(d / "seed1", {0: 0.2, 2: 0.4}, {0: 30, 2: 28}, {1: 0.0, 2: 1.0}, refills={1: 0, 2: 1})
    table = plots.group_table({"grpo": g, "dapo": d}).splitlines()
    # grpo after: mean(0.5, 0.7) = 0.6, sample std = sqrt(((0.1)^2 * 2) / 1) = 0.141; lengths 22 ± 2.828
    assert table[2] == ("| grpo | 2 | 0.200 ± 0.000 | 0.600 ± 0.141 | 22.000 ± 2.828 | 4.000 ± 1.414 | 16 | 15 |")
    assert table[3].startswith("| dapo | 1 | 0.200 ± 0.000 | 0.400 ± 0.000 |") and table[3].endswith("| 24 | 10 |")
    out = plots.plot_groups({"grpo": g, "dapo": d}, tmp_path / "curves.png", title="toy")
    assert out.stat().st_size > 1000


def test_group_needs_finished_runs_and_cli_errors(tmp_path):
    (tmp_path / "empty" / "seed1").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no finished run"):
        plots.seed_runs(tmp_path / "empty")
    with pytest.raises(SystemExit):
        plots.main(["--group", "nolabel", "--out", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit):
        plots.main(["--out", str(tmp_path / "x.png")])  # neither --run nor --group
