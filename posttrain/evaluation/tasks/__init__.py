"""Evaluation tasks and verifiable rewards (GSM8K, MATH / MATH-500, IFEval).

    task = get_task("gsm8k")
    samples = task.load()                       # ../shared/data/gsm8k/test.jsonl by default
    prompt = render_prompt(tokenizer, samples[0])
    scores = [task.score(s, output) for s, output in zip(samples, outputs)]
    metrics = task.aggregate(scores, samples)   # metrics[task.primary_metric]
"""

from __future__ import annotations

from typing import Any, Callable

from posttrain.evaluation.tasks.base import GenerationConfig, LoglikOutput, Sample, Task, render_prompt
from posttrain.evaluation.tasks.gsm8k import GSM8KTask
from posttrain.evaluation.tasks.ifeval import IFEvalTask
from posttrain.evaluation.tasks.minerva_math import MathTask
from posttrain.evaluation.tasks.verifiable import VerifiableTask

TASKS: dict[str, Callable[..., Task]] = {
    "gsm8k": GSM8KTask,
    "math500": lambda **kw: MathTask(name="math500", **kw),
    "math": lambda **kw: MathTask(name="math", **kw),
    "ifeval": IFEvalTask,
    "verifiable": VerifiableTask,  # any file of RLVR rows, graded by each row's verifier
}


def get_task(name: str, **options: Any) -> Task:
    """A task by registry name (`gsm8k`, `math500`, `math`, `ifeval`, `verifiable`); options go to its
    dataclass. `verifiable:NAME` is a `verifiable` task reported (and given its data) as NAME."""
    key = name.strip().lower()
    if key.startswith("verifiable:") and len(key) > len("verifiable:"):  # a named held-out RLVR set
        return VerifiableTask(name=key.split(":", 1)[1], **options)
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[key](**options)


__all__ = ["GenerationConfig", "LoglikOutput", "Sample", "Task", "TASKS", "get_task", "render_prompt"]
