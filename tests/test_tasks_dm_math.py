"""DeepMind Mathematics (0-shot CoT, Tülu 3 unseen suite): the exact prompt, byte-literal decoding,
strict and flex extraction, answer equivalence, loading (.jsonl, .txt, folders, limits) and the
macro average."""

from __future__ import annotations

import json

import pytest

from conftest import REPO
from posttrain.evaluation.tasks.base import MissingData
from posttrain.evaluation.tasks.dm_math import (DMMathTask, answers_equal, decode_field, flex_candidates,
                                                strict_answer, user_turn)

FIXTURES = REPO / "tests" / "fixtures" / "eval" / "dm_math"
JSONL = str(FIXTURES / "sample.jsonl")


def test_prompt_exact_string():
    text = user_turn("Solve 3*x + 2 = 11 for x.", ["-5", "2"])
    assert text == (
        "Solve the following math problem efficiently:\nSolve 3*x + 2 = 11 for x.\n\n"
        'Show your work and conclude with the exact phrasing "Therefore, the final answer is [answer]. I hope it is '
        'correct." where [answer] is just the final number, expression, or answer label representing the solution.  '
        "Some example answers from this question category:\n"
        '- If the answer is -5, conclude with "Therefore, the final answer is -5. I hope it is correct."\n'
        '- If the answer is 2, conclude with "Therefore, the final answer is 2. I hope it is correct."\n\n'
        "Note the formatting for the following answer types:\n"
        "- If the answer is a list (e.g., when there are two solutions to an equation), unless otherwise specified, "
        "present the solutions in a list separated by commas ordering them from the smallest to biggest  e.g.: 2, 10\n"
        "- Powers should be written with **, for instance x to the power of 2 should be written as x**2\n"
        "- Use * for multiplication, e.g.: 2*x\n"
        "- For fractions, separate the numerator and denominator with a slash (/) e.g.: -2/7")


def test_load_jsonl_examples_never_leak_the_answer():
    samples = DMMathTask().load(JSONL)
    first = samples[0]
    assert first.id == "dm_math/algebra__linear_1d/0"
    assert (first.ground_truth, first.meta["category"]) == ("3", "algebra__linear_1d")  # b'...\n' decoded
    assert first.meta["question"] == "Solve 3*x + 2 = 11 for x."
    # other answers of the category, distinct, in file order, never the row's own
    assert [s.meta["answer_examples"] for s in samples[:4]] == [["-5", "2"], ["3", "2"], ["-5", "2"], ["3", "-5"]]
    assert first.messages == [{"role": "user", "content": user_turn("Solve 3*x + 2 = 11 for x.", ["-5", "2"])}]
    assert samples[4].meta["answer_examples"] == []  # the only row of its category
    gen = DMMathTask().generation
    assert (gen.max_new_tokens, gen.stop, gen.do_sample) == (2048, (), False)


def test_load_txt_folder_limits_and_fixed_examples(tmp_path):
    txt = DMMathTask().load(str(FIXTURES / "arithmetic__div.txt"))
    assert [(s.meta["category"], s.meta["question"], s.ground_truth) for s in txt] == [
        ("arithmetic__div", "What is 12 divided by 4?", "3"), ("arithmetic__div", "Divide 9 by 3.", "3"),
        ("arithmetic__div", "What is 1/2 + 1/4?", "3/4")]
    assert txt[0].meta["answer_examples"] == ["3/4"]  # "3" is the row's own answer
    assert len(DMMathTask().load(str(FIXTURES))) == 3  # a folder: its .txt files
    assert [s.ground_truth for s in DMMathTask(per_category=2).load(JSONL)] == ["3", "-5", "-42", "-1, 2, 4",
                                                                              "6*a", "True"]
    assert len(DMMathTask().load(JSONL, limit=3)) == 3
    ex = tmp_path / "examples.json"
    ex.write_text(json.dumps({"algebra__linear_1d": ["7", "-1"]}))
    assert DMMathTask(answer_examples=str(ex)).load(JSONL)[0].meta["answer_examples"] == ["7", "-1"]


def test_bad_data():
    with pytest.raises(MissingData, match="no offline copy"):
        DMMathTask().load()
    with pytest.raises(ValueError, match="limit must be >= 0"):
        DMMathTask().load(JSONL, limit=-1)
    with pytest.raises(ValueError, match="not found"):
        DMMathTask().load(str(FIXTURES / "missing.txt"))


