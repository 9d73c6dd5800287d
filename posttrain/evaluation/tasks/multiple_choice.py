"""Pieces the multiple-choice tasks share (MMLU, TruthfulQA, MMLU-Pro, GPQA, AGIEval): option
lists, answer-letter extraction with OLMES's regexes, HF-evaluate exact match, log-likelihood choice
accuracy, and macro/micro averages over subjects.

Regex faithfulness. OLMES's fallbacks include `re.search(r".*\\b([A-D])\\b", text)` and
`re.search(r".*[aA]nswer:\\s*([A-J])", text)`. On a long line with no match these scan
quadratically (every start position runs `.*` to the end of the line and back). `search_dotstar`
returns the same match in linear time: the first line that holds a match of the part after `.*`
is the only line where the search can succeed, so the original pattern is run from that line's
start only. `last_match` is `re.findall(p, text)[-1]` without building the list.
"""

from __future__ import annotations

import os
import re
import string
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Sequence

from posttrain.evaluation.tasks.base import LoglikOutput, Sample, as_text, clip_tail, iter_rows, mean

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_PUNCT = str.maketrans("", "", string.punctuation)


def letters(n: int) -> str:
    if not 1 <= n <= len(LETTERS):
        raise ValueError(f"a multiple-choice question needs 1..{len(LETTERS)} options, got {n}")
    return LETTERS[:n]


def option_lines(choices: Sequence[str], label_format: str = " A.") -> str:
    """One line per option, the label written as `label_format` with 'A' replaced, e.g. " A." ->
    " A. text", " (A)" -> " (A) text" (OLMES `make_mcq_prompt`)."""
    labels = letters(len(choices))
    return "\n".join(f"{label_format.replace('A', label)} {text}" for label, text in zip(labels, choices))


def letter_continuations(n: int) -> list[str]:
    """The log-likelihood continuations of an n-option question: " A", " B", ... (OLMES MC
    targets: a space, then the label)."""
    return [" " + label for label in letters(n)]


# ---------------------------------------------------------------- extraction


def search_dotstar(tail: re.Pattern, full: re.Pattern, text: str) -> re.Match | None:
    """`full.search(text)` where `full` is `.*` + `tail` (no DOTALL), in linear time."""
    first = tail.search(text)
    if first is None:
        return None
    line_start = text.rfind("\n", 0, first.start()) + 1
    return full.search(text, line_start)


def last_match(pattern: re.Pattern, text: str) -> str | None:
    """`re.findall(pattern, text)[-1]` for a one-group pattern, or None."""
    last = None
    for last in pattern.finditer(text):
        pass
    return last.group(1) if last is not None else None


def strip_parens(answer: str) -> str:
    return re.sub(r"\(|\)", "", answer)


def generated_text(output: Any, stops: Sequence[str] = ()) -> str:
    """The graded text: cut at the first stop string (HF `stop_strings` returns it), then only the
    last MAX_OUTPUT_CHARS characters (answers sit at the end)."""
    text = as_text(output)
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return clip_tail(text[:cut])


def exact_match(prediction: str, reference: str, ignore_punctuation: bool = True) -> float:
    """HF `evaluate` exact_match with ignore_case=True (and ignore_punctuation when set)."""
    pred, ref = prediction.lower(), reference.lower()
    if ignore_punctuation:
        pred, ref = pred.translate(_PUNCT), ref.translate(_PUNCT)
    return float(pred == ref)


