"""RLVR rewards: the real Tülu 3 sample rows, the constraint functions, and the registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.evaluation.tasks.verifiers import get_verifier, verifiable_reward, verify
from posttrain.evaluation.tasks.rlvr_constraints import CONSTRAINTS, constraint_reward, parse_constraint

REPO = Path(__file__).resolve().parents[1]
RLVR = REPO.parent / "shared" / "data" / "rlvr" / "open_instruct_rlvr_sample.jsonl"


def _rows() -> list[dict]:
    return [json.loads(line) for line in RLVR.read_text().splitlines() if line.strip()]


def test_sample_rows_correct_and_incorrect_completions():
    rows = _rows()
    assert {r["dataset"] for r in rows} == {"MATH", "gsm8k"} and len(rows) == 100
    for row in rows:
        truth = row["ground_truth"]
        if row["dataset"] == "MATH":
            right = f"Let me work it out.\n\nTherefore the answer is $\\boxed{{{truth}}}$."
            wrong = "Therefore the answer is $\\boxed{12345.678}$."
        else:
            right = f"Step by step: ... So the answer is {truth}."
            wrong = f"So the answer is {int(truth.replace(',', '')) + 1}."
        assert verifiable_reward(right, row) == 10.0, (truth, right)
        assert verifiable_reward(wrong, row) == 0.0, (truth, wrong)


def test_math_rows_accept_equivalent_forms():
    row = {"dataset": "MATH", "ground_truth": "\\frac{1}{3}"}
    assert verifiable_reward("so \\boxed{\\dfrac{1}{3}}", row) == 10.0
    assert verifiable_reward("Final Answer: The final answer is $1/3$. I hope it is correct.", row) == 10.0
    assert verifiable_reward("it is $0.3333$ roughly", row) == 0.0
    row = {"dataset": "MATH", "ground_truth": "2x-8"}
    assert verifiable_reward("The remainder is \\boxed{-8 + 2x}.", row, correct_value=1.0) == 1.0


def test_gsm8k_rows():
    row = {"dataset": "gsm8k", "ground_truth": "3,380"}
    assert verifiable_reward("The total is 3,380 dollars.", row) == 10.0  # label commas removed too
    row = {"dataset": "GSM8K", "ground_truth": "-4"}
    assert verifiable_reward("He is down -4 points.", row) == 10.0  # sign kept
    assert verifiable_reward("He is down 4 points.", row) == 0.0


# One passing and one failing completion per Tülu 3 constraint function (hand-checked).
CASES = {
    "verify_keywords": ({"keyword_list": ["Apple", "pie"]}, "I like apple PIE.", "I like apple."),
    "verify_keyword_frequency": ({"word": "cat", "N": 2}, "Cat, cat.", "cat catalog cat cat"),
    "validate_forbidden_words": ({"forbidden_words": ["bad"]}, "all good", "not BADLY"),
    "verify_letter_frequency": ({"letter": "z", "N": 2}, "zoo zone", "Zoo zone"),
    "validate_response_language": (
        {"language": "de"},
        "Das ist eine kurze Antwort auf Deutsch, und sie ist wirklich sehr einfach.",
        "This is an English answer.",
    ),
    "verify_paragraph_count": ({"N": 2}, "One.\n  * * *  \nTwo.", "One.\n* * *\n* * *\nTwo."),
    "validate_word_constraint": ({"N": 10, "quantifier": "around"}, " ".join(["w"] * 11), " ".join(["w"] * 12)),
    "verify_sentence_constraint": ({"N": 3, "quantifier": "at least"}, "One. Two! Three?", "Mr. Smith left. Ok."),
    "validate_paragraphs": (
        {"N": 2, "first_word": "Second", "i": 2},
        "First.\n\nSecond one.",
        "First.\n\nsecond one.",
    ),
    "verify_postscript": ({"postscript_marker": "P.S."}, "Hi.\nP.S. bye", "Hi.\nP.S."),
    "validate_placeholders": ({"N": 2}, "[a] [b]", "[a]"),
    "verify_bullet_points": ({"N": 2}, "* a\n- b\ntext", "* a\n* b\n* c"),
    "validate_title": ({}, "<<Title>>\ntext", "<Title>"),
    "validate_choice": ({"options": "('My answer is yes.', 'My answer is no.')"}, "My answer is no.", "Maybe."),
    "validate_highlighted_sections": ({"N": 2}, "*a* and *b*", "*a* only"),
    "validate_sections": ({"N": 2, "section_splitter": "Section"}, "SECTION 1 a section 2 b", "Section a Section b"),
    "validate_json_format": ({}, '{"a": [1, 2]}', "```json\n{}\n```"),
    "validate_repeat_prompt": ({"original_prompt": "Say hi."}, "Say hi. Hi!", "say hi. Hi!"),
    "validate_two_responses": ({}, "A\n******\nB", "A\n******\nA"),
    "validate_uppercase": ({}, "ALL CAPS 1!", "Not all"),
    "validate_lowercase": ({}, "all lower 1!", "Not all"),
    "validate_frequency_capital_words": ({"N": 2, "quantifier": "at most"}, "NASA and ESA and me", "NASA ESA JAXA"),
    "validate_end": ({"end_phrase": "Any questions?"}, "Done. Any questions?", "Any questions? Done."),
    "validate_quotation": ({}, '"quoted"', 'quoted"'),
    "validate_no_commas": ({}, "no commas", "a, b"),
}


def test_every_constraint_function_has_cases():
    assert set(CASES) == set(CONSTRAINTS) and len(CONSTRAINTS) == 25


@pytest.mark.parametrize("name", sorted(CASES))
def test_constraint_functions(name):
    args, good, bad = CASES[name]
    # As in the dataset: every argument key present, unused ones null.
    truth = json.dumps({"func_name": name, "N": None, "quantifier": None, "end_phrase": None, **args})
    row = {"dataset": "ifeval", "ground_truth": truth}
    assert verifiable_reward(good, row) == 10.0
    assert verifiable_reward(bad, row) == 0.0


def test_constraint_reward_strips_thinking():
    truth = {"func_name": "validate_lowercase"}
    assert constraint_reward("<think>Let ME think</think> all lowercase here", truth) == 1.0


def test_ifeval_instruction_format_scores_fraction():
    truth = json.dumps(
        {"instruction_id": ["punctuation:no_comma", "startend:quotation"], "kwargs": [None, {}]}
    )
    assert verify('"no commas here"', "ifeval", truth) == 1.0
    assert verify("no commas, no quotes", "ifeval", truth) == 0.0
    assert verify("no commas and no quotes", "ifeval", str([truth])) == 0.5  # open-instruct's str(list)


def test_registry_aliases_and_errors():
    assert get_verifier("MATH") is get_verifier("math500") is get_verifier(" Minerva_Math ")
    assert get_verifier("GSM8K") is get_verifier("gsm8k")
    with pytest.raises(ValueError, match="no verifier for dataset 'search'"):
        get_verifier("search")
    with pytest.raises(ValueError, match="missing field 'ground_truth'"):
        verifiable_reward("x", {"dataset": "gsm8k"})
    with pytest.raises(ValueError, match="unknown constraint function 'nope'"):
        parse_constraint('{"func_name": "nope"}')
    with pytest.raises(ValueError, match="validate_end: unexpected arguments \\['N'\\], missing \\['end_phrase'\\]"):
        parse_constraint({"func_name": "validate_end", "N": 3})


def test_empty_ground_truth_is_a_data_error():
    # otherwise an empty completion would "match" an empty label
    for dataset in ("gsm8k", "math"):
        with pytest.raises(ValueError, match="ground truth is empty"):
            verify("", dataset, "")
        with pytest.raises(ValueError, match="ground truth is empty"):
            verify("42", dataset, None)


def test_multi_verifier_rows_average():
    score = verify("So the answer is \\boxed{4}.", ["gsm8k", "math"], ["4", "5"])
    assert score == 0.5
