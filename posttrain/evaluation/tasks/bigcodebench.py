"""BigCodeBench (Zhuo et al., 2024), the "instruct" split, greedy pass@1, run in the sandbox.

The Tülu 3 unseen suite (OLMES `tulu_3_unseen`) runs `bigcodebench_hard::tulu` (primary, the
148-task hard subset) and `bigcodebench::tulu` (the full 1140), both chat-formatted with
`prompt_variant: instruct`. We use BigCodeBench's own chat prompt for that split (its
`make_raw_chat_prompt`); OLMES's exact wording could not be checked here (see the report):

    user:      "Please provide a self-contained Python script that solves the following problem in a
                markdown code block:\\n" + instruct_prompt.strip() + "\\n"
    assistant: "Below is a Python script with a self-contained function that solves the problem and
                passes corresponding tests:\\n```python\\n"          (generation continues here)

`split="complete"` puts the docstring prompt in a fenced block instead:
`prefix + "\\n```\\n" + complete_prompt.strip() + "\\n```\\n"`.

Decoding: greedy, 1280 new tokens (BigCodeBench's default), stop at "\\n```" and BigCodeBench's
extra stops ("\\nif __name__", "\\ndef main(", "\\nprint(").

Extraction: cut at the first stop; "calibrated" as BigCodeBench reports by default (an answer that
starts inside the function body gets `complete_prompt` prepended); then, where the code parses,
only top-level imports, definitions and assignments are kept (BigCodeBench's sanitizer keeps the
same kinds of statements; it also drops definitions the entry point does not reach, which we keep).

Execution: `code + "\\n" + test`, then the `TestCases` unittest class is run; the sample passes
when no test fails or errors (BigCodeBench's rule). Module name `__test__`, TZ=UTC, one BLAS
thread, 240 s per task (BigCodeBench's default), 30 GiB address space. Unlike BigCodeBench's own
harness there is no network in the sandbox: tasks that really fetch URLs fail (most mock them).

Data: no offline copy. `hf:bigcode/bigcodebench-hard@<rev>` or `hf:bigcode/bigcodebench@<rev>`
(Apache-2.0; HF splits are dataset versions and `version` picks one: default v0.1.2, assumed to
be the one of late 2024, as OLMES's pin could not be checked), or a local .jsonl with the same
fields: task_id, instruct_prompt, complete_prompt, code_prompt, test, entry_point.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from typing import Any

from posttrain.evaluation.sandbox import Limits, run_many
from posttrain.evaluation.tasks.base import GenerationConfig, Sample, as_text, mean, require_field, take
from posttrain.evaluation.tasks.humaneval import as_outputs, problem_scores, read_rows, truncate_at_stop

INSTRUCTION_PREFIX = ("Please provide a self-contained Python script that solves the following problem in a "
                      "markdown code block:")
RESPONSE_PREFIX = ("Below is a Python script with a self-contained function that solves the problem and passes "
                   "corresponding tests:")
ASSISTANT_PREFIX = RESPONSE_PREFIX + "\n```python\n"
STOP = ("\n```", "\nif __name__", "\ndef main(", "\nprint(")
MAX_NEW_TOKENS = 1280
TIMEOUT_S = 240.0
HF_IDS = {"full": "bigcode/bigcodebench", "hard": "bigcode/bigcodebench-hard"}
ENV = {"TZ": "UTC", "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0"}
_KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)

# Runs the task's unittest class and fails the program unless every test passed.
RUN_TESTS = """
import unittest as _bcb_unittest
_bcb_result = _bcb_unittest.TestResult()
_bcb_unittest.TestLoader().loadTestsFromTestCase(TestCases).run(_bcb_result)
_bcb_issues = _bcb_result.failures + _bcb_result.errors
if _bcb_issues:
    raise AssertionError("%d of %d tests failed: %s" % (len(_bcb_issues), _bcb_result.testsRun,
                         ", ".join(t.id().rsplit(".", 1)[-1] for t, _ in _bcb_issues)))
"""


def user_turn(row: dict[str, str], split: str) -> str:
    if split == "instruct":
        return f"{INSTRUCTION_PREFIX}\n{row['instruct_prompt'].strip()}\n"
    return f"{INSTRUCTION_PREFIX}\n```\n{row['complete_prompt'].strip()}\n```\n"


def sanitize(code: str) -> str:
    """Top-level imports, definitions and assignments only (example calls and `__main__` blocks
    dropped); code that does not parse is returned unchanged (it fails when run)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return code
    lines = code.splitlines()
    kept = []
    for node in tree.body:
        if isinstance(node, _KEEP):
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            kept.append("\n".join(lines[first - 1:node.end_lineno]))
    return "\n".join(kept)


