"""Every task of both Tülu 3 suites runs end to end through the runner on its fixture rows: a tiny
model, 2 samples each, tiny budgets. What is checked here is the plumbing (prompts render, each task
kind reaches its scorer, rows and intervals are written, the table has one row per task); the
scorers themselves are checked in tests/test_tasks_*.py."""

import json
from types import SimpleNamespace

import pytest

from conftest import REPO, tiny_model
from posttrain.evaluation.runner import evaluate
from posttrain.evaluation.suites import SUITES

FIX = REPO / "tests" / "fixtures" / "eval"
DATA = {
    "mmlu": FIX / "mmlu" / "test.jsonl", "mmlu:mc": FIX / "mmlu" / "test.jsonl", "popqa": FIX / "popqa" / "test.jsonl",
    "truthfulqa": FIX / "truthfulqa" / "mc.jsonl", "bbh": FIX / "bbh", "drop": FIX / "drop" / "requests_sample.jsonl.gz",
    "humaneval": FIX / "humaneval" / "humaneval_rows.jsonl",
    "humanevalplus": FIX / "humaneval" / "humanevalplus_rows.jsonl",
    "alpaca_eval": FIX / "alpaca_eval" / "sample.json", "xstest": FIX / "xstest" / "prompts.csv",
    "mmlu_pro": FIX / "mmlu_pro" / "test.jsonl", "gpqa": FIX / "gpqa" / "gpqa_main.jsonl", "agieval": FIX / "agieval",
    "ifbench": FIX / "ifbench" / "rows.jsonl", "dm_math": FIX / "dm_math" / "sample.jsonl",
    "bigcodebench": FIX / "humaneval" / "bigcodebench_rows.jsonl",
}


def stub_judge(prompts, version, max_tokens=16):
    """Always prefers response A: enough to drive the judged tasks' plumbing."""
    return [SimpleNamespace(text="A", top_logprobs=None, error=None) for _ in prompts]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=11).eval()


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["tulu3-dev", "tulu3-unseen"])
def test_every_suite_task_runs_end_to_end_on_fixtures(suite, model, tokenizer, tmp_path):
    tasks = list(SUITES[suite])
    data = {t: str(DATA[t]) for t in tasks if t in DATA}
    summary = evaluate(model, tokenizer, tasks, limit=2, out_dir=tmp_path, max_new_tokens=4, data_paths=data,
                       batch_size=4, progress=False, log=lambda *_: None, judge=stub_judge, missing_data="error")
    assert list(summary["tasks"]) == [t for t in tasks]  # nothing skipped: every task has fixture data
    for name, t in summary["tasks"].items():
        assert t["n"] == 2 and t["primary_metric"] in t["metrics"], name
        assert 0.0 <= t["metrics"][t["primary_metric"]] <= 1.0, name
        rows = [json.loads(x) for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all(r["task"] == name for r in rows), name
    table = (tmp_path / "summary.md").read_text()
    for name in tasks:
        assert f"| {name} | 2 | **" in table, name
    assert summary["tasks"]["humaneval"]["generated_tokens"] > 2 * 4 if suite == "tulu3-dev" else True
