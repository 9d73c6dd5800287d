"""Verifiable constraints of the Tülu 3 RLVR data (`allenai/RLVR-GSM-MATH-IF-Mixed-Constraints`).

Rows with `dataset == "ifeval"` carry a `ground_truth` JSON string naming one constraint function
and its arguments, e.g. ``{"func_name": "verify_keyword_frequency", "N": 17, "word":
"nonsensorial", "quantifier": null, ...}``; null arguments are unused. The reward is 1.0 when the
response satisfies the constraint. The functions follow open-instruct's `if_functions.py`
(2025 version, which fixed a few release-time bugs: sentence splitting on "!", `validate_choice`
looking for an option *in* the response, numbered section headers); see docs/EVAL_NOTES.md.
They are deliberately not the IFEval checkers: Tülu 3 trained on these definitions.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
from typing import Any, Callable

from posttrain.evaluation.tasks.base import as_text
from posttrain.evaluation.tasks.ifeval_checks import count_placeholders, detect_language


def _quantified(count: int, n: int, quantifier: str, around: int) -> bool:
    if quantifier == "at least":
        return count >= n
    if quantifier == "at most":
        return count <= n
    if quantifier == "around":
        return abs(count - n) <= around
    return False


def verify_keywords(text: str, keyword_list: list[str]) -> bool:
    lowered = text.lower()
    return all(k.lower() in lowered for k in keyword_list)


def verify_keyword_frequency(text: str, word: str, N: int) -> bool:
    words = re.findall(r"\b\w+\b", text.lower())
    return sum(1 for w in words if w == word.lower()) == N


def validate_forbidden_words(text: str, forbidden_words: list[str]) -> bool:
    lowered = text.lower()
    return not any(w.lower() in lowered for w in forbidden_words)


def verify_letter_frequency(text: str, letter: str, N: int) -> bool:
    if len(letter) != 1:
        raise ValueError("letter must be a single character")
    return text.count(letter) == N


def validate_response_language(text: str, language: str) -> bool:
    return detect_language(text) == language  # undetectable text fails here


def verify_paragraph_count(text: str, N: int) -> bool:
    cleaned = "\n".join(line.strip() for line in text.splitlines()).strip()
    paragraphs = cleaned.split("* * *")
    return all(p.strip() for p in paragraphs) and len(paragraphs) == N


def validate_word_constraint(text: str, N: int, quantifier: str) -> bool:
    return _quantified(len(text.strip().split()), N, quantifier, max(round(N * 0.1), 1))


def verify_sentence_constraint(text: str, N: int, quantifier: str) -> bool:
    sentences = re.split(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?|!)\s", text)
    return _quantified(len(sentences), N, quantifier, 1)


def validate_paragraphs(text: str, N: int, first_word: str, i: int) -> bool:
    paragraphs = text.split("\n\n")
    return len(paragraphs) == N and paragraphs[i - 1].strip().startswith(first_word)


def verify_postscript(text: str, postscript_marker: str) -> bool:
    index = text.find(postscript_marker)
    return index >= 0 and len(text[index:].strip()) > len(postscript_marker)


def validate_placeholders(text: str, N: int) -> bool:
    return count_placeholders(text) >= N  # len(re.findall(r"\[(.*?)\]", text)), linear


def verify_bullet_points(text: str, N: int) -> bool:
    return sum(1 for line in text.split("\n") if line.strip().startswith(("*", "-"))) == N


def validate_title(text: str) -> bool:
    """re.search(r"<<(.*?)>>", text) is not None, checking only the first "<<" of each line
    (it sees the most of its line) so a line full of "<<" costs one scan, not one per "<<"."""
    pos, n = 0, len(text)
    while True:
        p = text.find("<<", pos)
        if p < 0:
            return False
        eol = text.find("\n", p)
        eol = n if eol < 0 else eol
        if text.find(">>", p + 2, eol) >= 0:
            return True
        pos = eol


def _options(options: Any) -> list[str]:
    if isinstance(options, str):
        try:
            parsed = ast.literal_eval(options)
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, (list, tuple)):
            return [str(o) for o in parsed]
        return [o.strip() for o in options.split(",") if o.strip()]
    return [str(o) for o in options]


def validate_choice(text: str, options: Any) -> bool:
    return any(option in text for option in _options(options))


def validate_highlighted_sections(text: str, N: int) -> bool:
    return len(re.findall(r"\*(.*?)\*", text)) >= N


def validate_sections(text: str, N: int, section_splitter: str) -> bool:
    pattern = r"\s?" + re.escape(section_splitter) + r"\s?\d+\s?"
    return len(re.split(pattern, text, flags=re.IGNORECASE)) - 1 >= N


def validate_json_format(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def validate_repeat_prompt(text: str, original_prompt: str) -> bool:
    return text.startswith(original_prompt)


def validate_two_responses(text: str) -> bool:
    if text.count("******") != 1:
        return False
    first, second = text.split("******")
    return first.strip() != second.strip()


def validate_uppercase(text: str) -> bool:
    return text == text.upper()


def validate_lowercase(text: str) -> bool:
    return text == text.lower()


def validate_frequency_capital_words(text: str, N: int, quantifier: str) -> bool:
    words = re.findall(r"\b[A-Z]+\b", text)
    return _quantified(len(words), N, quantifier, max(round(N * 0.1), 1))


def validate_end(text: str, end_phrase: str) -> bool:
    return text.endswith(end_phrase)


def validate_quotation(text: str) -> bool:
    return text.startswith('"') and text.endswith('"')


def validate_no_commas(text: str) -> bool:
    return "," not in text


CONSTRAINTS: dict[str, Callable[..., bool]] = {
    f.__name__: f
    for f in (
        verify_keywords,
        verify_keyword_frequency,
        validate_forbidden_words,
        verify_letter_frequency,
        validate_response_language,
        verify_paragraph_count,
        validate_word_constraint,
        verify_sentence_constraint,
        validate_paragraphs,
        verify_postscript,
        validate_placeholders,
        verify_bullet_points,
        validate_title,
        validate_choice,
        validate_highlighted_sections,
        validate_sections,
        validate_json_format,
        validate_repeat_prompt,
        validate_two_responses,
        validate_uppercase,
        validate_lowercase,
        validate_frequency_capital_words,
        validate_end,
        validate_quotation,
        validate_no_commas,
    )
}


def parse_constraint(ground_truth: Any) -> tuple[Callable[..., bool], dict[str, Any]]:
    """(function, arguments) from a `func_name` ground truth; ValueError when malformed."""
    value = json.loads(ground_truth) if isinstance(ground_truth, str) else dict(ground_truth)
    if not isinstance(value, dict) or "func_name" not in value:
        raise ValueError(f"constraint ground truth has no 'func_name': {ground_truth!r:.200}")
    name = value.pop("func_name")
    func = CONSTRAINTS.get(name)
    if func is None:
        raise ValueError(f"unknown constraint function {name!r} (known: {sorted(CONSTRAINTS)})")
    params = inspect.signature(func).parameters
    args = {k: v for k, v in value.items() if v is not None}
    unknown = sorted(set(args) - set(params))
    missing = [p for p in list(params)[1:] if p not in args]
    if unknown or missing:
        raise ValueError(f"{name}: unexpected arguments {unknown}, missing {missing}")
    return func, args


def constraint_reward(completion: str, ground_truth: Any) -> float:
    """1.0 if the completion (thinking section removed, stripped) satisfies the constraint."""
    from posttrain.evaluation.tasks.ifeval import strip_thinking

    from posttrain.evaluation.tasks.ifeval import MAX_RESPONSE_CHARS

    func, args = parse_constraint(ground_truth)
    answer = strip_thinking(as_text(completion))
    if len(answer) > MAX_RESPONSE_CHARS:  # as for IFEval: too long to follow any constraint
        return 0.0
    try:
        return float(bool(func(answer, **args)))
    except Exception:  # a response can never make the grader fail; it just scores 0
        return 0.0
