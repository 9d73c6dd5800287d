"""Graders never hang or crash: adversarial outputs get a score within a bounded time.

The bound (2 s per call) is a correctness property of the timeouts and length guards, not a speed
benchmark. One-time start-up costs (the symbolic checker's zygote, langdetect's profiles, the Punkt
model) are paid in the fixture before any call is timed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from posttrain.evaluation.tasks import get_task
from posttrain.evaluation.tasks.ifeval_checks import detect_language
from posttrain.evaluation.tasks.minerva_math import MathScorer
from posttrain.evaluation.tasks.punkt_offline import word_tokenize
from posttrain.evaluation.tasks.verifiers import verify
from posttrain.evaluation.tasks.symbolic import Deadline, SymbolicChecker, default_checker, symbolic_equal

BOUND_S = 2.0
MB10 = 10_000_000
_NESTED = "\\frac{" * 5000 + "1" + "}{2}" * 5000

ADVERSARIAL = {
    "digits_10mb": "1" * MB10,
    "dollars_10mb": "$" * MB10,
    "open_boxed_10mb": "\\boxed{" * (MB10 // 7),
    "minerva_prefix_10mb": "Final Answer: The final answer is " * (MB10 // 33),
    "open_text_10mb": "\\text{" * (MB10 // 6),
    "braces_10mb": "{" * MB10,
    "newlines_10mb": "\n" * MB10,
    "spaces_10mb": " " * MB10,
    "brackets_10mb": "[" * MB10,
    "angles_10mb": "<<" * (MB10 // 2),
    "stars_10mb": "*" * MB10,
    "hashes_10mb": "#### " * (MB10 // 5),
    "mixed_lines_10mb": "a$b\\boxed{c}\n" * (MB10 // 14),
    "nested_frac_5000": _NESTED,
    "boxed_nested_frac_5000": "Final Answer: The final answer is $" + _NESTED + "$. I hope it is correct.",
    "tower": "9^9^9^9",
    "boxed_tower": "so \\boxed{9^{9^{9^9}}}",
    "minerva_tower": "Final Answer: The final answer is $2^{2^{40}}$. I hope it is correct.",
    "boxed_factorial": "\\boxed{100000!}",
    "unicode_digits": "\u0661\u0662\u0663 \u00bd \u00b2 \U0001d7d9\U0001d7da \\boxed{\u0661\u0662}",
    "lone_surrogate_ish": "\ufffd\u200b\u202e answer 5",
    "empty": "",
    "whitespace": " \n\t ",
    "none": None,
    "bytes": b"\\boxed{5}",
    "int": 12345,
}

IF_CONSTRAINTS = [
    {"func_name": "verify_sentence_constraint", "N": 3, "quantifier": "at least"},
    {"func_name": "validate_frequency_capital_words", "N": 3, "quantifier": "at least"},
    {"func_name": "validate_placeholders", "N": 3},
    {"func_name": "validate_title"},
    {"func_name": "validate_json_format"},
    {"func_name": "validate_response_language", "language": "en"},
]


@pytest.fixture(scope="module")
def graders():
    symbolic_equal("1", "1")  # start the comparison zygote
    detect_language("warm up the language profiles")
    word_tokenize("Warm up. The Punkt model.")
    tasks = {name: get_task(name) for name in ("gsm8k", "math500", "ifeval")}
    samples = {name: task.load(limit=1)[0] for name, task in tasks.items()}
    ifeval_all = tasks["ifeval"].load()
    # the IFEval prompts that run the slow tokenizers, plus one with many instruction types
    for iid in ("length_constraints:number_sentences", "change_case:capital_word_frequency"):
        samples[iid] = next(s for s in ifeval_all if iid in s.ground_truth["instruction_id_list"])
    samples["ifeval_many"] = max(ifeval_all, key=lambda s: len(s.ground_truth["instruction_id_list"]))
    return tasks, samples


def _timed(fn, *args):
    start = time.monotonic()
    result = fn(*args)
    return result, time.monotonic() - start


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_scores_are_bounded(graders, name):
    tasks, samples = graders
    output = ADVERSARIAL[name]
    calls = [
        ("gsm8k", tasks["gsm8k"].score, samples["gsm8k"]),
        ("math500", tasks["math500"].score, samples["math500"]),
        ("ifeval", tasks["ifeval"].score, samples["ifeval"]),
        ("ifeval sentences", tasks["ifeval"].score, samples["length_constraints:number_sentences"]),
        ("ifeval capitals", tasks["ifeval"].score, samples["change_case:capital_word_frequency"]),
        ("ifeval many", tasks["ifeval"].score, samples["ifeval_many"]),
    ]
    for label, score, sample in calls:
        result, elapsed = _timed(score, sample, output)
        assert elapsed <= BOUND_S, f"{label} took {elapsed:.2f}s"
        metrics = [v for k, v in result.items() if k.endswith("acc") or k.startswith("exact_match")]
        assert metrics and all(v in (0.0, 1.0) for v in metrics), (label, result)


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_rewards_are_bounded(graders, name):
    output = ADVERSARIAL[name]
    truths = [("gsm8k", "5"), ("math", "\\frac{1}{2}"), ("math", "12")]
    truths += [("ifeval", json.dumps(c)) for c in IF_CONSTRAINTS]
    truths += [("ifeval", json.dumps({"instruction_id": ["detectable_format:title"], "kwargs": [{}]}))]
    for dataset, truth in truths:
        value, elapsed = _timed(verify, output, dataset, truth)
        assert elapsed <= BOUND_S, f"{dataset} {truth[:40]} took {elapsed:.2f}s"
        assert 0.0 <= value <= 1.0


def test_unicode_digits_are_not_ascii_numbers(graders):
    tasks, samples = graders
    assert tasks["gsm8k"].score(samples["gsm8k"], "\u0661\u0668")["extracted"] == "\u0661\u0668"  # \d matches
    assert tasks["gsm8k"].score(samples["gsm8k"], "\u0661\u0668")["exact_match"] == 0.0  # but != "18"
    assert verify("\\boxed{\u0661\u0662}", "math", "12") == 0.0


def test_timeouts_work_off_the_main_thread(graders):
    """SIGALRM only works on the main thread; the process-based timeout must not care."""

    def compare(pair):
        gold, pred = pair
        start = time.monotonic()
        return symbolic_equal(gold, pred, timeout_s=1.0), time.monotonic() - start

    pairs = [("1", "2^{2^{40}}"), ("\\frac{1}{2}", "0.5"), ("1", "9^{9^{9^9}}"), ("x^2+1", "1+x^2")] * 2
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(compare, pairs))
    assert [r for r, _ in results] == [False, True, False, True] * 2
    assert all(elapsed <= BOUND_S for _, elapsed in results)


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                kids.append(int(entry))
    return kids


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to list processes")
def test_stuck_workers_are_killed_not_leaked(graders):
    checker = default_checker()
    for _ in range(4):
        result, elapsed = _timed(checker.equal, "1", "10^{10^{10}}", 0.5)
        assert result is False and elapsed <= BOUND_S
    assert checker.equal("\\frac{1}{2}", "0.5")  # a fresh worker took over
    time.sleep(0.2)
    assert 1 <= len(_children(checker._zygote.pid)) <= checker.max_workers


def test_checker_close_and_restart():
    checker = SymbolicChecker(max_workers=1)
    checker.close()  # closing before any use is fine
    with pytest.raises(ValueError, match="max_workers must be >= 1"):
        SymbolicChecker(max_workers=0)


def test_exhausted_deadline_skips_the_comparison():
    deadline = Deadline(0.0)
    _, elapsed = _timed(symbolic_equal, "1", "1", 1.0, deadline)
    assert symbolic_equal("1", "1", 1.0, deadline) is False
    assert elapsed < 0.1


def test_concurrent_scoring_from_threads(graders):
    tasks, samples = graders
    task, sample = tasks["math500"], samples["math500"]
    right = "Final Answer: The final answer is $" + sample.meta["answer"] + "$. I hope it is correct."
    outputs = [right, "\\boxed{9^{9^{9^9}}}", right, "no answer"] * 3
    errors: list[BaseException] = []

    def work(out):
        try:
            return task.score(sample, out)["exact_match_flex"]
        except BaseException as e:  # pragma: no cover - the assertion below reports it
            errors.append(e)

    with ThreadPoolExecutor(max_workers=4) as pool:
        flex = list(pool.map(work, outputs))
    assert not errors and flex == [1.0, 0.0, 1.0, 0.0] * 3
    assert threading.active_count() >= 1


# ---------------------------------------------------------------------------------------------
# MATH: the whole scoring call ends by `MathScorer.budget_s` (issue #14)

_BUDGET_S = MathScorer().budget_s
_FRAC_5000 = "\\frac{" * 500 + "1" + "}{2}" * 500  # 5,001 characters: too long to compare
_FRAC_990 = "\\frac{" * 99 + "1" + "}{2}" * 99  # just under the length limit: compared
MATH_ADVERSARIAL = {
    "tower_9": "\\boxed{9^{9^{9^{9}}}}",
    "tower_10": "\\boxed{10^{10^{10}}}",
    "tower_2": "\\boxed{2^{2^{2^{2^{2^{2}}}}}}",
    "factorials": "\\boxed{10!!!!}",
    "tower_in_dollars": "\\boxed{\\$9^{9^{9^{9}}}}",
    "frac_5000": "\\boxed{" + _FRAC_5000 + "}",
    "frac_990": "\\boxed{" + _FRAC_990 + "}",
    # two candidates (Minerva sentence, last box) that each would use a full timeout
    "two_towers": "Final Answer: The final answer is $9^{9^{9^{9}}}$. I hope it is correct. \\boxed{10^{10^{10}}}",
}


@pytest.mark.parametrize("name", sorted(MATH_ADVERSARIAL))
def test_math_calls_end_by_their_budget(graders, name):
    output = MATH_ADVERSARIAL[name]
    reward, elapsed = _timed(verify, output, "math", "3")
    assert elapsed < 2 * _BUDGET_S and reward == 0.0, f"reward took {elapsed:.2f}s (budget {_BUDGET_S}s)"
    score, elapsed = _timed(MathScorer().score, output, "3")
    assert elapsed < 2 * _BUDGET_S, f"score took {elapsed:.2f}s (budget {_BUDGET_S}s)"
    assert (score["exact_match"], score["exact_match_flex"]) == (0.0, 0.0)
    assert verify("\\boxed{\\frac{6}{2}}", "math", "3") == 1.0  # a killed worker was replaced


def test_math_budget_holds_with_more_callers_than_workers(graders):
    """Waiting for a free worker is charged to the call: 8 callers, a 4-worker pool, all stuck."""

    def reward(output):
        return _timed(verify, output, "math", "3")

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(reward, [MATH_ADVERSARIAL["tower_9"]] * 8))
    assert [value for value, _ in results] == [0.0] * 8
    assert max(elapsed for _, elapsed in results) < 2 * _BUDGET_S, results


def test_waiting_for_a_worker_counts_against_the_timeout():
    checker = SymbolicChecker(max_workers=1)
    try:
        assert checker.equal("\\frac{1}{2}", "0.5")  # start-up happens here, uncharged

        def compare(_):
            return _timed(checker.equal, "1", "9^{9^{9^9}}", 0.5)

        with ThreadPoolExecutor(max_workers=3) as pool:
            results = list(pool.map(compare, range(3)))
        assert [r for r, _ in results] == [False] * 3
        # one worker: queued calls used to take 0.5 s more per caller ahead of them
        assert max(elapsed for _, elapsed in results) < 1.0, results
        assert checker.equal("\\frac{1}{2}", "0.5")
    finally:
        checker.close()


def test_start_up_is_not_charged_to_the_deadline():
    checker = SymbolicChecker(max_workers=1)
    try:
        # 0.3 s is far less than the zygote's start-up; the comparison itself takes milliseconds.
        assert checker.equal("\\frac{1}{2}", "0.5", 1.0, Deadline(0.3)) is True
    finally:
        checker.close()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to list processes")
def test_a_dead_zygote_costs_one_comparison_then_restarts():
    checker = SymbolicChecker(max_workers=1)
    try:
        assert checker.equal("\\frac{1}{2}", "0.5")
        os.kill(checker._zygote.pid, 9)
        checker._zygote.wait()
        # the idle worker outlives the zygote; once it is killed no replacement can be forked
        result, elapsed = _timed(checker.equal, "1", "10^{10^{10}}", 0.3)
        assert result is False and elapsed < 0.6
        result, elapsed = _timed(checker.equal, "\\frac{1}{2}", "0.5", 1.0, Deadline(1.0))
        assert result is False and elapsed < 1.0  # no waiting for a restart inside the budget
        assert checker.equal("\\frac{1}{2}", "0.5")  # the relaunched zygote is waited for
    finally:
        checker.close()
