"""IFEval: 0-shot, verifiable instructions, prompt- and instruction-level accuracy, strict and
loose (EVAL_SPEC.md §3; OLMES `ifeval::tulu`, headline `prompt_level_loose_acc`).

Strict: an instruction is followed if the stripped response is non-empty and its checker passes.
Loose: the same on any of 8 variants of the response (with `*` removed and/or the first and/or
last line dropped). The checkers live in `ifeval_checks.py`.
"""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass
from typing import Any, Callable

from posttrain.evaluation.tasks.base import (
    GenerationConfig,
    Sample,
    as_text,
    iter_rows,
    mean,
    require_field,
    shared_data_dir,
    take,
)
from posttrain.evaluation.tasks.ifeval_checks import build_checker

# Far above what 2048 generated tokens can produce; past it a response is graded as following
# nothing rather than spending minutes in the sentence tokenizer (see docs/EVAL_NOTES.md).
MAX_RESPONSE_CHARS = 50_000


def loose_variants(response: str) -> list[str]:
    """The 8 responses loose accuracy tries, in the reference's order."""
    lines = response.split("\n")
    drop_first = "\n".join(lines[1:]).strip()
    drop_last = "\n".join(lines[:-1]).strip()
    drop_both = "\n".join(lines[1:-1]).strip()
    return [
        response,
        response.replace("*", ""),
        drop_first,
        drop_last,
        drop_both,
        drop_first.replace("*", ""),
        drop_last.replace("*", ""),
        drop_both.replace("*", ""),
    ]


def follows(check: Callable[[str], bool], response: str) -> bool:
    return bool(response.strip()) and check(response)


def build_checkers(ground_truth: dict[str, Any], where: str = "") -> list[Callable[[str], bool]]:
    ids = ground_truth["instruction_id_list"]
    kwargs = ground_truth.get("kwargs") or [{}] * len(ids)
    if len(kwargs) != len(ids):
        raise ValueError(f"{where}: {len(ids)} instruction ids but {len(kwargs)} kwargs")
    prompt = ground_truth.get("prompt", "")
    return [build_checker(i, kw, prompt, f"{where} ({i})") for i, kw in zip(ids, kwargs)]


def evaluate_response(
    ground_truth: dict[str, Any], response: str, max_chars: int = MAX_RESPONSE_CHARS
) -> dict[str, Any]:
    """Per-instruction strict and loose results for one response."""
    checkers = build_checkers(ground_truth)
    if len(response) > max_chars:
        none = [False] * len(checkers)
        return {"inst_level_strict": none, "inst_level_loose": list(none), "too_long": True}
    variants = loose_variants(response)
    strict = [follows(check, response) for check in checkers]
    loose = [s or any(follows(check, v) for v in variants[1:]) for s, check in zip(strict, checkers)]
    return {"inst_level_strict": strict, "inst_level_loose": loose, "too_long": False}


def parse_ifeval_ground_truth(ground_truth: Any) -> dict[str, Any]:
    """Accept a dict, a JSON string, or open-instruct's `str([json_or_dict])` with keys
    `instruction_id` / `instruction_id_list` and `kwargs`."""
    value = ground_truth
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise ValueError(f"IFEval ground truth is neither JSON nor a Python literal: {ground_truth!r:.200}") from None
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
        if isinstance(value, str):
            value = json.loads(value)
    if not isinstance(value, dict):
        raise ValueError(f"IFEval ground truth must be a dict, got {type(value).__name__}")
    ids = value.get("instruction_id_list", value.get("instruction_id"))
    if isinstance(ids, str):
        ids = [ids]
    if not isinstance(ids, list) or not ids:
        raise ValueError(f"IFEval ground truth has no instruction ids: {value!r:.200}")
    kwargs = value.get("kwargs")
    if isinstance(kwargs, dict):
        kwargs = [kwargs]
    kwargs = [kw or {} for kw in (kwargs or [{}] * len(ids))]
    return {"instruction_id_list": ids, "kwargs": kwargs, "prompt": value.get("prompt", "")}


IFEVAL_FORM = 'IFEval instructions {"instruction_id_list": [...], "kwargs": [...]}'


