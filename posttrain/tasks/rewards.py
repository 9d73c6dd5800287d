"""Verifiable rewards for RLVR rows in the Tülu 3 format (`messages`, `ground_truth`, `dataset`).

`get_verifier(row["dataset"])` returns a `(completion, ground_truth) -> float in [0, 1]` grader;
`verifiable_reward` scales it to the reward Tülu 3 used (10 for a verified answer, else 0).
The graders are the eval tasks' own (`reward` of gsm8k / minerva_math / ifeval), so training and
evaluation agree on what "correct" means.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

from posttrain.tasks import gsm8k
from posttrain.tasks.ifeval import IFEvalTask
from posttrain.tasks.minerva_math import MathScorer
from posttrain.tasks.rlvr_constraints import constraint_reward

Verifier = Callable[[str, Any], float]

_MATH = MathScorer()
_IFEVAL = IFEvalTask()


def math_reward(completion: str, ground_truth: Any) -> float:
    return _MATH.reward(completion, ground_truth)


def ifeval_reward(completion: str, ground_truth: Any) -> float:
    """Tülu 3 rows name one constraint function (`func_name`); later open-instruct rows list
    IFEval instruction ids with kwargs (scored as the fraction followed)."""
    if _is_func_name(ground_truth):
        return constraint_reward(completion, ground_truth)
    return _IFEVAL.reward(completion, ground_truth)


def _is_func_name(ground_truth: Any) -> bool:
    if isinstance(ground_truth, Mapping):
        return "func_name" in ground_truth
    if isinstance(ground_truth, str):
        try:
            value = json.loads(ground_truth)
        except ValueError:
            return False
        return isinstance(value, dict) and "func_name" in value
    return False


VERIFIERS: dict[str, Verifier] = {
    "gsm8k": gsm8k.reward,
    "math": math_reward,
    "ifeval": ifeval_reward,
}
ALIASES = {
    "gsm": "gsm8k",
    "gsm8k_train": "gsm8k",
    "math500": "math",
    "math_500": "math",
    "minerva_math": "math",
    "hendrycks_math": "math",
    "numina_math": "math",
    "if": "ifeval",
    "ifeval_old": "ifeval",
    "instruction_following": "ifeval",
}


def get_verifier(dataset: str) -> Verifier:
    """The grader for a row's `dataset` value (case-insensitive, aliases allowed)."""
    key = str(dataset).strip().lower()
    key = ALIASES.get(key, key)
    if key not in VERIFIERS:
        known = sorted(set(VERIFIERS) | set(ALIASES))
        raise ValueError(f"no verifier for dataset {dataset!r} (known: {known})")
    return VERIFIERS[key]


def verify(completion: str, dataset: Any, ground_truth: Any) -> float:
    """Score in [0, 1]. A row may list several (dataset, ground_truth) pairs: their mean."""
    if isinstance(dataset, (list, tuple)):
        truths = ground_truth if isinstance(ground_truth, (list, tuple)) else [ground_truth] * len(dataset)
        if len(truths) != len(dataset) or not dataset:
            raise ValueError(f"{len(dataset)} datasets but {len(truths)} ground truths")
        return sum(verify(completion, d, t) for d, t in zip(dataset, truths)) / len(dataset)
    if isinstance(ground_truth, (list, tuple)) and len(ground_truth) == 1:
        ground_truth = ground_truth[0]
    return get_verifier(dataset)(completion, ground_truth)


def verifiable_reward(completion: str, row: Mapping[str, Any], correct_value: float = 10.0) -> float:
    """`correct_value` times the verifier score of `completion` for an RLVR `row`."""
    for field in ("dataset", "ground_truth"):
        if field not in row:
            raise ValueError(f"RLVR row is missing field '{field}' (has {sorted(row)})")
    return correct_value * verify(completion, row["dataset"], row["ground_truth"])
