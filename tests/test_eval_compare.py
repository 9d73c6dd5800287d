"""`compare_runs`: two eval output directories, paired by sample id, B - A with a paired bootstrap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SHARED_DATA
from posttrain.config import ConfigError, load_config
from posttrain.evaluation.compare import CompareConfig, compare_runs, main, markdown_table, read_run_rows


def _row(task: str, sid: str, scores: dict, ground_truth="1", **extra) -> dict:
    return {"task": task, "id": sid, "prompt": "p", "output": "o", "extracted": None, "scores": scores,
            "finish_reason": "eos", "num_tokens": 3, "ground_truth": ground_truth, **extra}


def _write_run(run: Path, task: str, rows: list[dict], model: str = "m") -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (run / "summary.json").write_text(json.dumps({"model": model, "tasks": {}}), encoding="utf-8")
    return run


def _gsm8k(run: Path, correct: list[bool], ids: range | None = None, model: str = "m") -> Path:
    ids = ids if ids is not None else range(len(correct))
    rows = [_row("gsm8k", f"gsm8k/{i}", {"exact_match": float(c)}) for i, c in zip(ids, correct)]
    return _write_run(run, "gsm8k", rows, model)


def _table_row(text: str, task: str, metric: str) -> str:
    hits = [line for line in text.splitlines() if line.startswith(f"| {task} |") and metric in line]
    assert len(hits) == 1, text
    return hits[0]


def test_clear_improvement_is_significant(tmp_path):
    a = _gsm8k(tmp_path / "a", [i % 10 < 4 for i in range(200)], model="sft")  # 40%
    b = _gsm8k(tmp_path / "b", [i % 10 < 7 for i in range(200)], model="dpo")  # 70%, fixes 3 in 10
    out = compare_runs(a, b)
    t = out["tasks"]["gsm8k"]
    assert (out["model_a"], out["model_b"]) == ("sft", "dpo")
    assert t["source"] == "registry" and t["n_paired"] == 200 and t["unpaired_a"] == t["unpaired_b"] == 0
    assert list(t["metrics"]) == ["exact_match"]  # num_samples is a count
    m = t["metrics"]["exact_match"]
    assert (m["a"], m["b"]) == pytest.approx((0.4, 0.7)) and m["delta"] == pytest.approx(0.3)
    assert m["significant"] and 0 < m["low"] < 0.3 < m["high"] and m["p_value"] < 0.01
    row = _table_row(markdown_table(out), "gsm8k", "exact_match")
    assert "| 40.00 | 70.00 | +30.00 |" in row and row.endswith("| * | 200 |")


def test_no_difference_is_not_marked(tmp_path):
    # Same accuracy, different samples right: a real per-sample change with no net effect.
    a = _gsm8k(tmp_path / "a", [i % 2 == 0 for i in range(100)])
    b = _gsm8k(tmp_path / "b", [i % 2 == 1 for i in range(100)])
    m = compare_runs(a, b)["tasks"]["gsm8k"]["metrics"]["exact_match"]
    assert m["delta"] == 0.0 and not m["significant"] and m["low"] < 0 < m["high"]
    row = _table_row(markdown_table(compare_runs(a, b)), "gsm8k", "exact_match")
    assert row.endswith("|  | 100 |")


def test_unpaired_ids_are_counted_and_left_out(tmp_path):
    a = _gsm8k(tmp_path / "a", [True] * 100, ids=range(0, 100))
    b = _gsm8k(tmp_path / "b", [False] * 10 + [True] * 100, ids=range(-10, 100))
    (tmp_path / "a" / "ifeval.jsonl").write_text("")  # a task only A has
    out = compare_runs(a, b)
    t = out["tasks"]["gsm8k"]
    assert (t["n_paired"], t["unpaired_a"], t["unpaired_b"]) == (100, 0, 10)
    assert t["metrics"]["exact_match"]["b"] == 1.0  # B's 10 extra wrong samples are not counted
    assert out["only_in_a"] == ["ifeval"] and out["only_in_b"] == []
    text = markdown_table(out)
    assert "0 samples only in A and 10 only in B" in text and "only in A (not compared): ifeval" in text


def test_math500_macro_needs_subjects_from_rows_or_default_data(tmp_path):
    # MATH's per-subject macro reads sample.meta["subject"], which result rows do not store.
    subjects = ["algebra", "geometry", "precalculus"]
    def rows(run_correct, meta):
        return [_row("math500", f"m/{i}", {"exact_match": float(c), "exact_match_flex": float(c)},
                     ground_truth="x", **({"meta": {"subject": subjects[i % 3]}} if meta else {}))
                for i, c in enumerate(run_correct)]
    a_ok, b_ok = [i % 3 == 0 for i in range(60)], [i % 3 != 2 for i in range(60)]
    with_meta = compare_runs(_write_run(tmp_path / "a", "math500", rows(a_ok, True)),
                             _write_run(tmp_path / "b", "math500", rows(b_ok, True)), n_boot=300)
    t = with_meta["tasks"]["math500"]
    assert t["source"] == "registry" and t["notes"] == [] and t["primary_metric"] == "exact_match_flex"
    # algebra: A 1.0, B 1.0; geometry: A 0, B 1; precalculus: 0, 0
    assert t["metrics"]["exact_match_macro"]["delta"] == pytest.approx(1 / 3)
    assert t["metrics"]["exact_match/geometry"]["delta"] == pytest.approx(1.0)
    # without meta, and ids the default data does not have: per-field means, and it says so
    bare = compare_runs(_write_run(tmp_path / "c", "math500", rows(a_ok, False)),
                        _write_run(tmp_path / "d", "math500", rows(b_ok, False)), n_boot=300)
    t = bare["tasks"]["math500"]
    assert t["source"] == "fallback" and "per-field means" in t["notes"][0]
    assert sorted(t["metrics"]) == ["exact_match", "exact_match_flex"]
    assert t["metrics"]["exact_match"]["delta"] == pytest.approx(1 / 3)
    assert "per-field means" in markdown_table(bare)


def test_math500_subjects_recovered_from_default_data_by_id(tmp_path):
    if not (SHARED_DATA / "math500" / "test.jsonl").is_file():
        pytest.skip("no shared math500 data")
    from posttrain.evaluation.tasks import get_task

    samples = get_task("math500").load(limit=30)
    def rows(correct):
        return [_row("math500", s.id, {"exact_match": float(c), "exact_match_flex": float(c)}, s.ground_truth)
                for s, c in zip(samples, correct)]
    out = compare_runs(_write_run(tmp_path / "a", "math500", rows([False] * 30)),
                       _write_run(tmp_path / "b", "math500", rows([True] * 30)), n_boot=200)
    t = out["tasks"]["math500"]
    assert t["source"] == "registry" and "default data" in t["notes"][0]
    present = {s.meta["subject"] for s in samples}
    assert {m.split("/")[1] for m in t["metrics"] if "/" in m} == present
    assert t["metrics"]["exact_match_macro"]["delta"] == pytest.approx(1.0)


def test_unregistered_tasks_verifiable_detected_or_field_means(tmp_path):
    ver = [_row("heldout", f"h{i}", {"score": s, "correct": float(s == 1.0)}) for i, s in enumerate([1.0, 0.5] * 10)]
    ver_b = [_row("heldout", f"h{i}", {"score": 1.0, "correct": 1.0}) for i in range(20)]
    odd = [_row("mine", f"x{i}", {"hit": float(i % 2), "label": "a"}) for i in range(20)]
    a, b = tmp_path / "a", tmp_path / "b"
    _write_run(a, "heldout", ver)
    _write_run(b, "heldout", ver_b)
    _write_run(a, "mine", odd)
    _write_run(b, "mine", odd)
    out = compare_runs(a, b, n_boot=300)
    h = out["tasks"]["heldout"]
    assert h["source"].startswith("verifiable") and h["primary_metric"] == "accuracy"
    assert h["metrics"]["accuracy"]["delta"] == pytest.approx(0.5)
    assert h["metrics"]["mean_score"]["delta"] == pytest.approx(0.25)
    m = out["tasks"]["mine"]
    assert m["source"] == "fallback" and list(m["metrics"]) == ["hit"]  # "label" is not a number
    assert "not a registered task" in m["notes"][0]
    # an explicit verifiable:NAME resolves through the registry
    assert compare_runs(a, b, tasks=["verifiable:heldout"], n_boot=50)["tasks"]["heldout"]["source"] == "registry"


def test_reading_leaves_a_torn_line_alone_and_names_a_corrupt_one(tmp_path):
    a = _gsm8k(tmp_path / "a", [True, False, True])
    path = a / "gsm8k.jsonl"
    torn = path.read_bytes() + b'{"id": "gsm8k/9", "sco'
    path.write_bytes(torn)
    assert sorted(read_run_rows(path)) == ["gsm8k/0", "gsm8k/1", "gsm8k/2"]
    assert path.read_bytes() == torn  # a run still writing is not cut
    path.write_bytes(b'{"id": "a", "scores": {}}\nnot json\n{"id": "b", "scores": {}}\n')
    with pytest.raises(ValueError, match=r"gsm8k\.jsonl:2"):
        read_run_rows(path)


def test_task_selection_and_bad_directories(tmp_path):
    a = _gsm8k(tmp_path / "a", [True] * 5)
    b = _gsm8k(tmp_path / "b", [True] * 5)
    assert list(compare_runs(a, b, tasks=["GSM8K"], n_boot=50)["tasks"]) == ["gsm8k"]
    with pytest.raises(ValueError, match="math500"):
        compare_runs(a, b, tasks=["math500"])
    with pytest.raises(ValueError, match="not a directory"):
        compare_runs(tmp_path / "nope", b)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no <task>.jsonl"):
        compare_runs(a, tmp_path / "empty")


def test_main_prints_and_writes_both_files(tmp_path, capsys):
    a = _gsm8k(tmp_path / "a", [i % 10 < 4 for i in range(100)])
    b = _gsm8k(tmp_path / "b", [i % 10 < 8 for i in range(100)])
    cfg = load_config(CompareConfig, overrides=[f"run_a={a}", f"run_b={b}", f"output={tmp_path / 'cmp'}",
                                                "n_boot=500"])
    assert main(cfg) == 0
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["tasks"]["gsm8k"]["metrics"]["exact_match"]["significant"] is True and saved["n_boot"] == 500
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert md in printed and "| gsm8k | **exact_match** | 40.00 | 80.00 | +40.00 |" in md
    with pytest.raises(ConfigError, match="run_b"):
        load_config(CompareConfig, overrides=[f"run_a={a}"])


def test_posttrain_eval_compare_command(tmp_path, capsys):
    from posttrain.cli import main as cli_main

    a = _gsm8k(tmp_path / "a", [i % 4 == 0 for i in range(200)])
    b = _gsm8k(tmp_path / "b", [i % 4 != 3 for i in range(200)])
    assert cli_main(["eval", "compare", str(a), str(b), "--output", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "exact_match" in _table_row(out, "gsm8k", "exact_match") and (tmp_path / "cmp" / "compare.json").is_file()
    assert cli_main(["eval", "compare", str(a)]) == 2
    assert "usage: posttrain eval compare RUN_A RUN_B" in capsys.readouterr().err
