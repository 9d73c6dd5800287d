"""MMLU-Pro (12,032 questions, up to 10 options, 14 categories), 0-shot chain of thought: OLMES
`mmlu_pro:0shot_cot::tulu3`, one of Tülu 3's unseen evaluations. Exact match on the answer letter,
macro-averaged over the categories (micro reported too).

Prompt: one user turn, no assistant prefix:

    Answer the following multiple-choice question by giving the correct answer letter in
    parentheses. Provide CONCISE reasoning for the answer, and make sure to finish the response with
    "Therefore, the answer is (ANSWER_LETTER)" where (ANSWER_LETTER) is one of (A), (B), (C), (D),
    (E), etc.\\n\\nQuestion: {question}\\n (A) {o1}\\n (B) {o2}\\n ... (J) {o10}\\n\\n
    Answer the above question and REMEMBER to finish your response with the exact phrase
    "Therefore, the answer is (ANSWER_LETTER)" where (ANSWER_LETTER) is one of (A), (B), (C), (D),
    (E), etc.

(OLMES's `answer_prefix: None` branch: " (X) option" lines; the final description opens with one
newline, after the options' own.) Greedy, 2048 new tokens, no stop strings.

The answer (OLMES, its fallbacks adapted from TIGER-Lab's `evaluate_from_local.py`): the last
"Therefore, the answer is (X)"; else the first `(?i)answer is:?\\s*\\(?([A-J])\\)?`; else
`re.search(r".*[aA]nswer:\\s*([A-J])")` (the last "answer: X" of the first line that has one); else the
last stand-alone capital A-J; else "". Parentheses are removed; exact match ignores case but not
punctuation. Quirk kept: `(?i)` with no word boundary reads "the answer is because" as "b".

Data: MMLU-Pro (Wang et al., 2024; MIT, HF `TIGER-Lab/MMLU-Pro`). No offline copy: pass a local
.jsonl/.parquet of its test rows (`question`, `options`, `answer_index` and/or `answer`, `category`)
or `hf:TIGER-Lab/MMLU-Pro@<revision>` (split `test`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from posttrain.evaluation.tasks.base import MissingData, GenerationConfig, Sample, require_field, take
from posttrain.evaluation.tasks.multiple_choice import (exact_match, generated_text, grouped_means, last_match,
                                                        letter_gold, letters, rows_from, search_dotstar, string_list,
                                                        strip_parens, unseen_instructions)

HF_SPLIT = "test"
DESCRIPTION, FINAL = unseen_instructions("(A), (B), (C), (D), (E), etc.", "\n")

_FORMAT = re.compile(r"Therefore, the answer is \(([A-J])\)")
_ANSWER_IS = re.compile(r"(?i)answer is:?\s*\(?([A-J])\)?")
_ANSWER_COLON = re.compile(r"[aA]nswer:\s*([A-J])")
_ANSWER_COLON_LINE = re.compile(r".*[aA]nswer:\s*([A-J])")
_LONE = re.compile(r"\b([A-J])\b")


def user_turn(question: str, options: list[str]) -> str:
    lines = "".join(f" ({label}) {text}\n" for label, text in zip(letters(len(options)), options))
    return f"{DESCRIPTION}Question: {question}\n{lines}{FINAL}"


def extract_answer(text: str) -> tuple[str, float]:
    """(answer letter or "", OLMES answer_format_correct: 1 / 0.5 / 0)."""
    found = last_match(_FORMAT, text)
    if found is not None:
        return strip_parens(found), 1.0
    match = _ANSWER_IS.search(text) or search_dotstar(_ANSWER_COLON, _ANSWER_COLON_LINE, text)
    if match:
        return strip_parens(match.group(1)), 0.5
    return strip_parens(last_match(_LONE, text) or ""), 0.0


def reward(completion: str, ground_truth: Any) -> float:
    return exact_match(extract_answer(generated_text(completion))[0], str(ground_truth), ignore_punctuation=False)


def gold_index(row: dict, n: int, where: str) -> int:
    """`answer_index` when present (OLMES uses it), else the `answer` letter; both must agree."""
    if "answer_index" not in row and "answer" not in row:
        raise ValueError(f"{where}: missing field 'answer_index' (or 'answer')")
    index = letter_gold(row["answer_index"], n, where, "answer_index") if "answer_index" in row else None
    letter = letter_gold(row["answer"], n, where, "answer") if "answer" in row else None
    if index is not None and letter is not None and index != letter:
        raise ValueError(f"{where}: field 'answer' ({row['answer']!r}) disagrees with 'answer_index' "
                         f"({row['answer_index']!r})")
    return index if index is not None else letter  # type: ignore[return-value]


@dataclass
class MMLUProTask:
    name: str = "mmlu_pro"
    generation: GenerationConfig = GenerationConfig(max_new_tokens=2048)
    primary_metric: str = "exact_match_macro"

    def load(self, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Sample]:
        if path is None:
            raise MissingData(f"{self.name}: no offline copy of MMLU-Pro: pass its test rows as a file "
                             f"(--data {self.name}=PATH) or hf:TIGER-Lab/MMLU-Pro@<revision>")
        rows = rows_from(path, hf_split=HF_SPLIT)
        return [self._sample(i, where, row) for i, (where, row) in enumerate(take(rows, limit))]

    def _sample(self, index: int, where: str, row: dict) -> Sample:
        question = require_field(row, "question", where)
        options = string_list(row, "options", where)
        if len(options) > 10:
            raise ValueError(f"{where}: field 'options' has {len(options)} options, at most 10 (A-J) are allowed")
        category = require_field(row, "category", where)
        gold = gold_index(row, len(options), where)
        return Sample(id=f"{self.name}/{index}", messages=[{"role": "user", "content": user_turn(question, options)}],
                      assistant_prefix="", ground_truth=letters(len(options))[gold],
                      meta={"subject": category, "question_id": row.get("question_id")})

    def score(self, sample: Sample, output: str) -> dict[str, Any]:
        answer, format_score = extract_answer(generated_text(output))
        return {"exact_match": exact_match(answer, sample.ground_truth, ignore_punctuation=False),
                "answer_format_correct": format_score, "extracted": answer}

    def aggregate(self, scores: list[dict[str, Any]], samples: list[Sample]) -> dict[str, float]:
        return grouped_means(scores, samples, ["exact_match", "answer_format_correct"])

    def reward(self, completion: str, ground_truth: Any) -> float:
        return reward(completion, ground_truth)
