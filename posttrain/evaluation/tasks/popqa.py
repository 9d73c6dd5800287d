"""PopQA, 15-shot, greedy, alias match: OLMES `popqa::tulu` (Tülu 3 dev suite), the setting of
Mallen et al. (2023, "When Not to Trust Language Models", AlexTMallen/adaptive-retrieval
`run_model.py`).

Prompt (chat, multiturn ICL): 15 exemplars as user/assistant turns, user "Q: <question> A:" and
assistant "<obj>" (the row's canonical answer), then "Q: <test question> A:"; no system prompt, no
assistant prefix. Greedy, 15 new tokens, stop at "\\n\\n".

Exemplars: PopQA has only a test split, so, as Mallen et al. do, the exemplars are other test
questions: one from each of the other 15 relation types (`prop_id`, else `prop`), drawn with a
generator seeded by (seed, question id), in shuffled order; fewer when the file covers fewer relation
types. OLMES names its source `fewshot_source: "popqa"`; its code was not available when this was
written, so its exact draws are not reproduced.

Scoring (`exact_match`, Mallen et al.'s rule, which OLMES's PopQA task keeps): correct when some
gold alias `a` (`possible_answers`) occurs in the output, cut at the stop string, as `a`,
`a.lower()` or `a.capitalize()` (Python's: "New York" -> "New york"): a substring test, so
"Paris" matches "Parisian", and not fully case-insensitive ("PARIS" does not match "Paris").
Blank aliases are ignored (they would match everything). Mallen et al. also keep only the first
line of the output; here the whole output up to "\\n\\n" counts. The RLVR reward is the same rule.

Data: no offline copy. A local JSONL/JSON/parquet file in the `akariasai/PopQA` format (fields
`id`, `question`, `obj`, `prop_id` or `prop`, `possible_answers`: a JSON-encoded list of strings,
or a list) or `hf:akariasai/PopQA@<revision>` (split test, 14,267 questions; the dataset card gives
the MIT license, not checked here). The whole file is read even with `limit`, so the exemplar
pools do not depend on it.
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from posttrain.evaluation.tasks.base import (MissingData, GenerationConfig, Sample, as_text, clip_tail, fewshot_messages,
                                             iter_rows, mean, require_field, shown, take, truncate_at_stop)

NUM_SHOTS = 15
FEWSHOT_SEED = 1234
STOP = ("\n\n",)
# Mallen et al.'s relation ids, in their order (occupation, place of birth, genre, father, country,
# producer, director, capital of, screenwriter, composer, color, religion, sport, author, mother,
# capital).
PROP_IDS = tuple(str(p) for p in (22, 218, 91, 257, 182, 164, 526, 97, 533, 639, 472, 106, 560, 484, 292, 422))


def user_turn(question: str) -> str:
    return f"Q: {question} A:"


def parse_aliases(raw: Any, where: str) -> list[str]:
    """`possible_answers`: a JSON-encoded list of strings (the HF file) or a list; blanks dropped."""
    values = raw
    if isinstance(raw, str):
        try:
            values = json.loads(raw)
        except json.JSONDecodeError:
            raise ValueError(f"{where}: field 'possible_answers' is not a JSON list: {raw[:80]!r}") from None
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{where}: field 'possible_answers' should be a list of strings, got {shown(values)}")
    aliases = [v for v in values if v.strip()]
    if not aliases:
        raise ValueError(f"{where}: field 'possible_answers' has no non-blank answer")
    return aliases


def alias_match(output: Any, aliases: list[str]) -> float:
    """1.0 when some alias occurs in the output as is, lowercased or capitalized (Mallen et al.)."""
    text = clip_tail(as_text(output))
    for alias in aliases:
        if alias.strip() and (alias in text or alias.lower() in text or alias.capitalize() in text):
            return 1.0
    return 0.0


def reward(completion: str, ground_truth: Any) -> float:
    """The alias rule on the completion cut at "\\n\\n"; `ground_truth` is the alias list (or its
    JSON text, or one alias)."""
    if isinstance(ground_truth, str) and not ground_truth.lstrip().startswith("["):
        if not ground_truth.strip():
            raise ValueError("PopQA ground truth is blank")
        aliases = [ground_truth]
    else:
        aliases = parse_aliases(ground_truth, "PopQA ground truth")
    return alias_match(truncate_at_stop(clip_tail(as_text(completion)), STOP), aliases)


@dataclass(frozen=True)
class _Row:
    where: str
    id: str
    question: str
    answer: str
    relation: str
    aliases: list[str]
    s_pop: Any


def _parse_row(where: str, row: dict) -> _Row:
    if "prop_id" in row:
        relation = str(require_field(row, "prop_id", where, (int, str)))
    else:
        relation = require_field(row, "prop", where)
    return _Row(
        where=where,
        id=str(require_field(row, "id", where, (int, str))),
        question=require_field(row, "question", where),
        answer=require_field(row, "obj", where),
        relation=relation,
        aliases=parse_aliases(require_field(row, "possible_answers", where, (str, list)), where),
        s_pop=row.get("s_pop"),
    )


@dataclass
class PopQATask:
    name: str = "popqa"
    num_shots: int = NUM_SHOTS
    seed: int = FEWSHOT_SEED
    generation: GenerationConfig = GenerationConfig(max_new_tokens=15, stop=STOP)
    primary_metric: str = "exact_match"

    def load(self, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Sample]:
        if path is None:
            raise MissingData(f"{self.name}: no offline copy of PopQA: pass a JSONL file in the akariasai/PopQA "
                             f"format (--data {self.name}=PATH) or hf:akariasai/PopQA@<revision>")
        if self.num_shots < 0:
            raise ValueError(f"num_shots must be >= 0, got {self.num_shots}")
        rows = [_parse_row(where, row) for where, row in iter_rows(path, hf_split="test")]
        pools: dict[str, list[_Row]] = defaultdict(list)
        for row in rows:
            pools[row.relation].append(row)
        # Mallen's relation order first, then any other relation in order of first appearance.
        order = [p for p in PROP_IDS if p in pools] + [p for p in pools if p not in PROP_IDS]
        return [self._sample(row, pools, order) for row in take(rows, limit)]

    def exemplars(self, row: _Row, pools: dict[str, list[_Row]], order: list[str]) -> list[_Row]:
        rng = random.Random(f"popqa:{self.seed}:{row.id}")
        shots = [rng.choice(pools[relation]) for relation in order if relation != row.relation]
        rng.shuffle(shots)
        return shots[: self.num_shots]

    def _sample(self, row: _Row, pools: dict[str, list[_Row]], order: list[str]) -> Sample:
        shots = [(user_turn(s.question), s.answer) for s in self.exemplars(row, pools, order)]
        return Sample(
            id=f"popqa/{row.id}",
            messages=fewshot_messages(shots, len(shots), user_turn(row.question)),
            assistant_prefix="",
            ground_truth=row.aliases,
            meta={"question": row.question, "relation": row.relation, "s_pop": row.s_pop},
        )

    def extract(self, output: Any) -> str:
        return truncate_at_stop(clip_tail(as_text(output)), self.generation.stop)

    def score(self, sample: Sample, output: str) -> dict[str, Any]:
        prediction = self.extract(output)
        return {"exact_match": alias_match(prediction, sample.ground_truth), "extracted": prediction.strip()}

    def aggregate(self, scores: list[dict[str, Any]], samples: list[Sample]) -> dict[str, float]:
        return {"exact_match": mean(s["exact_match"] for s in scores), "num_samples": float(len(scores))}

    def reward(self, completion: str, ground_truth: Any) -> float:
        return reward(completion, ground_truth)
