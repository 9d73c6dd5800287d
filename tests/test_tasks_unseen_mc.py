"""Tülu 3's unseen multiple-choice CoT evaluations: MMLU-Pro, GPQA (options shuffled with OLMES's
seed) and AGIEval English. Exact prompts on fixture rows, answer extraction against the plain
OLMES regexes and against lm-eval 0.4.13's mmlu_pro / gpqa filters, macro averages."""

from __future__ import annotations

import json
import random
import re
import string
from pathlib import Path

import pytest

from posttrain.evaluation.tasks import agieval, gpqa, mmlu_pro
from posttrain.evaluation.tasks.agieval import AGIEvalTask
from posttrain.evaluation.tasks.gpqa import GPQATask
from posttrain.evaluation.tasks.mmlu_pro import MMLUProTask

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
ASK4 = ('"Therefore, the answer is (ANSWER_LETTER)" where (ANSWER_LETTER) is one of (A), (B), (C), (D).')
ASK_ETC = ('"Therefore, the answer is (ANSWER_LETTER)" where (ANSWER_LETTER) is one of (A), (B), (C), (D), (E), etc.')


def _description(ask: str) -> str:
    return ("Answer the following multiple-choice question by giving the correct answer letter in parentheses. "
            f"Provide CONCISE reasoning for the answer, and make sure to finish the response with {ask}\n\n")


def _final(ask: str, sep: str) -> str:
    return f"{sep}Answer the above question and REMEMBER to finish your response with the exact phrase {ask}"


def _letters(filtered: str) -> str:
    return "" if filtered == "[invalid]" else filtered.translate(str.maketrans("", "", string.punctuation))


# ---------------------------------------------------------------- MMLU-Pro


def test_mmlu_pro_prompt_gold_and_settings():
    task = MMLUProTask()
    samples = task.load(FIXTURES / "mmlu_pro" / "test.jsonl")
    assert samples[1].messages == [{"role": "user", "content": _description(ASK_ETC) + "Question: Which planet is "
                                    "known as the Red Planet?\n (A) Venus\n (B) Mars\n (C) Jupiter\n (D) Saturn\n"
                                    + _final(ASK_ETC, "\n")}]
    assert samples[0].messages[0]["content"].count("\n (") == 10 and " (J) 10\n\nAnswer the above" in \
        samples[0].messages[0]["content"]
    assert [s.ground_truth for s in samples] == ["G", "B", "J"]
    assert [s.meta["subject"] for s in samples] == ["math", "physics", "math"]
    gen = task.generation
    assert (gen.max_new_tokens, gen.stop, gen.do_sample, task.primary_metric) == (2048, (), False, "exact_match_macro")


@pytest.mark.parametrize("text, expected", [
    ("3 + 4 = 7. Therefore, the answer is (G)", ("G", 1.0)),
    ("Therefore, the answer is (A). Wait. Therefore, the answer is (C).", ("C", 1.0)),  # the last format match
    ("The answer is (B).", ("B", 0.5)),
    ("the answer is: D", ("D", 0.5)),
    ("So the answer is because of gravity", ("b", 0.5)),  # (?i), no word boundary: "b" of "because"
    ("answer is J and then answer is A", ("J", 0.5)),  # the first "answer is"
    ("Answer: E", ("E", 0.5)),
    ("Answer: A\nanswer: B and Answer: C", ("A", 0.5)),  # the last "answer: X" of the first line with one
    ("First line\nmy answer: B then Answer: H", ("H", 0.5)),
    ("I choose F.", ("F", 0.0)),  # the last stand-alone capital A-J
    ("It is between C and I", ("I", 0.0)),
    ("Therefore, the answer is (K)", ("", 0.0)),  # K is not an option letter
    ("", ("", 0.0)),
    ("Therefore, the answer is G", ("G", 0.5)),  # no parentheses: the format regex misses, "answer is" catches
    ("(B) looks right", ("B", 0.0)),
])
def test_mmlu_pro_extract_answer(text, expected):
    assert mmlu_pro.extract_answer(text) == expected


