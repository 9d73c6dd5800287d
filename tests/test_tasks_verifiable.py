"""The `verifiable` eval task: held-out RLVR rows graded by each row's own verifier."""

import json

import pytest

from posttrain.evaluation.tasks import get_task
from posttrain.evaluation.tasks.verifiers import verifiable_reward

ROWS = [
    {"messages": [{"role": "user", "content": "Name a fruit. Do not use any commas anywhere in your answer."}],
     "ground_truth": json.dumps({"func_name": "validate_no_commas"}), "dataset": "ifeval"},
    {"messages": [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}],
     "ground_truth": "5", "dataset": "gsm8k"},
]


def write(tmp_path, rows):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_scores_with_the_rows_verifier_like_the_rl_reward(tmp_path):
    task = get_task("verifiable")
    samples = task.load(write(tmp_path, ROWS))
    assert [s.id for s in samples] == ["line1", "line2"]
    assert samples[1].messages == ROWS[1]["messages"][:1]  # a stored answer is not part of the prompt
    outputs = ["An apple, or a pear", "2 + 3 = 5. The answer is 5"]
    scores = [task.score(s, o) for s, o in zip(samples, outputs)]
    assert [s["correct"] for s in scores] == [0.0, 1.0]
    assert task.aggregate(scores, samples) == {"accuracy": 0.5, "mean_score": 0.5, "num_samples": 2.0}
    for row, out, s in zip(ROWS, outputs, scores):  # the same number RLVR trains on (÷ its scale of 10)
        assert verifiable_reward(out, row) == 10 * s["score"]
    assert task.score(samples[0], "An apple or a pear")["correct"] == 1.0


def test_a_named_verifiable_task_reports_under_its_name(tmp_path):
    task = get_task("verifiable:no_commas")
    assert task.name == "no_commas" and len(task.load(write(tmp_path, ROWS))) == 2
    with pytest.raises(ValueError, match="no default data; pass a file of RLVR rows.*no_commas=PATH"):
        task.load(None)


def test_bad_rows_name_the_line(tmp_path):
    task = get_task("verifiable")
    with pytest.raises(ValueError, match="no default data"):
        task.load(None)
    bad = [ROWS[0], {"messages": ROWS[0]["messages"], "ground_truth": "1", "dataset": "nosuchverifier"}]
    with pytest.raises(ValueError, match=r"rows.jsonl:2: no verifier for dataset 'nosuchverifier'"):
        task.load(write(tmp_path, bad))
    with pytest.raises(ValueError, match=r"rows.jsonl:1: missing field 'ground_truth'"):
        task.load(write(tmp_path, [{"messages": ROWS[0]["messages"], "dataset": "ifeval"}]))
