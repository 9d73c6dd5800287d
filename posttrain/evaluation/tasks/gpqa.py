"""GPQA (main set, 448 questions), 0-shot chain of thought: OLMES `gpqa:0shot_cot::tulu3`, one of
Tülu 3's unseen evaluations. Exact match on the answer letter.

Options. Each row's four answers are cleaned (strip; " [title]" -> ". "; every "[...]" removed;
double spaces -> one), put in the order [Incorrect Answer 1, 2, 3, Correct Answer], then shuffled
with `random.Random(111 + i).shuffle`, i being the row's 0-based position in the file, as OLMES
does (`answer_shuffling_seed` 111). The gold is the letter where the cleaned correct answer lands.

Prompt: one user turn, no assistant prefix:

    Answer the following multiple-choice question by giving the correct answer letter in
    parentheses. Provide CONCISE reasoning for the answer, and make sure to finish the response with
    "Therefore, the answer is (ANSWER_LETTER)" where (ANSWER_LETTER) is one of (A), (B), (C), (D).\\n\\n
    Question: {Question}\\nChoices:\\n (A) {o1}\\n (B) {o2}\\n (C) {o3}\\n (D) {o4}\\n\\n\\n
    Answer the above question and REMEMBER to finish your response with the exact phrase
    "Therefore, the answer is (ANSWER_LETTER)" where (ANSWER_LETTER) is one of (A), (B), (C), (D).

(the instruction lines are single lines; the question text is used uncleaned). Greedy, 2048 new
tokens, no stop strings. The answer: the last "Therefore, the answer is (X)"; else the last "(X)";
else the first letter after "The correct answer is: "; else the last stand-alone capital A-D; else
"". Parentheses are removed; exact match ignores case and punctuation. `answer_format_correct` is
OLMES's 1 / 0.5 / 0 for the first / middle / last of those steps.

Data: GPQA (Rein et al., 2023; CC BY 4.0; gated on the HF hub). No offline copy: pass the
`gpqa_main.csv` rows as a local .jsonl/.parquet file (fields `Question`, `Correct Answer`,
`Incorrect Answer 1..3`) or `hf:Idavidrein/gpqa@<revision>` (config `gpqa_main`, split `train`;
needs a token accepted for the dataset).
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from typing import Any

from posttrain.evaluation.tasks.base import MissingData, GenerationConfig, Sample, mean, require_field, take
from posttrain.evaluation.tasks.multiple_choice import (exact_match, generated_text, last_match, letters, rows_from,
                                                        strip_parens, unseen_instructions)

SHUFFLE_SEED = 111
HF_CONFIG = "gpqa_main"
HF_SPLIT = "train"
DESCRIPTION, FINAL = unseen_instructions("(A), (B), (C), (D)", "\n\n")

_FORMAT = re.compile(r"Therefore, the answer is \(([A-D])\)")
_PAREN = re.compile(r"\(([A-D])\)")
_CORRECT_IS = re.compile(r"(?<=The correct answer is: )([A-D])")
_LONE = re.compile(r"\b([A-D])\b")


def clean(text: str) -> str:
    """OLMES's GPQA option clean-up."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def shuffled_options(row: dict, index: int, where: str) -> tuple[list[str], int]:
    """(options in prompt order, gold index) for the row at 0-based position `index`."""
    fields = ["Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3", "Correct Answer"]
    options = [clean(require_field(row, f, where)) for f in fields]
    random.Random(SHUFFLE_SEED + index).shuffle(options)
    return options, options.index(clean(row["Correct Answer"]))


def user_turn(question: str, options: list[str]) -> str:
    lines = "".join(f" ({label}) {text}\n" for label, text in zip(letters(4), options))
    return f"{DESCRIPTION}Question: {question}\nChoices:\n{lines}{FINAL}"


def extract_answer(text: str) -> tuple[str, float]:
    """(answer letter or "", OLMES answer_format_correct)."""
    found = last_match(_FORMAT, text)
    if found is not None:
        return strip_parens(found), 1.0
    found = last_match(_PAREN, text)
    if found is None:
        match = _CORRECT_IS.search(text)
        found = match.group(1) if match else None
    if found is not None:
        return strip_parens(found), 0.5
    return strip_parens(last_match(_LONE, text) or ""), 0.0


def reward(completion: str, ground_truth: Any) -> float:
    return exact_match(extract_answer(generated_text(completion))[0], str(ground_truth))


@dataclass
class GPQATask:
    name: str = "gpqa"
    generation: GenerationConfig = GenerationConfig(max_new_tokens=2048)
    primary_metric: str = "exact_match"

    def load(self, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Sample]:
        if path is None:
            raise MissingData(f"{self.name}: no offline copy of GPQA (gated): pass the gpqa_main rows as a file "
                             f"(--data {self.name}=PATH) or hf:Idavidrein/gpqa@<revision>")
        rows = rows_from(path, hf_config=HF_CONFIG, hf_split=HF_SPLIT)
        return [self._sample(i, where, row) for i, (where, row) in enumerate(take(rows, limit))]

    def _sample(self, index: int, where: str, row: dict) -> Sample:
        question = require_field(row, "Question", where)
        options, gold = shuffled_options(row, index, where)
        return Sample(id=f"{self.name}/{index}", messages=[{"role": "user", "content": user_turn(question, options)}],
                      assistant_prefix="", ground_truth=letters(4)[gold],
                      meta={"options": options, "record_id": row.get("Record ID")})

    def score(self, sample: Sample, output: str) -> dict[str, Any]:
        answer, format_score = extract_answer(generated_text(output))
        return {"exact_match": exact_match(answer, sample.ground_truth), "answer_format_correct": format_score,
                "extracted": answer}

    def aggregate(self, scores: list[dict[str, Any]], samples: list[Sample]) -> dict[str, float]:
        return {"exact_match": mean(s["exact_match"] for s in scores),
                "answer_format_correct": mean(s["answer_format_correct"] for s in scores),
                "num_samples": float(len(scores))}

    def reward(self, completion: str, ground_truth: Any) -> float:
        return reward(completion, ground_truth)