# (output, ours, lm-eval 0.4.13 mmlu_pro custom-extract: `answer is \(?([ABCDEFGHIJ])\)?`, first match)
MMLU_PRO_LM_EVAL = [
    ("3 + 4 = 7. Therefore, the answer is (G)", "G", "G"),
    ("The answer is (B).", "B", "B"),
    ("the answer is (C)", "C", "C"),
    ("Therefore, the answer is (A). Wait. Therefore, the answer is (C).", "C", "A"),  # OLMES: last; lm-eval: first
    ("the answer is: D", "D", ""),  # lm-eval has no optional colon
    ("So the answer is because of gravity", "b", ""),  # lm-eval is case-sensitive
    ("answer is J and then answer is A", "J", "J"),
    ("Answer: E", "E", ""),  # lm-eval has no "answer:" fallback
    ("I choose F.", "F", ""),  # nor a last-letter fallback
    ("Therefore, the answer is (K)", "", ""),
    ("", "", ""),
    ("Therefore, the answer is G", "G", "G"),
    ("Step 1 ... the answer is (H)\nTherefore, the answer is (H)", "H", "H"),
    ("The answer is A) because", "A", "A"),
    ("My reasoning. Therefore, the answer is (J).", "J", "J"),
    ("the ANSWER IS (E)", "E", ""),  # (?i) in OLMES; lm-eval is case-sensitive
]


def test_mmlu_pro_against_lm_eval_filter():
    from lm_eval.filters.extraction import RegexFilter

    custom = RegexFilter(regex_pattern=r"answer is \(?([ABCDEFGHIJ])\)?")
    outputs = [row[0] for row in MMLU_PRO_LM_EVAL]
    got = [(o, mmlu_pro.extract_answer(o)[0], _letters(custom.apply([[o]], [{}])[0][0])) for o in outputs]
    assert got == MMLU_PRO_LM_EVAL
    assert sum(ours.upper() == theirs for _, ours, theirs in got) == 10  # 6 differences, each commented


def test_mmlu_pro_answer_colon_fallback_equals_the_plain_regex():
    rng = random.Random(1)
    pieces = ["answer:", "Answer:", " ", "\n", "A", "B", "J", "K", "x", "answer", ":", "Answer: A"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 20)))
        plain = re.search(r"(?i)answer is:?\s*\(?([A-J])\)?", text) or re.search(r".*[aA]nswer:\s*([A-J])", text)
        found = re.findall(r".*\b([A-J])\b", text)
        expected = plain.group(1) if plain else (found[-1] if found else "")
        assert mmlu_pro.extract_answer(text)[0] == expected


def test_mmlu_pro_score_aggregate_and_bad_rows(tmp_path):
    task = MMLUProTask()
    samples = task.load(FIXTURES / "mmlu_pro" / "test.jsonl")
    assert task.score(samples[0], "7. Therefore, the answer is (G)") == {
        "exact_match": 1.0, "answer_format_correct": 1.0, "extracted": "G"}
    assert task.score(samples[1], "so the answer is b")["exact_match"] == 1.0  # case is ignored
    scores = [{"exact_match": e, "answer_format_correct": 1.0} for e in (1.0, 1.0, 0.0)]
    metrics = task.aggregate(scores, samples)
    assert (metrics["exact_match_macro"], metrics["exact_match_micro"]) == (pytest.approx(0.75), pytest.approx(2 / 3))
    assert metrics["exact_match/math"] == 0.5
    good = json.loads((FIXTURES / "mmlu_pro" / "test.jsonl").read_text().splitlines()[1])
    for change, message in [({"answer": "C"}, "disagrees with 'answer_index'"),
                            ({"options": [str(i) for i in range(11)]}, "at most 10"),
                            ({"category": None}, "field 'category'"),
                            ({"answer_index": 7, "answer": "H"}, "out of range")]:
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(good | change) + "\n")
        with pytest.raises(ValueError, match=rf"bad.jsonl:1: .*{message}"):
            task.load(path)
    with pytest.raises(ValueError, match="hf:TIGER-Lab/MMLU-Pro"):
        task.load()
    assert mmlu_pro.reward("Therefore, the answer is (B)", "B") == 1.0


# ---------------------------------------------------------------- GPQA


def test_gpqa_options_are_cleaned_and_shuffled_with_seed_111():
    samples = GPQATask().load(FIXTURES / "gpqa" / "gpqa_main.jsonl")
    # random.Random(111 + i).shuffle([inc1, inc2, inc3, correct]): i=0 -> [inc1, inc3, correct, inc2],
    # i=1 -> unchanged, i=2 -> [correct, inc2, inc3, inc1]
    assert samples[0].meta["options"] == ["Oxygen", "Carbon dioxide", "Nitrogen", "Argon"]
    assert samples[1].meta["options"] == ["Positive", "Neutral. varies", "It depends", "Negative "]
    assert samples[2].meta["options"] == ["The nucleus", "The Golgi apparatus", "The cell wall", "The ribosome"]
    assert [s.ground_truth for s in samples] == ["C", "D", "A"]
    assert samples[0].messages == [{"role": "user", "content": _description(ASK4) + "Question: Which gas makes up "
                                    "most of Earth's atmosphere?\nChoices:\n (A) Oxygen\n (B) Carbon dioxide\n "
                                    "(C) Nitrogen\n (D) Argon\n" + _final(ASK4, "\n\n")}]
    order = ["a", "b", "c", "d"]
    random.Random(111).shuffle(order)
    assert order == ["a", "c", "d", "b"]  # the same permutation, seen on plain letters
    # one replace pass: the three spaces left where "[cite 3]" was become two, as in OLMES
    assert gpqa.clean("  x [title] y [cite 3]  z ") == "x. y  z"


