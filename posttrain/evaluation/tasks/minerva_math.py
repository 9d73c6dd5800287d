"""MATH with the 4-shot Minerva prompt and "flex" exact match: OLMES `minerva_math::tulu`
(full MATH, macro average over 7 subjects) and `minerva_math_500::tulu` (MATH-500, micro).

Named `minerva_math` rather than `math` so it never shadows the standard library module.

Per sample: `exact_match` (strict: only the "Final Answer: The final answer is X. I hope it is
correct." sentence, symbolic equivalence) and `exact_match_flex` (what Tülu 3 reports: any
candidate of the spec's cascade equal to the gold symbolically or as Hendrycks strings).
Symbolic comparisons run out of process with a hard timeout (`posttrain.evaluation.tasks.symbolic`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.evaluation.tasks.base import (GenerationConfig, Sample, as_text, clip_tail, fewshot_messages,
                                             iter_rows, mean, require_field, shared_data_dir, take)
from posttrain.evaluation.tasks.math_answers import (
    flex_candidates,
    gold_from_solution,
    hendrycks_is_equiv,
    normalize_final_answer,
    reward_candidates,
    strict_candidate,
    without_currency,
)
from posttrain.evaluation.tasks.symbolic import (
    DEFAULT_TIMEOUT_S,
    MAX_SYMBOLIC_CHARS,
    Deadline,
    default_checker,
    symbolic_equal,
)

# lm-eval's minerva_math `list_fewshot_samples()` as OLMES used it in Nov 2024, including the
# stray "}" at the end of the first problem.
FEWSHOT: tuple[tuple[str, str], ...] = (
    (
        "Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.}",
        "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so "
        "$x\\ge2$, and $5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, "
        "so $5-x>0$, which gives $x<5$. Therefore, the domain of the expression is $\\boxed{[2,5)}$."
        "\nFinal Answer: The final answer is $[2,5)$. I hope it is correct.",
    ),
    (
        "If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find "
        "$\\det (\\mathbf{A} \\mathbf{B}).$",
        "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) "
        "= (2)(12) = \\boxed{24}.$\nFinal Answer: The final answer is $24$. I hope it is correct.",
    ),
    (
        "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights "
        "instead, how many times must Terrell lift them in order to lift the same total weight?",
        "If Terrell lifts two 20-pound weights 12 times, he lifts a total of "
        "$2\\cdot 12\\cdot20=480$ pounds of weight.  If he lifts two 15-pound weights instead for "
        "$n$ times, he will lift a total of $2\\cdot15\\cdot n=30n$ pounds of weight.  Equating "
        "this to 480 pounds, we can solve for $n$:\n\\begin{align*}\n30n&=480\\\\\n"
        "\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n\\end{align*}\n"
        "Final Answer: The final answer is $16$. I hope it is correct.",
    ),
    (
        "If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}"
        "has a solution $(x, y)$ where $x$ and $y$ are both nonzero,\nfind $\\frac{a}{b},$ "
        "assuming $b$ is nonzero.",
        "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n"
        "$$6y-9x=-\\frac{3}{2}a.$$Since we also know that $6y-9x=b$, we have\n\n"
        "$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\n"
        "Final Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.",
    ),
)

# The seven MATH subjects (hendrycks_math configs); data files spell them as in `SUBJECT_NAMES`.
SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)
SUBJECT_NAMES = {
    "Algebra": "algebra",
    "Counting & Probability": "counting_and_probability",
    "Geometry": "geometry",
    "Intermediate Algebra": "intermediate_algebra",
    "Number Theory": "number_theory",
    "Prealgebra": "prealgebra",
    "Precalculus": "precalculus",
}


def user_turn(problem: str) -> str:
    return "Problem:\n" + problem + "\n\nSolution:"


def build_messages(problem: str, num_shots: int = len(FEWSHOT)) -> list[dict[str, str]]:
    return fewshot_messages([(user_turn(p), solution) for p, solution in FEWSHOT], num_shots, user_turn(problem))


def subject_key(raw: str, where: str) -> str:
    if raw in SUBJECT_NAMES:
        return SUBJECT_NAMES[raw]
    key = raw.strip().lower().replace(" & ", "_and_").replace(" ", "_")
    if key not in SUBJECTS:
        raise ValueError(f"{where}: unknown MATH subject {raw!r} (expected one of {sorted(SUBJECT_NAMES)})")
    return key


@dataclass
class MathScorer:
    """Strict and flex exact match of one output, and the RLVR reward.

    `timeout_s` bounds each symbolic comparison (the spec uses 5 s; 1 s keeps RL reward workers
    responsive and changes nothing measurable, see docs/EVAL_NOTES.md); `budget_s` bounds the
    whole `score` / `reward` call: a comparison still running at its end is killed and counts as
    not equal. The checker's one-time start-up is not charged (`posttrain.evaluation.tasks.symbolic`).
    """

    timeout_s: float = DEFAULT_TIMEOUT_S
    budget_s: float = 1.5

    def _equal(self, candidate: str, gold: str, deadline: Deadline, cache: dict[str, bool]) -> bool:
        # Currency marks are dropped from both sides: math-verify reads `\$18.90` as no number at
        # all, and the worker cannot tell a currency `$` from a math delimiter.
        if len(candidate) > MAX_SYMBOLIC_CHARS or len(gold) > MAX_SYMBOLIC_CHARS:
            return False
        key = without_currency(candidate)
        if key not in cache:
            cache[key] = symbolic_equal(without_currency(gold), key, self.timeout_s, deadline)
        return cache[key]

    def score(self, output: str, gold: str, gold_normalized: bool = False) -> dict[str, Any]:
        """Strict and flex exact match against `gold`, a MATH answer as written (`\\$36`); it is
        normalised like the candidates, as the spec's gold is. `gold_normalized=True` skips that for
        a gold already normalised (`normalize_final_answer` is not idempotent on every string)."""
        output = clip_tail(as_text(output))
        deadline, cache = Deadline(self.budget_s), {}
        gold = as_text(gold) if gold_normalized else normalize_final_answer(as_text(gold))
        strict = strict_candidate(output)
        exact = strict is not None and self._equal(strict, gold, deadline, cache)
        candidates = flex_candidates(output)
        flex = exact or any(
            hendrycks_is_equiv(c, gold) or self._equal(c, gold, deadline, cache) for c in candidates
        )
        return {
            "exact_match": float(exact),
            "exact_match_flex": float(flex),
            "extracted": candidates[0],
        }

    def reward(self, completion: str, ground_truth: Any) -> float:
        """open-instruct MathVerifier: 1.0 if any candidate matches the raw ground truth."""
        completion, gold = clip_tail(as_text(completion)), as_text(ground_truth)
        if not gold.strip():
            raise ValueError(f"MATH ground truth is empty: {ground_truth!r}")
        deadline, cache = Deadline(self.budget_s), {}
        return float(
            any(
                hendrycks_is_equiv(c, gold) or self._equal(c, gold, deadline, cache)
                for c in reward_candidates(completion)
            )
        )


@dataclass
class MathTask:
    """`math500` (MATH-500, micro average) or `math` (full MATH test, macro over subjects)."""

    name: str = "math500"
    num_shots: int = len(FEWSHOT)
    generation: GenerationConfig = GenerationConfig(max_new_tokens=1024, stop=())
    scorer: MathScorer = field(default_factory=MathScorer)
    hf_id: str = "EleutherAI/hendrycks_math"

    def __post_init__(self) -> None:
        if self.name not in ("math500", "math"):
            raise ValueError(f"MathTask name must be 'math500' or 'math', got {self.name!r}")

    @property
    def primary_metric(self) -> str:
        return "exact_match_flex" if self.name == "math500" else "exact_match_flex_macro"

    def default_path(self) -> str:
        if self.name == "math500":
            return str(shared_data_dir() / "math500" / "test.jsonl")
        return "hf:" + self.hf_id

    def load(self, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Sample]:
        default_checker().prestart()  # start the symbolic checker while data loads and the model runs
        source = str(path if path is not None else self.default_path())
        if source.startswith("hf:") and self.name == "math":
            # one HF config per subject; concatenated in the fixed subject order
            rows = (r for subject in SUBJECTS for r in iter_rows(source, hf_config=subject, hf_split="test"))
        elif Path(source).is_dir():
            rows = (r for f in sorted(Path(source).glob("*.jsonl")) for r in iter_rows(f))
        else:
            rows = iter_rows(source, hf_split="test")
        return [self._sample(i, where, row) for i, (where, row) in enumerate(take(rows, limit))]

    def _sample(self, index: int, where: str, row: dict) -> Sample:
        problem = require_field(row, "problem", where)
        solution = require_field(row, "solution", where)
        gold = gold_from_solution(solution)
        if gold is None:
            if not isinstance(row.get("answer"), str):
                raise ValueError(f"{where}: 'solution' has no \\boxed{{}} answer and there is no 'answer'")
            gold = normalize_final_answer(row["answer"])
        if not gold:
            raise ValueError(f"{where}: the gold answer is empty after normalisation")
        raw_subject = row.get("subject", row.get("type"))
        if not isinstance(raw_subject, str):
            raise ValueError(f"{where}: missing field 'subject' (or 'type')")
        subject = subject_key(raw_subject, where)
        return Sample(
            id=str(row.get("unique_id") or f"{self.name}/{subject}/{index}"),
            messages=build_messages(problem, self.num_shots),
            assistant_prefix="",
            ground_truth=gold,
            meta={"subject": subject, "level": row.get("level"), "answer": row.get("answer")},
        )

    def score(self, sample: Sample, output: str) -> dict[str, Any]:
        return self.scorer.score(output, sample.ground_truth, gold_normalized=True)

    def aggregate(self, scores: list[dict[str, Any]], samples: list[Sample]) -> dict[str, float]:
        if len(scores) != len(samples):
            raise ValueError(f"{len(scores)} scores for {len(samples)} samples")
        by_subject: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for score, sample in zip(scores, samples):
            by_subject[sample.meta["subject"]].append(score)
        out: dict[str, float] = {"num_samples": float(len(scores))}
        for metric in ("exact_match", "exact_match_flex"):
            out[metric] = mean(s[metric] for s in scores)
            per_subject = {k: mean(s[metric] for s in v) for k, v in sorted(by_subject.items())}
            out[metric + "_macro"] = mean(per_subject.values())
            for subject, value in per_subject.items():
                out[f"{metric}/{subject}"] = value
        return out

    def reward(self, completion: str, ground_truth: Any) -> float:
        return self.scorer.reward(completion, ground_truth)
