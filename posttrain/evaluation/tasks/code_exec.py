"""The `code` verifier: run the program in a completion against a row's tests in the sandbox.

Rows are open-instruct's code rows: `dataset: code`, `ground_truth` a list of test statements
(`"assert add(1, 2) == 3"`), or a JSON string of one. The program is the completion's fenced
Python (every closed ```python / ```py / untagged block, in order; an unclosed one to the end of
the text; without fences the raw text). Each test runs after the program in its own sandboxed
process (`evaluation/sandbox.py`: fresh process, rlimits, wall-clock timeout, no network, no
subprocesses), and passes only if the process runs to its end, so a syntax error, an exception,
a timeout, an infinite loop or an early `sys.exit` fail it.

Score (mode): "fraction", the share of tests passed (one process per test), or "all_pass", 1 when
one process running every test passes. Evaluation (`verifiable` task) counts a row correct at
score 1, i.e. when all its tests pass, in either mode.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal, Sequence

from posttrain.evaluation.sandbox import Limits, run_many
from posttrain.evaluation.tasks.base import shown

CodeMode = Literal["fraction", "all_pass"]
TIMEOUT_S = 3.0
MEMORY_MB = 2048
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[ \t]*\n(.*?)```", re.S)
_OPEN = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n", re.I)
_PYTHON_TAGS = ("", "python", "python3", "py")


def extract_program(completion: str) -> str:
    """The Python program a completion gives (rules in the module docstring)."""
    blocks = [m.group(2) for m in _FENCE.finditer(completion) if m.group(1).lower() in _PYTHON_TAGS]
    if blocks:
        return "\n\n".join(b.strip("\n") for b in blocks) + "\n"
    if "```" in completion:  # an opening fence cut off by the length limit: the rest is code
        opened = list(_OPEN.finditer(completion))
        if opened:
            return completion[opened[-1].end():].rstrip("`\n") + "\n"
    return completion.strip("\n") + "\n"


def parse_tests(ground_truth: Any) -> list[str]:
    """A row's tests: a list of non-empty strings, a JSON string of one, or a single test string."""
    tests = ground_truth
    if isinstance(tests, str):
        try:
            loaded = json.loads(tests)
        except ValueError:
            loaded = None
        tests = loaded if isinstance(loaded, list) else [tests]
    if not isinstance(tests, (list, tuple)) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
        raise ValueError(f"expected the tests as a non-empty list of statements such as "
                         f"[\"assert add(1, 2) == 3\"] (or a JSON string of one), got {shown(ground_truth)}")
    return list(tests)


def validate_ground_truth(ground_truth: Any) -> None:
    """Raise ValueError unless `code_scores` can grade `ground_truth`; the tests must parse."""
    for test in parse_tests(ground_truth):
        try:
            compile(test, "<test>", "exec")
        except SyntaxError as e:
            raise ValueError(f"test {shown(test)} is not valid Python: {e.msg}") from None


def test_program(program: str, tests: Sequence[str]) -> str:
    return program + "\n\n" + "\n".join(tests) + "\n"


def code_scores(completions: Sequence[str], ground_truths: Sequence[Any], mode: CodeMode = "fraction",
                timeout_s: float = TIMEOUT_S, workers: int | None = None) -> list[float]:
    """Scores in [0, 1] for (completion, tests) pairs; every process of the batch in one pool."""
    if mode not in ("fraction", "all_pass"):
        raise ValueError(f"code verifier: mode must be 'fraction' or 'all_pass', got {mode!r}")
    if len(completions) != len(ground_truths):
        raise ValueError(f"code_scores: {len(completions)} completions but {len(ground_truths)} ground truths")
    programs, owners = [], []
    for i, (completion, truth) in enumerate(zip(completions, ground_truths)):
        program, tests = extract_program(completion), parse_tests(truth)
        groups = [tests] if mode == "all_pass" else [[t] for t in tests]
        programs += [test_program(program, g) for g in groups]
        owners += [i] * len(groups)
    limits = Limits(timeout_s=timeout_s, memory_mb=MEMORY_MB, allow_subprocess=False)
    passed, runs = [0] * len(completions), [0] * len(completions)
    for owner, result in zip(owners, run_many(programs, limits, workers=workers)):
        passed[owner] += result.passed
        runs[owner] += 1
    return [p / n for p, n in zip(passed, runs)]


def code_reward(completion: str, ground_truth: Any, mode: CodeMode = "fraction", timeout_s: float = TIMEOUT_S) -> float:
    return code_scores([completion], [ground_truth], mode, timeout_s)[0]