@pytest.mark.parametrize("text, expected", [
    ("Therefore, the answer is (C)", ("C", 1.0)),
    ("Therefore, the answer is (A)... no. Therefore, the answer is (B)", ("B", 1.0)),
    ("I go with (D).", ("D", 0.5)),
    ("(A) or (C)? (C)", ("C", 0.5)),  # the last "(X)"
    ("The correct answer is: B", ("B", 0.5)),
    ("Therefore the answer is C", ("C", 0.0)),  # no parentheses: only the last-letter fallback reads it
    ("A is tempting but D", ("D", 0.0)),
    ("Line one: B\nline two: A", ("A", 0.0)),  # the last stand-alone letter of the whole text
    ("Therefore, the answer is (E)", ("", 0.0)),
    ("therefore, the answer is (b)", ("", 0.0)),  # case-sensitive regexes
    ("", ("", 0.0)),
])
def test_gpqa_extract_answer(text, expected):
    assert gpqa.extract_answer(text) == expected


# (output, ours, lm-eval gpqa cot_zeroshot strict-match `(?<=The answer is )(.*)(?=.)`, flexible-extract)
GPQA_LM_EVAL = [
    ("Therefore, the answer is (C)", "C", "", "C"),  # strict wants a capital "The"
    ("Reasoning... Therefore, the answer is (A).", "A", "", "A"),
    ("The answer is (B).", "B", "B", "B"),
    ("The answer is (B)", "B", "B", "B"),  # strict's (?=.) drops the ")", punctuation is ignored anyway
    ("I go with (D).", "D", "", "D"),
    ("(A) or (C)? (C)", "C", "", "C"),
    ("The correct answer is: B", "B", "", "B"),  # flexible's ": B" fallback
    ("Therefore the answer is C", "C", "", ""),  # lm-eval reads no bare letter; OLMES's last resort does
    ("A is tempting but D", "D", "", ""),
    ("Therefore, the answer is (A), not (B).", "A", "", "B"),  # OLMES: the format phrase; lm-eval: the last "(X)"
    ("It must be Nitrogen.", "", "", "C"),  # lm-eval matches the option text
    ("Therefore, the answer is (E)", "", "", "E"),  # lm-eval's (\([A-Z]\)) accepts any capital
    ("", "", "", ""),
    ("The answer is C.", "C", "C", ""),  # flexible needs "(C)", ": C" or an option's text
    ("Therefore, the answer is (D)\n\nDone.", "D", "", "D"),
]


def test_gpqa_against_lm_eval_filters():
    from lm_eval.filters.extraction import MultiChoiceRegexFilter, RegexFilter

    strict = RegexFilter(regex_pattern=r"(?<=The answer is )(.*)(?=.)")
    flexible = MultiChoiceRegexFilter(regex_pattern=r"(\([A-Z]\))", group_select=-1, ignore_case=True,
                                      ignore_punctuation=True)
    doc = {"choices": ["Oxygen", "Carbon dioxide", "Nitrogen", "Argon"]}
    got = [(o, gpqa.extract_answer(o)[0], _letters(strict.apply([[o]], [doc])[0][0]),
            _letters(flexible.apply([[o]], [doc])[0][0])) for o, *_ in GPQA_LM_EVAL]
    assert got == GPQA_LM_EVAL
    assert sum(ours == flex for _, ours, _, flex in got) == 9  # 6 differences, each commented


def test_gpqa_score_aggregate_and_bad_rows(tmp_path):
    task = GPQATask()
    samples = task.load(FIXTURES / "gpqa" / "gpqa_main.jsonl")
    assert task.score(samples[0], "Nitrogen is 78%. Therefore, the answer is (C)") == {
        "exact_match": 1.0, "answer_format_correct": 1.0, "extracted": "C"}
    assert task.aggregate([{"exact_match": 1.0, "answer_format_correct": 1.0},
                           {"exact_match": 0.0, "answer_format_correct": 0.5},
                           {"exact_match": 1.0, "answer_format_correct": 0.0}], samples) == {
        "exact_match": pytest.approx(2 / 3), "answer_format_correct": pytest.approx(0.5), "num_samples": 3.0}
    row = json.loads((FIXTURES / "gpqa" / "gpqa_main.jsonl").read_text().splitlines()[0])
    del row["Incorrect Answer 2"]
    (tmp_path / "bad.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: missing field 'Incorrect Answer 2'"):
        task.load(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="hf:Idavidrein/gpqa"):
        task.load()
    assert gpqa.reward("Therefore, the answer is (C)", "C") == 1.0 and gpqa.reward("(A)", "C") == 0.0


