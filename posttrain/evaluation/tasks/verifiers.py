"""Verifiable rewards for RLVR rows in the Tülu 3 format (`messages`, `ground_truth`, `dataset`).

`get_verifier(row["dataset"])` returns a `(completion, ground_truth) -> float in [0, 1]` grader;
`verifiable_reward` scales it to the reward Tülu 3 used (10 for a verified answer, else 0).
The graders are the eval tasks' own (`reward` of gsm8k / minerva_math / ifeval), so training and
evaluation agree on what "correct" means; `code` runs the completion's program against the row's
tests in the sandbox (`code_exec.py`). `options` give a verifier keyword arguments by name
({"code": {"mode": "all_pass"}}); `verify_many` runs the code rows of a batch in one pool.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Callable, Mapping, Sequence

from posttrain.evaluation.tasks import code_exec, gsm8k, ifeval
from posttrain.evaluation.tasks.base import as_text, shown
from posttrain.evaluation.tasks.ifeval import IFEvalTask
from posttrain.evaluation.tasks.minerva_math import MathScorer
from posttrain.evaluation.tasks.rlvr_constraints import constraint_reward, parse_constraint

Verifier = Callable[..., float]  # (completion, ground_truth, **options) -> score in [0, 1]
VerifierOptions = Mapping[str, Mapping[str, Any]]  # verifier name -> its keyword arguments

_MATH = MathScorer()
_IFEVAL = IFEvalTask()


def math_reward(completion: str, ground_truth: Any) -> float:
    return _MATH.reward(completion, ground_truth)


def validate_math_ground_truth(ground_truth: Any) -> None:
    # MathScorer.reward compares with the text of the ground truth and refuses an empty one.
    usable = isinstance(ground_truth, (str, int, float)) and not isinstance(ground_truth, bool)
    if not usable or not as_text(ground_truth).strip():
        raise ValueError(f'expected the final answer as a non-empty string (such as "\\frac{{1}}{{2}}") '
                         f"or a number, got {shown(ground_truth)}")


def ifeval_reward(completion: str, ground_truth: Any) -> float:
    """Tülu 3 rows name one constraint function (`func_name`); later open-instruct rows list
    IFEval instruction ids with kwargs (scored as the fraction followed)."""
    if _is_func_name(ground_truth):
        return constraint_reward(completion, ground_truth)
    return _IFEVAL.reward(completion, ground_truth)


def validate_ifeval_ground_truth(ground_truth: Any) -> None:
    """Raise ValueError unless `ifeval_reward` can grade `ground_truth`, dispatching as it does."""
    if _is_func_name(ground_truth):
        validate_constraint_ground_truth(ground_truth)
        return
    ifeval.validate_ground_truth(ground_truth, 'a Tülu 3 constraint {"func_name": ..., its arguments} or '
                                               + ifeval.IFEVAL_FORM)


# What rlvr_constraints._quantified compares with; any other quantifier never matches.
_QUANTIFIERS = ("at least", "at most", "around")
# The constraint functions' annotations (strings: the module uses postponed annotations).
_ARG_TYPES = {"int": int, "str": str, "list[str]": list}


def validate_constraint_ground_truth(ground_truth: Any) -> None:
    """`parse_constraint` (the reward's own parsing: a known func_name, its argument names), then
    the argument types: a wrong type makes the function raise on every response, and
    `constraint_reward` scores that 0 forever."""
    try:
        func, args = parse_constraint(ground_truth)
    except TypeError:  # an unhashable func_name
        raise ValueError(f"'func_name' must name a constraint function, got {shown(ground_truth)}") from None
    params = inspect.signature(func).parameters
    for name, value in args.items():
        annotation = params[name].annotation
        want = _ARG_TYPES.get(annotation)
        wrong = want is not None and (not isinstance(value, want) or isinstance(value, bool))
        if not wrong and annotation == "list[str]":
            wrong = not all(isinstance(v, str) for v in value)
        if wrong:
            raise ValueError(f"{func.__name__}: argument '{name}' must be {annotation}, got {shown(value)}")
    if "quantifier" in args and args["quantifier"] not in _QUANTIFIERS:
        raise ValueError(f"{func.__name__}: 'quantifier' must be one of {list(_QUANTIFIERS)}, "
                         f"got {shown(args['quantifier'])}")


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
    "code": code_exec.code_reward,
}
# Verifiers that grade many rows at once: (completions, ground truths, **options) -> scores.
BATCH_VERIFIERS: dict[str, Callable[..., list[float]]] = {"code": code_exec.code_scores}
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
    "mbpp": "code",
    "python": "code",
}


# What each verifier can grade, checked when rows are loaded rather than when first rewarded.
VALIDATORS: dict[str, Callable[[Any], None]] = {
    "gsm8k": gsm8k.validate_ground_truth,
    "math": validate_math_ground_truth,
    "ifeval": validate_ifeval_ground_truth,
    "code": code_exec.validate_ground_truth,
}


def _verifier_name(dataset: str) -> str:
    key = str(dataset).strip().lower()
    key = ALIASES.get(key, key)
    if key not in VERIFIERS:
        known = sorted(set(VERIFIERS) | set(ALIASES))
        raise ValueError(f"no verifier for dataset {dataset!r} (known: {known})")
    return key


def get_verifier(dataset: str) -> Verifier:
    """The grader for a row's `dataset` value (case-insensitive, aliases allowed)."""
    return VERIFIERS[_verifier_name(dataset)]


def validate_ground_truth(dataset: Any, ground_truth: Any) -> None:
    """Raise ValueError unless `verify` can grade `ground_truth` for `dataset`: the same pairing of
    datasets with ground truths, then each verifier's own check. The message starts with what
    it is about ("dataset 'gsm8k': expected a number ..."), for callers to prefix a location."""
    if isinstance(dataset, (list, tuple)):
        truths = ground_truth if isinstance(ground_truth, (list, tuple)) else [ground_truth] * len(dataset)
        if len(truths) != len(dataset) or not dataset:
            raise ValueError(f"{len(dataset)} datasets: got {len(truths)} ground truths, expected one per dataset")
        for d, t in zip(dataset, truths):
            validate_ground_truth(d, t)
        return
    if isinstance(ground_truth, (list, tuple)) and len(ground_truth) == 1:
        ground_truth = ground_truth[0]
    validator = VALIDATORS[_verifier_name(dataset)]
    try:
        validator(ground_truth)
    except ValueError as e:
        raise ValueError(f"dataset {dataset!r}: {e}") from None


def verify(completion: str, dataset: Any, ground_truth: Any, options: VerifierOptions | None = None) -> float:
    """Score in [0, 1]. A row may list several (dataset, ground_truth) pairs: their mean."""
    if isinstance(dataset, (list, tuple)):
        truths = ground_truth if isinstance(ground_truth, (list, tuple)) else [ground_truth] * len(dataset)
        if len(truths) != len(dataset) or not dataset:
            raise ValueError(f"{len(dataset)} datasets but {len(truths)} ground truths")
        return sum(verify(completion, d, t, options) for d, t in zip(dataset, truths)) / len(dataset)
    if isinstance(ground_truth, (list, tuple)) and len(ground_truth) == 1:
        ground_truth = ground_truth[0]
    name = _verifier_name(dataset)
    return VERIFIERS[name](completion, ground_truth, **(options or {}).get(name, {}))


def verify_many(completions: Sequence[str], datasets: Sequence[Any], ground_truths: Sequence[Any],
                options: VerifierOptions | None = None) -> list[float]:
    """`verify` of each (completion, dataset, ground truth); rows of one batch-capable verifier
    (code) are graded together, the rest one by one."""
    if not len(completions) == len(datasets) == len(ground_truths):
        raise ValueError(f"verify_many: {len(completions)} completions, {len(datasets)} datasets and "
                         f"{len(ground_truths)} ground truths")
    scores: list[float | None] = [None] * len(completions)
    batches: dict[str, list[int]] = {}
    for i, d in enumerate(datasets):
        name = None if isinstance(d, (list, tuple)) else _verifier_name(d)
        if name in BATCH_VERIFIERS:
            batches.setdefault(name, []).append(i)
        else:
            scores[i] = verify(completions[i], d, ground_truths[i], options)
    for name, idx in batches.items():
        truths = [ground_truths[i] for i in idx]
        truths = [t[0] if isinstance(t, (list, tuple)) and len(t) == 1 else t for t in truths]  # as verify
        got = BATCH_VERIFIERS[name]([completions[i] for i in idx], truths, **(options or {}).get(name, {}))
        for i, s in zip(idx, got):
            scores[i] = s
    return scores  # type: ignore[return-value]


def verifiable_reward(completion: str, row: Mapping[str, Any], correct_value: float = 10.0) -> float:
    """`correct_value` times the verifier score of `completion` for an RLVR `row`."""
    for field in ("dataset", "ground_truth"):
        if field not in row:
            raise ValueError(f"RLVR row is missing field '{field}' (has {sorted(row)})")
    return correct_value * verify(completion, row["dataset"], row["ground_truth"])
