"""BIG-Bench Hard, 3-shot chain of thought, exact match: OLMES `bbh:cot-v1::tulu` (Tülu 3 dev suite).

27 subtasks; the reported number is the **micro** average over all questions (the OLMES suite
`bbh:cot-v1::tulu` sets `primary_metric: "micro"`), here `exact_match`; `exact_match_macro` (mean of
the 27 subtask means) and each `exact_match/<subtask>` are logged too.

Prompt (chat, multiturn ICL): per subtask, the 3 CoT exemplars of Suzgun et al. (2022) as
user/assistant turns, then the question. User turns are "Q: <input>\\nA: Let's think step by step."
and assistant turns the exemplar's chain of thought, which ends "So the answer is <answer>."; the
subtask description (e.g. "Sort a list of words.\\n\\n") opens the first user turn; no system
prompt, no assistant prefix. Greedy, 512 new tokens, no stop strings (the chat EOS ends the turn).
The exemplars are read at run time from lm-eval's installed `tasks/bbh/cot_fewshot/<subtask>.yaml`
(`pip install --no-deps lm-eval==0.4.13`; the same text as BBH's `cot-prompts/`).

Extraction (`exact_match`): the rest of the line after the last "the answer is" (any case), stripped
of whitespace, "*", a leading ":" and a final "."; without that phrase, the whole output. When the target is a
letter option "(X)", the first "(X)" in that text is the answer (a bare leading "X" counts too).
Compared with the target ignoring case and runs of whitespace. `exact_match_lm_eval` is lm-eval's
bbh cot_fewshot filter, kept for comparison: the first match of `(?<=the answer is )(.*)(?=.)`
(lowercase "the", and the last character of the line dropped, so "... is 8" gives ""), compared
exactly. OLMES's own `bbh.py` was not available when this was written; the rule above follows the
"So the answer is X." format every exemplar uses.

Data: no offline copy. BBH's test rows (250 per subtask; 187 causal_judgement, 146
penguins_in_a_table, 178 snarks; 6511 in all) are the JSON files of
github.com/suzgunmirac/BIG-Bench-Hard, MIT license (`git clone` it, then pass its `bbh/` directory:
`<subtask>.json`, `{"examples": [{"input", "target"}]}`), or `hf:lukaemon/bbh@<revision>` (one
config per subtask, split test), or one JSONL/JSON/parquet file of rows with `subtask` (or `task`),
`input` and `target`. They cannot be rebuilt from the `bigbench` package's task JSONs: BBH
rewrote inputs (options added as "(A) ...", prompts reworded) and targets, and sampled without a
published seed.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from posttrain.evaluation.tasks.base import (MissingData, HF_PREFIX, GenerationConfig, Sample, as_text, clip_tail,
                                             fewshot_messages, iter_rows, mean, package_file, require_field,
                                             take)

SUBTASKS = (
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa",
    "dyck_languages", "formal_fallacies", "geometric_shapes", "hyperbaton",
    "logical_deduction_five_objects", "logical_deduction_seven_objects",
    "logical_deduction_three_objects", "movie_recommendation", "multistep_arithmetic_two",
    "navigate", "object_counting", "penguins_in_a_table", "reasoning_about_colored_objects",
    "ruin_names", "salient_translation_error_detection", "snarks", "sports_understanding",
    "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects",
    "web_of_lies", "word_sorting",
)
NUM_SHOTS = 3
LM_EVAL_INSTALL = "pip install --no-deps lm-eval==0.4.13"
COT_TRIGGER = "Let's think step by step."

_OPTION = re.compile(r"^\([A-Z]\)$")
_ANSWER_IS = re.compile(r"the answer is", re.IGNORECASE)
_OPTION_IN_TEXT = re.compile(r"\(([A-Z])\)")
_LEADING_LETTER = re.compile(r"^([A-Z])\b")
_LM_EVAL_FILTER = re.compile(r"(?<=the answer is )(.*)(?=.)")
LM_EVAL_FALLBACK = "[invalid]"


# ------------------------------------------------------------------ exemplars and prompt

@lru_cache(maxsize=None)
def exemplars(subtask: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(description, ((input, chain of thought), ...)) of a subtask, from lm-eval's installed yaml."""
    import yaml

    if subtask not in SUBTASKS:
        raise ValueError(f"unknown BBH subtask {subtask!r}")
    path = package_file("lm_eval", f"tasks/bbh/cot_fewshot/{subtask}.yaml", LM_EVAL_INSTALL, "bbh")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    samples = (config.get("fewshot_config") or {}).get("samples") if isinstance(config, dict) else None
    description = config.get("description") if isinstance(config, dict) else None
    if not isinstance(samples, list) or not isinstance(description, str):
        raise ValueError(f"{path}: expected 'description' and 'fewshot_config.samples'")
    shots = []
    for i, shot in enumerate(samples):
        where = f"{path}: fewshot_config.samples[{i}]"
        if not isinstance(shot, dict):
            raise ValueError(f"{where}: expected an object with 'input' and 'target'")
        shots.append((require_field(shot, "input", where), require_field(shot, "target", where)))
    return description, tuple(shots)


