"""AGIEval English (8 multiple-choice subsets), 0-shot chain of thought: OLMES
`agi_eval_english:0shot_cot::tulu3`, one of Tülu 3's unseen evaluations. Exact match on the answer
letter, macro-averaged over lsat-ar, lsat-lr, lsat-rc, logiqa-en, sat-math, sat-en, aqua-rat and
gaokao-english (OLMES's English list without sat-en-without-passage); micro reported too.

Prompt: one user turn, no assistant prefix:

    Answer the following multiple-choice question by giving the correct answer letter in
    parentheses. Provide CONCISE reasoning for the answer, and make sure to finish the response with
    "Therefore, the answer is (ANSWER_LETTER)" where (ANSWER_LETTER) is one of (A), (B), (C), (D),
    (E), etc.\\n\\nPassage: {passage}\\nQuestion: {question}\\n (A) {o1}\\n (B) {o2} ...\\n\\n
    Answer the above question and REMEMBER to finish your response with the exact phrase
    "Therefore, the answer is (ANSWER_LETTER)" where (ANSWER_LETTER) is one of (A), (B), (C), (D),
    (E), etc.

The "Passage: ..." line is left out when a row has no passage (sat-math, aqua-rat); option texts
lose AGIEval's own "(A)" labels. Greedy, 2048 new tokens, no stop strings. The answer: the last
"Therefore, the answer is (X)" (X in A-F, OLMES's `answer_format_regex`); else the last "(X)"; else
the last stand-alone capital A-F; else "". Exact match ignores case and punctuation.

Reconstruction, not a copy: the description, final description, format regex and token budget
are OLMES's `::tulu3` config; the question layout is the one OLMES's `0shot_cot::zs_cot` AGIEval
template spells out with the same instructions (for GPQA that template gives exactly the `::tulu3`
prompt), and the fallbacks after the format regex follow OLMES's GPQA/MMLU tasks. OLMES's
`agi_eval.py` was not available to check either; verify both before quoting numbers against Tülu 3.

Data: AGIEval (Zhong et al., 2023; MIT, github.com/ruixiangcui/AGIEval, `data/v1_1/<subset>.jsonl`
with `passage`, `question`, `options`, `label`). No offline copy: pass that directory (all eight
files), one subset's file (named `<subset>.jsonl`, or rows with a `subset` field), or an `hf:` id
with one config per subset (split `test`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from posttrain.evaluation.tasks.base import MissingData, HF_PREFIX, GenerationConfig, Sample, require_field, take
from posttrain.evaluation.tasks.multiple_choice import (exact_match, generated_text, grouped_means, last_match,
                                                        letter_gold, letters, rows_from, string_list, strip_parens,
                                                        unseen_instructions)

SUBSETS: tuple[str, ...] = ("lsat-ar", "lsat-lr", "lsat-rc", "logiqa-en", "sat-math", "sat-en", "aqua-rat",
                            "gaokao-english")
HF_SPLIT = "test"
DESCRIPTION, FINAL = unseen_instructions("(A), (B), (C), (D), (E), etc.", "\n\n")

_FORMAT = re.compile(r"Therefore, the answer is \(([A-F])\)")
_PAREN = re.compile(r"\(([A-F])\)")
_LONE = re.compile(r"\b([A-F])\b")
_OWN_LABEL = re.compile(r"^\s*\(?[A-J]\)\s*")  # AGIEval options read "(A)text"


def user_turn(passage: str | None, question: str, options: list[str]) -> str:
    head = f"Passage: {passage}\n" if passage else ""
    lines = "".join(f"\n ({label}) {text}" for label, text in zip(letters(len(options)), options))
    return f"{DESCRIPTION}{head}Question: {question}{lines}{FINAL}"


def extract_answer(text: str) -> tuple[str, float]:
    """(answer letter or "", answer_format_correct: 1 format regex / 0.5 "(X)" / 0 last letter)."""
    found = last_match(_FORMAT, text)
    if found is not None:
        return strip_parens(found), 1.0
    found = last_match(_PAREN, text)
    if found is not None:
        return strip_parens(found), 0.5
    return strip_parens(last_match(_LONE, text) or ""), 0.0


def reward(completion: str, ground_truth: Any) -> float:
    return exact_match(extract_answer(generated_text(completion))[0], str(ground_truth))


def _subset_rows(source: str | os.PathLike) -> Iterator[tuple[str, str, dict]]:
    """(subset, location, row) from a directory of `<subset>.jsonl`, one file, or hf:."""
    if str(source).startswith(HF_PREFIX):
        for subset in SUBSETS:
            for where, row in rows_from(source, hf_config=subset, hf_split=HF_SPLIT):
                yield subset, where, row
        return
    path = Path(source).expanduser()
    if path.is_dir():
        missing = [s for s in SUBSETS if not (path / f"{s}.jsonl").is_file()]
        if missing:
            raise ValueError(f"{path}: missing AGIEval English files {[m + '.jsonl' for m in missing]}")
        for subset in SUBSETS:
            for where, row in rows_from(path / f"{subset}.jsonl"):
                yield subset, where, row
        return
    for where, row in rows_from(path):
        subset = row.get("subset", path.stem)
        if subset not in SUBSETS:
            raise ValueError(f"{where}: unknown AGIEval English subset {subset!r} (name the file <subset>.jsonl or "
                             f"give each row a 'subset' field: one of {list(SUBSETS)})")
        yield subset, where, row


@dataclass
class AGIEvalTask:
    name: str = "agieval"
    generation: GenerationConfig = GenerationConfig(max_new_tokens=2048)
    primary_metric: str = "exact_match_macro"

    def load(self, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Sample]:
        if path is None:
            raise MissingData(f"{self.name}: no offline copy of AGIEval: pass a directory of its data/v1_1 "
                             f"<subset>.jsonl files (--data {self.name}=PATH), one such file, or an hf: id")
        counts: dict[str, int] = {}
        samples = []
        for subset, where, row in take(_subset_rows(path), limit):
            samples.append(self._sample(f"{self.name}/{subset}/{counts.get(subset, 0)}", subset, where, row))
            counts[subset] = counts.get(subset, 0) + 1
        return samples

    def _sample(self, sample_id: str, subset: str, where: str, row: dict) -> Sample:
        question = require_field(row, "question", where)
        passage = row.get("passage")
        if passage is not None and not isinstance(passage, str):
            raise ValueError(f"{where}: field 'passage' should be a string or null")
        options = [_OWN_LABEL.sub("", o, count=1) for o in string_list(row, "options", where)]
        if "label" not in row:
            raise ValueError(f"{where}: missing field 'label'")
        gold = letter_gold(row["label"], len(options), where, "label")
        return Sample(id=sample_id, messages=[{"role": "user", "content": user_turn(passage, question, options)}],
                      assistant_prefix="", ground_truth=letters(len(options))[gold], meta={"subject": subset})

    def score(self, sample: Sample, output: str) -> dict[str, Any]:
        answer, format_score = extract_answer(generated_text(output))
        return {"exact_match": exact_match(answer, sample.ground_truth), "answer_format_correct": format_score,
                "extracted": answer}

    def aggregate(self, scores: list[dict[str, Any]], samples: list[Sample]) -> dict[str, float]:
        return grouped_means(scores, samples, ["exact_match", "answer_format_correct"])

    def reward(self, completion: str, ground_truth: Any) -> float:
        return reward(completion, ground_truth)