def letter_gold(value: Any, n: int, where: str, field: str) -> int:
    """A gold answer given as an index (0-based int) or a letter ("B", "(B)") -> its index."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: field '{field}' should be an option index or letter, got {value!r}")
    letter = strip_parens(value.strip()).upper() if isinstance(value, str) else ""
    if isinstance(value, int):
        index = value
    elif len(letter) == 1 and letter in LETTERS:
        index = LETTERS.index(letter)
    else:
        raise ValueError(f"{where}: field '{field}' should be an option index or letter, got {value!r}")
    if not 0 <= index < n:
        raise ValueError(f"{where}: field '{field}' = {value!r} is out of range for {n} options")
    return index


def string_list(row: dict, name: str, where: str, min_len: int = 2) -> list[str]:
    value = row.get(name)
    if not isinstance(value, list) or len(value) < min_len or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: field '{name}' should be a list of at least {min_len} strings")
    return value


def unseen_instructions(letter_list: str, final_separator: str) -> tuple[str, str]:
    """(description, final description) of OLMES's `0shot_cot::tulu3` configs (the unseen suite):
    the user turn is description + question + final description. `letter_list` is
    "(A), (B), (C), (D)" or "(A), (B), (C), (D), (E), etc."; `final_separator` is the newlines
    that open the final description ("\n\n" for GPQA and AGIEval, "\n" for MMLU-Pro)."""
    end = "" if letter_list.endswith(".") else "."  # "..., (E), etc." carries its own full stop
    ask = f'"Therefore, the answer is (ANSWER_LETTER)" where (ANSWER_LETTER) is one of {letter_list}{end}'
    description = ("Answer the following multiple-choice question by giving the correct answer letter in parentheses. "
                   f"Provide CONCISE reasoning for the answer, and make sure to finish the response with {ask}\n\n")
    final = (f"{final_separator}Answer the above question and REMEMBER to finish your response with the exact "
             f"phrase {ask}")
    return description, final


def first_match(patterns: Sequence[re.Pattern], text: str) -> str | None:
    """Group 1 of the first pattern (in order) that `re.search` matches, or None."""
    for pattern in patterns:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


# ---------------------------------------------------------------- log-likelihood scoring


def _argmax(values: Sequence[float]) -> int:
    # numpy.argmax: the first maximum wins a tie
    return max(range(len(values)), key=values.__getitem__)


def choice_accuracies(output: LoglikOutput, gold: int, n: int) -> dict[str, float]:
    """OLMES MCAccuracy on one question: the option with the highest summed log-prob (acc_raw),
    per token (acc_per_token) and per character of the continuation (acc_per_char) is the gold."""
    if not isinstance(output, LoglikOutput):
        raise ValueError(f"expected a LoglikOutput, got {type(output).__name__}")
    if not len(output.logprobs) == len(output.num_tokens) == len(output.continuations) == n:
        raise ValueError(f"expected {n} scored continuations, got {len(output.logprobs)}")
    lp = [float(x) for x in output.logprobs]
    per_token = [x / max(t, 1) for x, t in zip(lp, output.num_tokens)]
    per_char = [x / max(len(c), 1) for x, c in zip(lp, output.continuations)]
    return {"acc_raw": float(_argmax(lp) == gold), "acc_per_token": float(_argmax(per_token) == gold),
            "acc_per_char": float(_argmax(per_char) == gold), "predicted": _argmax(lp)}


# ---------------------------------------------------------------- aggregation


def grouped_means(scores: list[dict[str, Any]], samples: list[Sample], metrics: Sequence[str],
                  key: str = "subject") -> dict[str, float]:
    """`<metric>_macro` (mean over groups of the group means), `<metric>_micro` (mean over
    samples) and `<metric>/<group>` for each metric; groups are `sample.meta[key]`."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sample, score in zip(samples, scores):
        groups[sample.meta[key]].append(score)
    out: dict[str, float] = {}
    for metric in metrics:
        per_group = {g: mean(s[metric] for s in rows) for g, rows in sorted(groups.items())}
        out[f"{metric}_macro"] = mean(per_group.values())
        out[f"{metric}_micro"] = mean(s[metric] for s in scores)
        out.update({f"{metric}/{g}": v for g, v in per_group.items()})
    out["num_samples"] = float(len(scores))
    return out


# ---------------------------------------------------------------- reading rows


def read_arrow(path: Path) -> Iterator[tuple[str, dict]]:
    """Rows of an HF `datasets` arrow file (the IPC stream `save_to_disk` writes)."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_stream(source).read_all()
    for i, row in enumerate(table.to_pylist(), 1):
        yield f"{path}:{i}", row


def rows_from(source: str | os.PathLike, hf_config: str | None = None, hf_split: str = "test"
              ) -> Iterator[tuple[str, dict]]:
    """`iter_rows`, plus HF `.arrow` files."""
    if str(source).endswith(".arrow"):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ValueError(f"{path}: data file not found")
        return read_arrow(path)
    return iter_rows(source, hf_config=hf_config, hf_split=hf_split)