def validate_ground_truth(ground_truth: Any, expected: str = IFEVAL_FORM) -> None:
    """Raise ValueError unless `IFEvalTask.reward` can grade `ground_truth`: it parses, and every
    instruction id is known and has the arguments its checker needs. `expected` describes the
    accepted shapes in the message when it does not parse (a caller may accept more than one)."""
    try:
        truth = _parse_for_validation(ground_truth)
        if not all(isinstance(i, str) for i in truth["instruction_id_list"]):
            raise ValueError(f"instruction ids must be strings, got {truth['instruction_id_list']!r:.120}")
        if not all(isinstance(kw, dict) for kw in truth["kwargs"]):
            raise ValueError(f"'kwargs' must be a list of objects, one per instruction, got {truth['kwargs']!r:.120}")
    except ValueError as e:
        raise ValueError(f"{e} (expected {expected})") from None
    build_checkers(truth, "instruction")  # its errors name the instruction and what it lacks


def _parse_for_validation(ground_truth: Any) -> dict[str, Any]:
    if isinstance(ground_truth, str):
        try:
            json.loads(ground_truth)
        except ValueError as e:
            try:  # open-instruct writes str([...]): a Python literal, also accepted
                ast.literal_eval(ground_truth)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                raise ValueError(f"not valid JSON ({e}): {ground_truth!r:.120}") from None
    try:
        return parse_ifeval_ground_truth(ground_truth)
    except TypeError:  # e.g. 'kwargs' a number: the parser iterates it
        raise ValueError(f"'instruction_id_list' must be a list and 'kwargs' a list of objects, "
                         f"got {ground_truth!r:.120}") from None


def instruction_metrics(scores: list[dict[str, Any]]) -> dict[str, float]:
    """IFEval's four numbers from per-prompt scores: prompt level (all of a prompt's instructions
    followed) and instruction level (over every instruction), strict and loose. IFBench shares them."""
    out = {"num_samples": float(len(scores))}
    for mode in ("strict", "loose"):
        out[f"prompt_level_{mode}_acc"] = mean(s[f"prompt_level_{mode}_acc"] for s in scores)
        out[f"inst_level_{mode}_acc"] = mean(float(x) for s in scores for x in s[f"inst_level_{mode}"])
    return out


def strip_thinking(text: str) -> str:
    """open-instruct's `remove_thinking_section`: keep what follows `</think>`, drop answer tags."""
    text = text.replace("<|assistant|>", "").strip()
    text = text.split("</think>")[-1]
    return text.replace("<answer>", "").replace("</answer>", "").strip()


@dataclass
class IFEvalTask:
    name: str = "ifeval"
    generation: GenerationConfig = GenerationConfig(max_new_tokens=2048, stop=())
    primary_metric: str = "prompt_level_loose_acc"
    max_response_chars: int = MAX_RESPONSE_CHARS

    def default_path(self) -> str:
        return str(shared_data_dir() / "ifeval" / "input_data.jsonl")

    def load(self, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Sample]:
        source = path if path is not None else self.default_path()
        rows = iter_rows(source, hf_split="train")
        return [self._sample(where, row) for where, row in take(rows, limit)]

    def _sample(self, where: str, row: dict) -> Sample:
        prompt = require_field(row, "prompt", where)
        ids = require_field(row, "instruction_id_list", where, list)
        kwargs = require_field(row, "kwargs", where, list)
        ground_truth = {"instruction_id_list": ids, "kwargs": kwargs, "prompt": prompt}
        build_checkers(ground_truth, where)  # fail at load time on bad ids or arguments
        return Sample(
            id=str(row.get("key", where)),
            messages=[{"role": "user", "content": prompt}],
            assistant_prefix="",
            ground_truth=ground_truth,
            meta={"key": row.get("key")},
        )

    def score(self, sample: Sample, output: str) -> dict[str, Any]:
        response = as_text(output)
        result = evaluate_response(sample.ground_truth, response, self.max_response_chars)
        return {
            "prompt_level_strict_acc": float(all(result["inst_level_strict"])),
            "prompt_level_loose_acc": float(all(result["inst_level_loose"])),
            "inst_level_strict": result["inst_level_strict"],
            "inst_level_loose": result["inst_level_loose"],
            "too_long": float(result["too_long"]),
            "extracted": response,
        }

    def aggregate(self, scores: list[dict[str, Any]], samples: list[Sample]) -> dict[str, float]:
        return instruction_metrics(scores)

    def reward(self, completion: str, ground_truth: Any) -> float:
        """Fraction of the instructions followed (strict), after removing a thinking section, as
        open-instruct's IFEvalVerifier does."""
        truth = parse_ifeval_ground_truth(ground_truth)
        answer = strip_thinking(as_text(completion))
        if not answer:
            return 0.0
        result = evaluate_response(truth, answer, self.max_response_chars)
        return mean(float(x) for x in result["inst_level_strict"])