# ---------------------------------------------------------------- AGIEval


def test_agieval_directory_prompts_and_gold():
    task = AGIEvalTask()
    samples = task.load(FIXTURES / "agieval")
    assert [s.meta["subject"] for s in samples] == ["lsat-ar", "lsat-ar", "lsat-lr", "lsat-rc", "logiqa-en",
                                                    "sat-math", "sat-en", "aqua-rat", "gaokao-english"]
    assert [s.ground_truth for s in samples] == list("BBABBBABA")
    assert samples[0].id == "agieval/lsat-ar/0" and samples[1].id == "agieval/lsat-ar/1"
    body = ("Passage: Five runners, F, G, H, J and K, finish a race in some order. F finishes before G.\n"
            "Question: Which one of the following could be the finishing order?\n (A) G, F, H, J, K\n"
            " (B) F, G, H, J, K\n (C) G, H, F, J, K\n (D) H, G, F, K, J\n (E) K, J, G, H, F")
    assert samples[0].messages == [{"role": "user", "content": _description(ASK_ETC) + body + _final(ASK_ETC, "\n\n")}]
    sat_math = samples[5].messages[0]["content"]
    assert "Passage:" not in sat_math and "Question: If $2x + 3 = 7$, what is the value of $x$?\n (A) $1$\n" in sat_math
    assert (task.generation.max_new_tokens, task.primary_metric) == (2048, "exact_match_macro")


def test_agieval_file_sources_and_errors(tmp_path):
    task = AGIEvalTask()
    one = task.load(FIXTURES / "agieval" / "sat-en.jsonl")
    assert [s.meta["subject"] for s in one] == ["sat-en"]
    mixed = tmp_path / "all.jsonl"
    rows = [json.loads(line) | {"subset": "logiqa-en"}
            for line in (FIXTURES / "agieval" / "logiqa-en.jsonl").read_text().splitlines()]
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [s.meta["subject"] for s in task.load(mixed)] == ["logiqa-en"]
    (tmp_path / "other.jsonl").write_text((FIXTURES / "agieval" / "sat-en.jsonl").read_text())
    with pytest.raises(ValueError, match="other.jsonl:1: unknown AGIEval English subset 'other'"):
        task.load(tmp_path / "other.jsonl")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "sat-en.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="missing AGIEval English files"):
        task.load(tmp_path / "dir")
    bad = json.loads((FIXTURES / "agieval" / "sat-en.jsonl").read_text()) | {"label": "F"}
    (tmp_path / "sat-en.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match="sat-en.jsonl:1: field 'label' = 'F' is out of range for 4 options"):
        task.load(tmp_path / "sat-en.jsonl")
    with pytest.raises(ValueError, match="no offline copy of AGIEval"):
        task.load()


@pytest.mark.parametrize("text, expected", [
    ("Therefore, the answer is (E)", ("E", 1.0)),
    ("Therefore, the answer is (F)", ("F", 1.0)),  # OLMES's regex allows A-F
    ("Maybe (B), maybe (D).", ("D", 0.5)),
    ("So it is C.", ("C", 0.0)),
    ("The answer is G", ("", 0.0)),
    ("", ("", 0.0)),
])
def test_agieval_extract_answer(text, expected):
    assert agieval.extract_answer(text) == expected


def test_agieval_score_and_macro():
    task = AGIEvalTask()
    samples = task.load(FIXTURES / "agieval")
    assert task.score(samples[0], "F before G. Therefore, the answer is (B)")["exact_match"] == 1.0
    scores = [{"exact_match": e, "answer_format_correct": 1.0} for e in (1, 0, 1, 1, 1, 0, 0, 0, 1)]
    metrics = task.aggregate(scores, samples)
    # lsat-ar 0.5, lsat-lr 1, lsat-rc 1, logiqa-en 1, sat-math 0, sat-en 0, aqua-rat 0, gaokao-english 1
    assert metrics["exact_match_macro"] == pytest.approx(4.5 / 8)
    assert metrics["exact_match_micro"] == pytest.approx(5 / 9)
    assert agieval.reward("Therefore, the answer is (A)", "A") == 1.0