def extract_code(output: str, complete_prompt: str, stops: tuple[str, ...] = STOP) -> str:
    code = truncate_at_stop(as_text(output), stops)
    first = next((line for line in code.splitlines() if line.strip()), "")
    if first[:1] in (" ", "\t"):  # the answer continues the signature: calibrate as BigCodeBench does
        code = complete_prompt + code
    return sanitize(code)


def bcb_program(code: str, test: str) -> str:
    return code + "\n" + test + "\n" + RUN_TESTS


@dataclass
class BigCodeBenchTask:
    name: str = "bigcodebench"
    subset: str = "full"  # full (1140 tasks) | hard (148)
    split: str = "instruct"  # instruct (Tülu 3) | complete
    version: str = "v0.1.2"  # the HF split (dataset version) for hf: sources
    timeout_s: float = TIMEOUT_S
    memory_mb: int = 30 * 1024
    max_procs: int = 512
    workers: int | None = None
    python: str | None = None  # an interpreter with BigCodeBench's libraries (default: this one)
    generation: GenerationConfig = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, stop=STOP)
    primary_metric: str = field(default="pass_at_1", init=False)

    def __post_init__(self) -> None:
        if self.subset not in HF_IDS:
            raise ValueError(f"{self.name}: subset must be one of {sorted(HF_IDS)}, got {self.subset!r}")
        if self.split not in ("instruct", "complete"):
            raise ValueError(f"{self.name}: split must be 'instruct' or 'complete', got {self.split!r}")

    @property
    def limits(self) -> Limits:
        return Limits(timeout_s=self.timeout_s, memory_mb=self.memory_mb, max_procs=self.max_procs,
                      max_open_files=1024)

    def default_path(self) -> str:
        raise ValueError(f"{self.name}: no offline copy of BigCodeBench: pass --data {self.name}=PATH (.jsonl with "
                         f"task_id, instruct_prompt, complete_prompt, code_prompt, test, entry_point) or "
                         f"hf:{HF_IDS[self.subset]}@<revision>")

    def load(self, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Sample]:
        source = path if path is not None else self.default_path()
        return [self._sample(where, row) for where, row in take(read_rows(source, hf_split=self.version), limit)]

    def _sample(self, where: str, row: dict) -> Sample:
        fields = ("task_id", "instruct_prompt", "complete_prompt", "code_prompt", "test", "entry_point")
        problem = {name: require_field(row, name, where) for name in fields}
        if "class TestCases" not in problem["test"]:
            raise ValueError(f"{where}: field 'test' defines no TestCases class")
        ground_truth = {k: problem[k] for k in ("task_id", "complete_prompt", "test", "entry_point")}
        return Sample(id=problem["task_id"], messages=[{"role": "user", "content": user_turn(problem, self.split)}],
                      assistant_prefix=ASSISTANT_PREFIX, ground_truth=ground_truth,
                      meta={"task_id": problem["task_id"], "libs": row.get("libs")})

    def _run(self, programs: list[str]):
        return run_many(programs, self.limits, workers=self.workers, module="__test__", extra_env=ENV,
                        python=self.python)

    def score_batch(self, samples: list[Sample], outputs: list[Any]) -> list[dict[str, Any]]:
        if len(samples) != len(outputs):
            raise ValueError(f"{self.name}: {len(outputs)} outputs for {len(samples)} samples")
        codes = [[extract_code(o, s.ground_truth["complete_prompt"], self.generation.stop) for o in as_outputs(outs)]
                 for s, outs in zip(samples, outputs)]
        results = self._run([bcb_program(c, s.ground_truth["test"]) for s, cs in zip(samples, codes) for c in cs])
        scores, at = [], 0
        for cs in codes:
            row = problem_scores(results[at:at + len(cs)], (1,))
            row["extracted"] = cs[0] if len(cs) == 1 else cs
            scores.append(row)
            at += len(cs)
        return scores

    def score(self, sample: Sample, output: Any) -> dict[str, Any]:
        return self.score_batch([sample], [output])[0]

    def aggregate(self, scores: list[dict[str, Any]], samples: list[Sample]) -> dict[str, float]:
        return {"pass_at_1": mean(float(s["pass_at_1"]) for s in scores), "num_samples": float(len(scores))}

    def reward(self, completion: str, ground_truth: Any) -> float:
        """1.0 when every unit test of the task passes."""
        if not isinstance(ground_truth, dict):
            raise ValueError(f"{self.name}: ground truth should be a task dict, got {type(ground_truth).__name__}")
        where = f"{self.name} ground truth"
        prompt, test = require_field(ground_truth, "complete_prompt", where), require_field(ground_truth, "test", where)
        code = extract_code(completion, prompt, self.generation.stop)
        return float(self._run([bcb_program(code, test)])[0].passed)