def test_bad_rows_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1?", "answer": "2"}\n{"question": "2+2?"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field 'answer'"):
        DMMathTask().load(str(bad))
    txt = tmp_path / "numbers__gcd.txt"
    txt.write_text("Q1\nA1\nQ2\n")
    with pytest.raises(ValueError, match="odd number of lines"):
        DMMathTask().load(str(txt))


def test_decode_field():
    assert decode_field("b'Solve 3*x = 9 for x.\\n'") == "Solve 3*x = 9 for x."
    assert decode_field('b"-3\\n"') == "-3"
    assert decode_field("  b is 4  ") == "b is 4"
    assert decode_field("b'unclosed") == "b'unclosed"


def test_extraction():
    out = "3x = 9, so x = 3.\nTherefore, the final answer is 3. I hope it is correct."
    assert strict_answer(out) == "3"
    assert strict_answer("therefore, the final answer is -2/7. I hope it is correct.") == "-2/7"  # (?i)
    assert strict_answer("The answer is 3.") is None
    assert strict_answer("Therefore, the final answer is 1. I hope it is correct. Therefore, the final answer is "
                         "2.5. I hope it is correct.") == "2.5"  # the last one
    assert flex_candidates("So the final answer is -1, 2, 4.") == ["-1, 2, 4", "So the final answer is -1, 2, 4."]
    assert flex_candidates("We get \\boxed{6*a}\nDone") == ["6*a", "Done"]


@pytest.mark.parametrize("gold, pred, equal", [
    ("3", "3", True), ("3", "3.0", True), ("3", " 3. ", True), ("-42", "$-42$", True),
    ("3/4", "0.75", True), ("1/110", "0.009", False), ("3", "4", False),
    ("True", "true", True), ("False", "True", False),
    ("-1, 2, 4", "-1,2,4", True), ("-1, 2, 4", "4, 2, -1", False),  # lists are ordered
    ("6*a", "a*6", True), ("54*a - 30", "-30 + 54*a", True), ("x**2", "x^2", True),
    ("6*a", "6a", False),  # no implicit products: base-n answers look like "6a"
    ("3a", "a3", False), ("-1a3", "-1A3", True),
    ("10:23 AM", "10:23 am", True), ("3", None, False), ("3", "  ", False),
])
def test_answers_equal(gold, pred, equal):
    assert answers_equal(gold, pred) is equal


def test_score_aggregate_and_reward():
    task = DMMathTask()
    samples = task.load(JSONL)
    outs = ["Therefore, the final answer is 3. I hope it is correct.",  # right
            "x is -5",  # flex only (last line)
            "Therefore, the final answer is 4. I hope it is correct.",  # wrong
            "",  # nothing
            "Therefore, the final answer is -42. I hope it is correct.",
            "Therefore, the final answer is 4, 2, -1. I hope it is correct.",  # wrong order
            "Therefore, the final answer is a*6. I hope it is correct.",
            "The final answer is True"]
    scores = [task.score(s, o) for s, o in zip(samples, outs)]
    assert [s["exact_match"] for s in scores] == [1, 0, 0, 0, 1, 0, 1, 0]
    assert [s["exact_match_flex"] for s in scores] == [1, 0, 0, 0, 1, 0, 1, 1]
    assert scores[0]["extracted"] == "3"
    m = task.aggregate(scores, samples)
    assert m["exact_match"] == pytest.approx(3 / 8)
    # categories: linear_1d 1/4, mul 1, sort 0, differentiate 1, is_prime 0 -> macro 2.25 / 5
    assert m["exact_match_macro"] == pytest.approx(2.25 / 5)
    assert m["exact_match_flex_macro"] == pytest.approx(3.25 / 5)
    assert m["exact_match/algebra__linear_1d"] == 0.25 and m["num_categories"] == 5.0
    assert task.primary_metric == "exact_match_macro"
    assert task.reward("so the final answer is -5.", "-5") == 1.0
    assert task.reward("so the final answer is 5.", "-5") == 0.0
    with pytest.raises(ValueError, match="empty"):
        task.reward("x", "")