def user_turn(question: str) -> str:
    return f"Q: {question}\nA: {COT_TRIGGER}"


def build_messages(subtask: str, question: str, num_shots: int = NUM_SHOTS) -> list[dict[str, str]]:
    description, shots = exemplars(subtask)
    messages = fewshot_messages([(user_turn(q), cot) for q, cot in shots], num_shots, user_turn(question))
    messages[0] = {"role": "user", "content": description + messages[0]["content"]}
    return messages


# ------------------------------------------------------------------ extraction and matching

def is_option(target: str) -> bool:
    return bool(_OPTION.match(target.strip()))


def extract_answer(output: Any, option: bool = False) -> str:
    """The answer of a chain of thought (see the module docstring); `option` for "(X)" targets."""
    text = clip_tail(as_text(output))
    last = None
    for last in _ANSWER_IS.finditer(text):
        pass
    answer = text[last.end():].split("\n", 1)[0] if last is not None else text
    answer = answer.strip().strip("*").strip()
    if answer.startswith(":"):  # "the answer is: X"
        answer = answer[1:].strip()
    if answer.endswith("."):
        answer = answer[:-1].rstrip()
    if option:
        found = _OPTION_IN_TEXT.search(answer) or _LEADING_LETTER.match(answer)
        if found:
            return f"({found.group(1)})"
    return answer


def _canonical(text: str) -> str:
    return " ".join(text.split()).lower()


def exact_match(extracted: str, target: str) -> float:
    return float(_canonical(extracted) == _canonical(target))


def lm_eval_extract(output: Any) -> str:
    """lm-eval 0.4.13's bbh cot_fewshot "get-answer" filter: first regex match, stripped."""
    found = _LM_EVAL_FILTER.findall(clip_tail(as_text(output)))
    return found[0].strip() if found else LM_EVAL_FALLBACK


def reward(completion: str, ground_truth: Any) -> float:
    """1.0 when the extracted answer equals the target (as `exact_match` scores), else 0.0."""
    target = as_text(ground_truth).strip()
    if not target:
        raise ValueError(f"BBH ground truth is empty: {ground_truth!r}")
    return exact_match(extract_answer(completion, is_option(target)), target)


# ------------------------------------------------------------------ data

