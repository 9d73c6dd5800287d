"""The `code` verifier (evaluation/tasks/code_exec.py): program extraction, test parsing, sandboxed
scoring (pass, partial, fail, syntax error, exception, timeout, infinite loop) in both modes, the
dispatch from RLVR rows, and the shipped MBPP-style data set."""

import importlib.util
import json

import pytest

from conftest import REPO
from posttrain.data.io import DataError
from posttrain.data.rlvr import load_rlvr_rows, row_from_record
from posttrain.evaluation.tasks.code_exec import code_scores, extract_program, parse_tests, validate_ground_truth
from posttrain.evaluation.tasks.verifiers import validate_ground_truth as validate_row, verify, verify_many

TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]
GOOD = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
PARTIAL = "```python\ndef add(a, b):\n    return 3 if a == 1 else a + b + 1\n```"  # passes test 1 only


def test_extract_program_from_fences_or_raw_text():
    assert extract_program(GOOD) == "def add(a, b):\n    return a + b\n"
    two = "```python\nimport math\n```\ntext\n```\nx = math.pi\n```\n```bash\nrm -rf /\n```"
    assert extract_program(two) == "import math\n\nx = math.pi\n"  # python and untagged blocks, not bash
    assert extract_program("```py\ndef f():\n    return 1") == "def f():\n    return 1\n"  # cut at the limit
    assert extract_program("def f():\n    return 1\n") == "def f():\n    return 1\n"  # no fences: raw text


def test_tests_parse_from_lists_and_json_and_bad_ones_are_refused():
    assert parse_tests(TESTS) == TESTS
    assert parse_tests(json.dumps(TESTS)) == TESTS
    assert parse_tests("assert f() == 1") == ["assert f() == 1"]
    for bad in ([], [""], 3, [1, 2], None):
        with pytest.raises(ValueError, match="non-empty list of statements"):
            parse_tests(bad)
    with pytest.raises(ValueError, match="not valid Python"):
        validate_ground_truth(["assert f(1) =="])


def test_scores_pass_partial_fail_syntax_error_and_timeouts():
    loop = "```python\ndef add(a, b):\n    while True:\n        pass\n```"
    top_loop = "```python\nwhile True:\n    pass\n```"
    syntax = "```python\ndef add(a, b)\n    return a + b\n```"
    raises = "```python\ndef add(a, b):\n    raise RuntimeError('no')\n```"
    exits = "```python\nimport sys\ndef add(a, b):\n    return a + b\nsys.exit(0)\n```"  # ends before the tests
    completions = [GOOD, PARTIAL, syntax, raises, loop, top_loop, exits]
    got = code_scores(completions, [TESTS] * len(completions), "fraction", timeout_s=0.5)
    assert got == pytest.approx([1.0, 1 / 3, 0.0, 0.0, 0.0, 0.0, 0.0])
    got = code_scores([GOOD, PARTIAL], [TESTS] * 2, "all_pass", timeout_s=0.5)
    assert got == [1.0, 0.0]
    with pytest.raises(ValueError, match="mode"):
        code_scores([GOOD], [TESTS], "most")


def test_rows_dispatch_to_the_code_verifier_with_options():
    rec = {"messages": [{"role": "user", "content": "Write add(a, b)."}], "ground_truth": TESTS, "dataset": "code"}
    row = row_from_record(rec, "x:1")
    assert row.verifier_key == "code"
    validate_row("mbpp", TESTS)  # alias
    assert verify(PARTIAL, "code", TESTS) == pytest.approx(1 / 3)
    assert verify(PARTIAL, "code", TESTS, {"code": {"mode": "all_pass"}}) == 0.0
    assert verify(GOOD, "code", [TESTS[0]]) == 1.0  # a one-test list (verify unwraps it) still works
    got = verify_many([GOOD, "The answer is 4.", PARTIAL], ["code", "gsm8k", "code"], [TESTS, "4", TESTS])
    assert got == pytest.approx([1.0, 1.0, 1 / 3])
    with pytest.raises(DataError, match="ground_truth"):
        row_from_record(dict(rec, ground_truth={"tests": 1}), "x:2")


def test_shipped_code_data_set():
    train = load_rlvr_rows(str(REPO / "data" / "rlvr" / "code_train.jsonl"))
    held = load_rlvr_rows(str(REPO / "data" / "rlvr" / "code_eval.jsonl"))
    assert (len(train), len(held)) == (60, 40)
    assert all(r.dataset == "code" and len(r.ground_truth) == 3 for r in train + held)
    names = lambda rows: {r.messages[0]["content"].split("`")[1].split("(")[0] for r in rows}  # noqa: E731
    assert len(names(train)) == 60 and len(names(held)) == 40 and not names(train) & names(held)
    # the builder's reference solutions pass every test (checked in process: our own code)
    spec = importlib.util.spec_from_file_location("make_code", REPO / "scripts" / "make_code_rlvr_data.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    make.check(make.TRAIN + make.EVAL)
    assert [json.loads(line) for line in (REPO / "data/rlvr/code_train.jsonl").read_text().splitlines()] == \
        make.rows(make.TRAIN)
    # and through the sandbox, as the reward sees them (a few)
    sols = ["```python\n" + p[2] + "\n```" for p in make.EVAL[:4]]
    assert code_scores(sols, [p[3] for p in make.EVAL[:4]], "all_pass") == [1.0] * 4
