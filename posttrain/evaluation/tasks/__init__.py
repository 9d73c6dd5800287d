"""Evaluation tasks and verifiable rewards: Tülu 3's development suite (GSM8K, MATH, IFEval, MMLU,
BBH, DROP, PopQA, TruthfulQA, HumanEval(+), AlpacaEval, safety) and unseen suite (MMLU-Pro, GPQA,
AGIEval, IFBench, Deepmind Mathematics, BigCodeBench), one module each.

    task = get_task("gsm8k")
    samples = task.load()                       # ../shared/data/gsm8k/test.jsonl by default
    prompt = render_prompt(tokenizer, samples[0])
    scores = [task.score(s, output) for s, output in zip(samples, outputs)]
    metrics = task.aggregate(scores, samples)   # metrics[task.primary_metric]
"""

from __future__ import annotations

from typing import Any, Callable

from posttrain.evaluation.tasks.agieval import AGIEvalTask
from posttrain.evaluation.tasks.alpaca_eval import AlpacaEvalTask
from posttrain.evaluation.tasks.base import GenerationConfig, LoglikOutput, Sample, Task, render_prompt
from posttrain.evaluation.tasks.bbh import BBHTask
from posttrain.evaluation.tasks.bigcodebench import BigCodeBenchTask
from posttrain.evaluation.tasks.chat_nll import ChatNLLTask
from posttrain.evaluation.tasks.dm_math import DMMathTask
from posttrain.evaluation.tasks.drop import DROPTask
from posttrain.evaluation.tasks.gpqa import GPQATask
from posttrain.evaluation.tasks.gsm8k import GSM8KTask
from posttrain.evaluation.tasks.humaneval import HumanEvalPlusTask, HumanEvalTask
from posttrain.evaluation.tasks.ifbench import IFBenchTask
from posttrain.evaluation.tasks.ifeval import IFEvalTask
from posttrain.evaluation.tasks.minerva_math import MathTask
from posttrain.evaluation.tasks.mmlu import MMLUCoTTask, MMLUMCTask
from posttrain.evaluation.tasks.mmlu_pro import MMLUProTask
from posttrain.evaluation.tasks.popqa import PopQATask
from posttrain.evaluation.tasks.preference import PreferenceTask
from posttrain.evaluation.tasks.truthfulqa import TruthfulQATask
from posttrain.evaluation.tasks.verifiable import VerifiableTask
from posttrain.evaluation.tasks.xstest import HarmBenchRefusalTask, XSTestTask

TASKS: dict[str, Callable[..., Task]] = {
    "gsm8k": GSM8KTask,
    "math500": lambda **kw: MathTask(name="math500", **kw),
    "math": lambda **kw: MathTask(name="math", **kw),
    "ifeval": IFEvalTask,
    "verifiable": VerifiableTask,  # any file of RLVR rows, graded by each row's verifier
    # development suite (OLMES ids in each module)
    "mmlu": MMLUCoTTask,  # mmlu:cot::summarize, the number Tülu 3 reports
    "mmlu:mc": MMLUMCTask,  # mmlu:mc::tulu, 5-shot log-likelihood of the answer letter
    "bbh": BBHTask,
    "drop": DROPTask,
    "popqa": PopQATask,
    "truthfulqa": TruthfulQATask,  # MC2, log-likelihood
    "humaneval": HumanEvalTask,  # pass@1 and pass@10 from 20 samples, run in evaluation/sandbox.py
    "humaneval_greedy": lambda **kw: HumanEvalTask(name="humaneval_greedy", greedy=True, **kw),
    "humanevalplus": HumanEvalPlusTask,
    "humanevalplus_greedy": lambda **kw: HumanEvalPlusTask(name="humanevalplus_greedy", greedy=True, **kw),
    "alpaca_eval": AlpacaEvalTask,  # judged: needs eval.judge
    "xstest": XSTestTask,  # over-refusal / refusal, string-match classifier by default
    "harmbench": HarmBenchRefusalTask,  # refusal rate on HarmBench behaviours (a proxy, not ASR)
    # unseen suite
    "mmlu_pro": MMLUProTask,
    "gpqa": GPQATask,
    "agieval": AGIEvalTask,
    "ifbench": IFBenchTask,
    "dm_math": DMMathTask,
    "bigcodebench": BigCodeBenchTask,
    "bigcodebench_hard": lambda **kw: BigCodeBenchTask(name="bigcodebench_hard", subset="hard", **kw),
    # what a training stage did, on the rows it held out (the pipeline passes them)
    "chat_nll": ChatNLLTask,  # SFT: held-out NLL of the assistant turn
    "preference": PreferenceTask,  # DPO: held-out chosen-vs-rejected likelihood accuracy and margin
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
