"""BBH: 3-shot CoT chat prompt from lm-eval's exemplars, BBH-format loading, answer extraction
(checked against lm-eval's own regex filter), micro/macro aggregation, reward."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from posttrain.evaluation.tasks import base
from posttrain.evaluation.tasks import bbh as bbh_module
from posttrain.evaluation.tasks.bbh import (SUBTASKS, BBHTask, build_messages, exact_match, exemplars,
                                            extract_answer, lm_eval_extract, reward)

FIXTURES = Path(__file__).parent / "fixtures" / "eval" / "bbh"


def test_three_shot_messages_exact_strings():
    messages = build_messages("boolean_expressions", "True and not not ( not False ) is")
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3 + ["user"]
    assert messages[0]["content"] == (
        "Evaluate the result of a random Boolean expression.\n\n"
        "Q: not ( ( not not True ) ) is\nA: Let's think step by step."
    )
    assert messages[1]["content"].startswith("Remember that (i) expressions inside brackets are always")
    assert messages[1]["content"].endswith("= not True = False. So the answer is False.")
    assert messages[2]["content"] == "Q: True and False and not True and True is\nA: Let's think step by step."
    assert messages[6] == {"role": "user",
                           "content": "Q: True and not not ( not False ) is\nA: Let's think step by step."}
    # zero shots: the description still opens the (only) user turn
    assert build_messages("word_sorting", "Sort: b a", num_shots=0) == [
        {"role": "user", "content": "Sort a list of words.\n\nQ: Sort: b a\nA: Let's think step by step."}]


def test_every_subtask_has_three_exemplars_in_the_answer_format():
    assert len(SUBTASKS) == 27
    for subtask in SUBTASKS:
        description, shots = exemplars(subtask)
        assert description.endswith("\n\n") and len(shots) == 3, subtask
        assert all(" So the answer is " in cot and cot.endswith(".") for _, cot in shots), subtask


def test_load_bbh_directory():
    samples = BBHTask().load(FIXTURES)
    assert [s.id for s in samples] == [
        "bbh/boolean_expressions/0", "bbh/boolean_expressions/1", "bbh/date_understanding/0",
        "bbh/date_understanding/1", "bbh/dyck_languages/0", "bbh/navigate/0", "bbh/navigate/1",
        "bbh/object_counting/0", "bbh/object_counting/1", "bbh/word_sorting/0", "bbh/word_sorting/1"]
    assert [s.ground_truth for s in samples[:5]] == ["False", "True", "(B)", "(A)", "] ]"]
    first = samples[2]
    assert first.meta == {"subtask": "date_understanding"} and first.assistant_prefix == ""
    assert first.messages[0]["content"].startswith("Infer the date from context.\n\nQ: Today is Christmas Eve")
    assert first.messages[-1]["content"].startswith("Q: Today is Christmas Eve of 1937. What is the date tomorrow")
    assert first.messages[-1]["content"].endswith("(F) 07/25/1937\nA: Let's think step by step.")
    gen = BBHTask().generation
    assert (gen.max_new_tokens, gen.stop, gen.do_sample) == (512, (), False)
    assert [s.id for s in BBHTask().load(FIXTURES, limit=3)] == [s.id for s in samples[:3]]


def test_load_rows_file_and_single_bbh_json(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"subtask": "navigate", "input": "Take 1 step.", "target": "No"}) + "\n"
                    + json.dumps({"task": "bbh_object_counting", "input": "I have a cat.", "target": "1"}) + "\n")
    samples = BBHTask().load(rows)
    assert [(s.id, s.ground_truth) for s in samples] == [("bbh/navigate/0", "No"), ("bbh/object_counting/0", "1")]
    single = BBHTask().load(FIXTURES / "navigate.json")
    assert [s.id for s in single] == ["bbh/navigate/0", "bbh/navigate/1"]


def test_hf_source_reads_every_subtask_config(monkeypatch):
    calls = []

    def fake_iter_rows(source, hf_config=None, hf_split="test"):
        calls.append((source, hf_config, hf_split))
        yield f"hf:lukaemon/bbh:{hf_config}:1", {"input": f"question of {hf_config}", "target": "(A)"}

    monkeypatch.setattr(bbh_module, "iter_rows", fake_iter_rows)
    samples = BBHTask().load("hf:lukaemon/bbh@abc123")
    assert [c[1] for c in calls] == list(SUBTASKS)
    assert {c[0] for c in calls} == {"hf:lukaemon/bbh@abc123"} and {c[2] for c in calls} == {"test"}
    assert len(samples) == 27 and samples[-1].id == "bbh/word_sorting/0"


def test_bad_data_names_the_place(tmp_path):
    with pytest.raises(ValueError, match="BIG-Bench-Hard"):
        BBHTask().load(None)
    bad = tmp_path / "bbh"
    bad.mkdir()
    (bad / "navigate.json").write_text(json.dumps({"examples": [{"input": "q", "target": "No"}, {"input": "q"}]}))
    with pytest.raises(ValueError, match=r"navigate\.json: examples\[1\]: missing field 'target'"):
        BBHTask().load(bad)
    (bad / "navigate.json").write_text(json.dumps([{"input": "q", "target": "No"}]))
    with pytest.raises(ValueError, match="expected a BBH file"):
        BBHTask().load(bad)
    (bad / "navigate.json").unlink()
    (bad / "navigation.json").write_text(json.dumps({"examples": []}))
    with pytest.raises(ValueError, match="unknown BBH subtask 'navigation'"):
        BBHTask().load(bad)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"input": "q", "target": "No"}) + "\n")
    with pytest.raises(ValueError, match=r"rows\.jsonl:1: missing field 'subtask'"):
        BBHTask().load(rows)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no <subtask>.json files"):
        BBHTask().load(empty)


@pytest.mark.parametrize(
    "output, option, expected",
    [
        ("A = True. So the answer is False.", False, "False"),
        ("So the answer is (B).", True, "(B)"),
        ("So the answer is (B) 12/25/1937.", True, "(B)"),
        ("The answer is **(C)**.", True, "(C)"),
        ("Therefore the answer is: (D)", True, "(D)"),
        ("so the answer is B.", True, "(B)"),
        ("(E)", True, "(E)"),  # no phrase: the whole output
        ("So the answer is 8", False, "8"),  # no final period
        ("Count: 3. So the answer is 15.\nDone.", False, "15"),  # the rest of that line only
        ("First the answer is 2. Checking again, the answer is 3.", False, "3"),  # the last one
        ("So the answer is costume counterpart oven.", False, "costume counterpart oven"),
        ("So the answer is ] } ].", False, "] } ]"),
        ("So the answer is -123.", False, "-123"),
        ("So the answer is Yes.", False, "Yes"),
        ("I am not sure.", False, "I am not sure"),
        ("So the answer is none of them.", True, "none of them"),  # no option letter found
    ],
)
def test_extract_answer(output, option, expected):
    assert extract_answer(output, option) == expected


def test_exact_match_ignores_case_and_whitespace_runs():
    assert exact_match("true", "True") == 1.0
    assert exact_match("arson  aspect\ncensus", "arson aspect census") == 1.0
    assert exact_match("]}]", "] } ]") == 0.0
    assert exact_match("(b)", "(B)") == 1.0
    assert exact_match("15", "15.0") == 0.0


# Outputs for the faithfulness check against lm-eval 0.4.13's own filter (its regex, take_first).
LM_EVAL_CASES = [
    "Let's think. So the answer is (A).",
    "So the answer is False.",
    "So the answer is 8",  # no period: the lookahead eats the last character -> ""
    "So the answer is 12.",
    "The answer is (B).",  # capital T: the lookbehind needs lowercase "the answer is "
    "so the answer is (C).\nMore text after.",
    "the answer is (A). Then the answer is (B).",  # first match runs to the end of the line
    "the answer is x",
    "no phrase at all",
    "",
    "So the answer is  spaced out .",
    "So the answer is ] } ].",
    "So the answer is costume counterpart oven.",
    "first the answer is 1.\nsecond the answer is 2.",
    "So the answer is Yes.\n\n",
    "So the answer is (D)\n",
    "the answer is ",
    "So the answer is -123.",
]


def test_lm_eval_filter_agrees_with_lm_eval():
    from lm_eval.filters.extraction import RegexFilter

    reference = RegexFilter(regex_pattern="(?<=the answer is )(.*)(?=.)", group_select=0)
    expected = [out[0] for out in reference.apply([[c] for c in LM_EVAL_CASES], [{}] * len(LM_EVAL_CASES))]
    assert [lm_eval_extract(c) for c in LM_EVAL_CASES] == expected
    assert expected[2] == "" and expected[4] == "[invalid]" and expected[6] == "(A). Then the answer is (B)"


def test_where_the_primary_rule_and_lm_eval_differ():
    # the three lm-eval artefacts the primary rule does not have
    assert (extract_answer("So the answer is 8"), lm_eval_extract("So the answer is 8")) == ("8", "")
    assert (extract_answer("The answer is (B).", True), lm_eval_extract("The answer is (B).")) == ("(B)", "[invalid]")
    last = "the answer is (A). Then the answer is (B)."
    assert (extract_answer(last, True), lm_eval_extract(last)) == ("(B)", "(A). Then the answer is (B)")


def test_score_and_micro_macro_aggregate():
    task = BBHTask()
    samples = task.load(FIXTURES)
    outputs = {
        "bbh/boolean_expressions/0": "So the answer is False.",
        "bbh/boolean_expressions/1": "So the answer is False.",  # wrong
        "bbh/date_understanding/0": "The answer is (B).",  # right, lm-eval misses it (capital T)
        "bbh/date_understanding/1": "So the answer is (A).",
        "bbh/dyck_languages/0": "So the answer is ] ].",
        "bbh/navigate/0": "So the answer is No.",
        "bbh/navigate/1": "So the answer is Yes.",  # wrong
        "bbh/object_counting/0": "So the answer is 8.",
        "bbh/object_counting/1": "So the answer is 14.",  # wrong
        "bbh/word_sorting/0": "So the answer is syndrome therefrom.",
        "bbh/word_sorting/1": "I don't know",  # wrong
    }
    scores = [task.score(s, outputs[s.id]) for s in samples]
    assert scores[2] == {"exact_match": 1.0, "exact_match_lm_eval": 0.0, "extracted": "(B)"}
    metrics = task.aggregate(scores, samples)
    assert metrics["exact_match"] == pytest.approx(7 / 11)
    assert metrics["exact_match_lm_eval"] == pytest.approx(6 / 11)
    # subtask means: 1/2, 1, 1, 1/2, 1/2, 1/2
    assert metrics["exact_match_macro"] == pytest.approx((0.5 + 1 + 1 + 0.5 + 0.5 + 0.5) / 6)
    assert metrics["exact_match/navigate"] == 0.5 and metrics["exact_match/dyck_languages"] == 1.0
    assert metrics["num_samples"] == 11.0 and metrics["num_subtasks"] == 6.0
    assert task.primary_metric == "exact_match"


def test_reward():
    assert reward("... So the answer is (C).", "(C)") == 1.0
    assert reward("... So the answer is (C).", "(D)") == 0.0
    assert reward("So the answer is valid.", "valid") == 1.0
    assert reward("So the answer is invalid.", "valid") == 0.0
    assert BBHTask().reward(None, "True") == 0.0
    with pytest.raises(ValueError, match="empty"):
        reward("x", " ")


def test_graders_are_bounded_on_huge_outputs():
    sample = BBHTask().load(FIXTURES, limit=1)[0]
    for output in ("the answer is " * 1_000_000, "(" * 10_000_000, "\n" * 10_000_000, None, b"x", 7):
        start = time.perf_counter()
        BBHTask().score(sample, output)
        reward(output, "(A)")
        assert time.perf_counter() - start < 2.0
    assert base.MAX_OUTPUT_CHARS < 10_000_000


def test_render_with_the_embedded_chat_template(tokenizer):
    sample = BBHTask().load(FIXTURES, limit=1)[0]
    prompt = base.render_prompt(tokenizer, sample)
    assert prompt.count("<|im_start|>user\n") == 4 and prompt.count("<|im_start|>assistant\n") == 4
    assert prompt.endswith("Q: not ( True ) and ( True ) is\nA: Let's think step by step.<|im_end|>\n"
                           "<|im_start|>assistant\n")
