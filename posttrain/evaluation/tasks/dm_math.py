"""DeepMind Mathematics, 0-shot chain of thought: Tülu 3's unseen-suite setting, OLMES
`deepmind_math:0shot_cot-v3::tulu3` (its 56 categories, 100 problems each, macro average).

Data (Saxton et al. 2019, "Analysing Mathematical Reasoning Abilities of Neural Models";
github.com/google-deepmind/mathematics_dataset, Apache-2.0 code; the HF card of `math_dataset`
lists no data license). No offline copy ships in a package. A user provides:
- a .jsonl/.json/.parquet/.csv with `question`, `answer` and `category` (the layout of the
  100-per-category sample `hf:WillHeld/deepmind-math@<revision>`, split `test`);
- a category's pre-generated .txt file (questions and answers on alternating lines; the category
  is the file name, e.g. `interpolate/arithmetic__mul.txt`), or a directory of them;
- `hf:deepmind/math_dataset@<revision>` with `hf_config=<category>` (a script dataset: needs a
  `datasets` version that still runs scripts).
HF's `math_dataset` stored fields as Python byte literals ("b'Solve ...\\n'"); those are decoded.
At most `per_category` (100) rows per category are kept, in file order, as OLMES's limit does.

Prompt: one user turn (no system prompt, no few-shot):
    "Solve the following math problem efficiently:\\n" + question + FINAL_DESCRIPTION(examples)
with OLMES's v3 final description (asks for "Therefore, the final answer is [answer]. I hope it is
correct.", lists example answers of the category and the formatting rules for lists, powers,
products and fractions). OLMES hand-picked the example answers per category; we do not have its
list, so the examples are the first `num_answer_examples` distinct gold answers of *other* rows of
the same category (never the row's own answer), or a JSON file {category: [answers]} given as
`answer_examples`. Decoding: greedy, 2048 new tokens, no stop strings.

Scoring (ours; OLMES's exact equivalence code was not available to compare): the strict answer is
the last match of `(?i)Therefore, the final answer is (.*?)\\. I hope it is correct.`; flex adds,
if the strict one is missing or wrong, the last "final answer is X", the last \\boxed{X} and the
last non-empty line. Two answers are equal when, after trimming spaces, `$`, a trailing period
and case: the strings match; or comma-separated lists match item by item, in order (sorting is
part of some questions); or both are numbers of equal value (fractions and decimals exact); or
both are explicit expressions (`*` for products: no "3a" implicit products, which would confuse
base-n answers such as "3a") and math-verify finds them symbolically equal ("^" read as "**").
Metrics: `exact_match` and `exact_match_flex` (micro), their `_macro` over categories (primary:
`exact_match_macro`), and per category.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

from posttrain.evaluation.tasks.base import (GenerationConfig, MissingData, Sample, as_text, clip_tail, iter_rows,
                                             mean, require_field)
from posttrain.evaluation.tasks.math_answers import last_boxed_only_string, remove_boxed

DESCRIPTION = "Solve the following math problem efficiently:\n"
_FINAL_HEAD = ('\n\nShow your work and conclude with the exact phrasing "Therefore, the final answer is [answer]. '
               'I hope it is correct." where [answer] is just the final number, expression, or answer label '
               'representing the solution.  Some example answers from this question category:\n')
_EXAMPLE = '- If the answer is {0}, conclude with "Therefore, the final answer is {0}. I hope it is correct."'
_FINAL_TAIL = ("\n\nNote the formatting for the following answer types:\n- If the answer is a list (e.g., when there "
               "are two solutions to an equation), unless otherwise specified, present the solutions in a list "
               "separated by commas ordering them from the smallest to biggest  e.g.: 2, 10\n- Powers should be "
               "written with **, for instance x to the power of 2 should be written as x**2\n- Use * for "
               "multiplication, e.g.: 2*x\n- For fractions, separate the numerator and denominator with a slash "
               "(/) e.g.: -2/7")

STRICT = re.compile(r"(?i)Therefore, the final answer is (.*?)\. I hope it is correct.")
_FINAL_IS = re.compile(r"(?i)final answer is:?\s*(.+?)\s*(?:\.\s*(?:I hope.*)?)?$", re.MULTILINE)


def user_turn(question: str, examples: list[str]) -> str:
    return DESCRIPTION + question + _FINAL_HEAD + "\n".join(_EXAMPLE.format(e) for e in examples) + _FINAL_TAIL


def decode_field(value: str) -> str:
    """HF `math_dataset` strings are byte literals such as "b'-3\\n'": decode those; strip the rest."""
    v = value.strip()
    if len(v) >= 3 and v[0] == "b" and v[1] in "'\"" and v[-1] == v[1]:
        try:
            lit = ast.literal_eval(v)
            if isinstance(lit, bytes):
                return lit.decode("utf-8").strip()
        except (ValueError, SyntaxError):
            pass
    return v


# ----------------------------------------------------------------------------------- extraction


def strict_answer(output: str) -> str | None:
    matches = STRICT.findall(clip_tail(as_text(output)))
    return matches[-1].strip() if matches else None


def flex_candidates(output: str) -> list[str]:
    text = clip_tail(as_text(output))
    out = []
    for found in (strict_answer(text),
                  (_FINAL_IS.findall(text) or [None])[-1],
                  remove_boxed(last_boxed_only_string(text))):
        if found and found.strip() not in out:
            out.append(found.strip())
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if lines and lines[-1] not in out:
        out.append(lines[-1])
    return out


# ----------------------------------------------------------------------------------- equivalence


def _norm(s: str) -> str:
    s = s.strip()
    boxed = remove_boxed(last_boxed_only_string(s)) if "\\boxed" in s else None
    s = (boxed or s).strip().strip("$").strip()
    s = re.sub(r"\.$", "", s).strip()
    return re.sub(r"\s+", " ", s)


def _number(s: str) -> Fraction | None:
    t = s.replace(" ", "")
    if re.fullmatch(r"[-+]?\d+/\d+", t):
        num, den = t.split("/")
        return Fraction(int(num), int(den)) if int(den) else None
    if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?", t, re.IGNORECASE):
        return Fraction(t)
    return None


_EXPR_CHARS = re.compile(r"[0-9a-zA-Z+\-*/().^ ]+")
_IMPLICIT = re.compile(r"\d[a-zA-Z]|[a-zA-Z]\d")  # "3a", "a3": base-n digits, not products


def _symbolic_ok(s: str) -> bool:
    return bool(_EXPR_CHARS.fullmatch(s)) and not _IMPLICIT.search(s) and len(s) <= 200


def atom_equal(gold: str, pred: str, timeout_s: float = 2.0) -> bool:
    g, p = _norm(gold), _norm(pred)
    if g.replace(" ", "").lower() == p.replace(" ", "").lower():
        return True
    gn, pn = _number(g), _number(p)
    if gn is not None or pn is not None:
        return gn is not None and gn == pn
    if _symbolic_ok(g) and _symbolic_ok(p) and re.search(r"[a-zA-Z]", g):
        from posttrain.evaluation.tasks.symbolic import symbolic_equal

        return symbolic_equal(g.replace("^", "**"), p.replace("^", "**"), timeout_s=timeout_s)
    return False


def answers_equal(gold: str, pred: str | None) -> bool:
    """See the module docstring: strings, ordered lists, numbers, explicit expressions."""
    if pred is None or not pred.strip():
        return False
    if "," in gold:
        gs, ps = [x for x in _norm(gold).split(",")], [x for x in _norm(pred).split(",")]
        return len(gs) == len(ps) and all(atom_equal(a, b) for a, b in zip(gs, ps))
    return atom_equal(gold, pred)


# ----------------------------------------------------------------------------------- data


def _iter_txt(path: Path) -> Iterator[tuple[str, dict]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) % 2:
        raise ValueError(f"{path}:{len(lines)}: odd number of lines (questions and answers alternate)")
    for i in range(0, len(lines), 2):
        yield f"{path}:{i + 1}", {"question": lines[i], "answer": lines[i + 1], "category": path.stem}


def iter_dm_rows(source: str | os.PathLike, hf_config: str | None) -> Iterator[tuple[str, dict]]:
    src = str(source)
    path = Path(src).expanduser()
    if not src.startswith("hf:") and path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise ValueError(f"{path}: no .txt category files in this directory")
        for f in files:
            yield from _iter_txt(f)
    elif not src.startswith("hf:") and path.suffix.lower() in (".txt", ".csv"):
        if not path.is_file():
            raise ValueError(f"{path}: data file not found")
        if path.suffix.lower() == ".txt":
            yield from _iter_txt(path)
        else:
            import csv

            with open(path, encoding="utf-8-sig", newline="") as fh:
                for lineno, row in enumerate(csv.DictReader(fh), 2):
                    yield f"{path}:{lineno}", dict(row)
    else:
        for where, row in iter_rows(source, hf_config=hf_config, hf_split="test"):
            yield where, (row if row.get("category") or not hf_config else {**row, "category": hf_config})


@dataclass
class DMMathTask:
    name: str = "dm_math"
    generation: GenerationConfig = GenerationConfig(max_new_tokens=2048, stop=())
    primary_metric: str = "exact_match_macro"
    per_category: int | None = 100
    num_answer_examples: int = 3
    answer_examples: str | None = None  # JSON {category: [answers]} instead of answers drawn from the data
    hf_config: str | None = None  # a category of hf:deepmind/math_dataset

    def load(self, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Sample]:
        if path is None:
            raise MissingData(f"{self.name}: no offline copy of the DeepMind Mathematics data: pass a file or folder "
                             f"(--data {self.name}=PATH: rows with question, answer, category, or the "
                             f"pre-generated .txt files) or hf:WillHeld/deepmind-math@<revision>")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        rows = self._rows(path, limit)
        examples = self._fixed_examples()
        by_cat: dict[str, list[str]] = defaultdict(list)
        for _, q, a, c in rows:
            by_cat[c].append(a)
        return [self._sample(i, q, a, c, examples.get(c) if examples else self._drawn(by_cat[c], a))
                for i, (_, q, a, c) in enumerate(rows)]

    def _rows(self, path: str | os.PathLike, limit: int | None) -> list[tuple[str, str, str, str]]:
        rows, per_cat = [], defaultdict(int)
        for where, row in iter_dm_rows(path, self.hf_config):
            if limit is not None and len(rows) >= limit:
                break
            question = decode_field(require_field(row, "question", where))
            answer = decode_field(require_field(row, "answer", where))
            category = decode_field(str(row.get("category") or "")) or "unknown"
            if not question or not answer:
                raise ValueError(f"{where}: empty {'question' if not question else 'answer'}")
            if self.per_category is not None and per_cat[category] >= self.per_category:
                continue
            per_cat[category] += 1
            rows.append((where, question, answer, category))
        return rows

    def _fixed_examples(self) -> dict[str, list[str]] | None:
        if not self.answer_examples:
            return None
        data = json.loads(Path(self.answer_examples).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise ValueError(f"{self.answer_examples}: expected a JSON object {{category: [answers]}}")
        return {k: [str(x) for x in v] for k, v in data.items()}

    def _drawn(self, answers: list[str], own: str) -> list[str]:
        picked: list[str] = []
        for a in answers:
            if a != own and a not in picked:
                picked.append(a)
            if len(picked) == self.num_answer_examples:
                break
        return picked

    def _sample(self, index: int, question: str, answer: str, category: str, examples: list[str] | None) -> Sample:
        return Sample(id=f"{self.name}/{category}/{index}",
                      messages=[{"role": "user", "content": user_turn(question, examples or [])}],
                      assistant_prefix="", ground_truth=answer,
                      meta={"category": category, "question": question, "answer_examples": examples or []})

    def score(self, sample: Sample, output: str) -> dict[str, Any]:
        strict = strict_answer(output)
        ok = answers_equal(sample.ground_truth, strict)
        flex = ok or any(answers_equal(sample.ground_truth, c) for c in flex_candidates(output))
        return {"exact_match": float(ok), "exact_match_flex": float(flex), "extracted": strict}

    def aggregate(self, scores: list[dict[str, Any]], samples: list[Sample]) -> dict[str, float]:
        by_cat: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for s, x in zip(scores, samples):
            by_cat[x.meta["category"]].append(s)
        out = {"num_samples": float(len(scores)), "num_categories": float(len(by_cat))}
        for metric in ("exact_match", "exact_match_flex"):
            out[metric] = mean(s[metric] for s in scores)
            per = {c: mean(s[metric] for s in v) for c, v in sorted(by_cat.items())}
            out[metric + "_macro"] = mean(per.values())
            out.update({f"{metric}/{c}": v for c, v in per.items()})
        return out

    def reward(self, completion: str, ground_truth: Any) -> float:
        """1 if any flex candidate equals the gold answer (the same equivalence as the eval)."""
        gold = as_text(ground_truth).strip()
        if not gold:
            raise ValueError(f"dm_math ground truth is empty: {ground_truth!r}")
        return float(any(answers_equal(gold, c) for c in flex_candidates(completion)))