def _bbh_json(path: Path, subtask: str) -> Iterator[tuple[str, str, dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a BBH JSON file: {e}") from None
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(examples, list):
        raise ValueError(f'{path}: expected a BBH file {{"examples": [{{"input", "target"}}, ...]}}')
    for i, row in enumerate(examples):
        where = f"{path}: examples[{i}]"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected an object with 'input' and 'target'")
        yield subtask, where, row


def _subtask_of(name: str, where: str) -> str:
    if name not in SUBTASKS:
        raise ValueError(f"{where}: unknown BBH subtask {name!r} (expected one of the 27 in bbh.SUBTASKS)")
    return name


def iter_source(source: str | os.PathLike) -> Iterator[tuple[str, str, dict]]:
    """(subtask, location, row) from a BBH directory, one BBH JSON file, a file of rows naming
    their subtask, or `hf:lukaemon/bbh@<revision>` (27 configs), subtasks in `SUBTASKS` order."""
    src = str(source)
    if src.startswith(HF_PREFIX):
        for subtask in SUBTASKS:
            for where, row in iter_rows(src, hf_config=subtask, hf_split="test"):
                yield subtask, where, row
        return
    path = Path(src).expanduser()
    if path.is_dir():
        files = {p.stem: p for p in path.glob("*.json")}
        for stem in files:
            _subtask_of(stem, str(files[stem]))
        if not files:
            raise ValueError(f"{path}: no <subtask>.json files (expected BIG-Bench-Hard's bbh/ directory)")
        for subtask in (s for s in SUBTASKS if s in files):
            yield from _bbh_json(files[subtask], subtask)
        return
    if path.suffix.lower() == ".json" and path.stem in SUBTASKS:
        yield from _bbh_json(path, path.stem)
        return
    for where, row in iter_rows(path):
        name = row.get("subtask", row.get("task"))
        if not isinstance(name, str):
            raise ValueError(f"{where}: missing field 'subtask' (or 'task')")
        yield _subtask_of(name.removeprefix("bbh_"), where), where, row


@dataclass
class BBHTask:
    name: str = "bbh"
    num_shots: int = NUM_SHOTS
    generation: GenerationConfig = GenerationConfig(max_new_tokens=512)
    primary_metric: str = "exact_match"

    def load(self, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Sample]:
        if path is None:
            raise MissingData(f"{self.name}: no offline copy of the BBH test rows: clone "
                             "https://github.com/suzgunmirac/BIG-Bench-Hard and pass its bbh/ directory "
                             f"(--data {self.name}=BIG-Bench-Hard/bbh), or hf:lukaemon/bbh@<revision>")
        counts: dict[str, int] = defaultdict(int)
        samples = []
        for subtask, where, row in take(iter_source(path), limit):
            samples.append(self._sample(subtask, counts[subtask], where, row))
            counts[subtask] += 1
        return samples

    def _sample(self, subtask: str, index: int, where: str, row: dict) -> Sample:
        question = require_field(row, "input", where)
        target = require_field(row, "target", where)
        if not target.strip():
            raise ValueError(f"{where}: field 'target' is empty")
        return Sample(
            id=f"bbh/{subtask}/{index}",
            messages=build_messages(subtask, question, self.num_shots),
            assistant_prefix="",
            ground_truth=target.strip(),
            meta={"subtask": subtask},
        )

    def score(self, sample: Sample, output: str) -> dict[str, Any]:
        extracted = extract_answer(output, is_option(sample.ground_truth))
        return {
            "exact_match": exact_match(extracted, sample.ground_truth),
            "exact_match_lm_eval": float(lm_eval_extract(output) == sample.ground_truth),
            "extracted": extracted,
        }

    def aggregate(self, scores: list[dict[str, Any]], samples: list[Sample]) -> dict[str, float]:
        by_subtask: dict[str, list[float]] = defaultdict(list)
        for score, sample in zip(scores, samples):
            by_subtask[sample.meta["subtask"]].append(score["exact_match"])
        out = {
            "exact_match": mean(s["exact_match"] for s in scores),
            "exact_match_lm_eval": mean(s["exact_match_lm_eval"] for s in scores),
            "exact_match_macro": mean(mean(v) for v in by_subtask.values()),
            "num_samples": float(len(scores)),
            "num_subtasks": float(len(by_subtask)),
        }
        out.update({f"exact_match/{k}": mean(v) for k, v in sorted(by_subtask.items())})
        return out

    def reward(self, completion: str, ground_truth: Any) -> float:
        return reward(completion, ground_truth)
