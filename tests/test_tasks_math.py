"""MATH / MATH-500: Minerva prompt, normalisation, strict vs flex exact match, aggregation, and the
string helpers against lm-eval's hendrycks_math helpers and the spec's regex formulation."""

from __future__ import annotations

import importlib.util
import json
import random
import re
import sys
import types
from pathlib import Path

import pytest

from posttrain.evaluation.tasks import get_task
from posttrain.evaluation.tasks.math_answers import (
    REMOVED_EXPRESSIONS,
    SUBSTITUTIONS,
    flex_candidates,
    hendrycks_is_equiv,
    last_boxed_only_string,
    minerva_answer,
    normalize_final_answer,
    remove_boxed,
    strip_string,
)
from posttrain.evaluation.tasks.minerva_math import FEWSHOT, MathScorer, MathTask, build_messages
from posttrain.evaluation.tasks.symbolic import symbolic_equal

REPO = Path(__file__).resolve().parents[1]
MATH500 = REPO.parent / "shared" / "data" / "math500" / "test.jsonl"


def test_fewshot_exemplars_exact():
    problems = [p for p, _ in FEWSHOT]
    assert problems[0] == "Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.}"
    assert problems[1] == "If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find $\\det (\\mathbf{A} \\mathbf{B}).$"
    assert problems[3].startswith("If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.")
    finals = [minerva_answer(s) for _, s in FEWSHOT]
    assert finals == ["$[2,5)$", "$24$", "$16$", "$-\\frac{2}{3}$"]
    assert "30n&=480\\\\\n\\Rightarrow\\qquad n&=480/30=\\boxed{16}" in FEWSHOT[2][1]
    assert all(s.endswith(". I hope it is correct.") for _, s in FEWSHOT)


def test_messages_and_settings():
    messages = build_messages("What is $1+1$?")
    assert len(messages) == 9
    assert messages[0]["content"] == "Problem:\n" + FEWSHOT[0][0] + "\n\nSolution:"
    assert messages[1] == {"role": "assistant", "content": FEWSHOT[0][1]}
    assert messages[-1] == {"role": "user", "content": "Problem:\nWhat is $1+1$?\n\nSolution:"}
    task = get_task("math500")
    assert (task.generation.max_new_tokens, task.generation.stop, task.generation.do_sample) == (1024, (), False)
    assert task.primary_metric == "exact_match_flex"
    assert get_task("math").primary_metric == "exact_match_flex_macro"


def test_load_math500():
    samples = get_task("math500").load()
    assert len(samples) == 500
    assert samples[0].id == "test/precalculus/807.json"
    assert samples[0].assistant_prefix == ""
    assert samples[0].ground_truth == "\\le(3,\\frac{\\pi}{2}\\right)"  # "ft" removed from "\left"
    assert len({s.meta["subject"] for s in samples}) == 7
    assert all(s.ground_truth == normalize_final_answer(s.meta["answer"]) for s in samples)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("x = 5", "5"),
        ("10 \\text{ dollars}", "10"),
        ("3 \\mbox{ units}", "3"),
        ("\\boxed{\\dfrac{1}{2}}", "\\dfrac{1}{2}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("\\sqrt3", "\\sqrt{3}"),
        ("1,000", "1000"),
        ("(1,2)", "(1,2)"),
        ("$x$ and $y$", "x"),
        ("\\text{(A)}", "(A)"),
        ("90^\\circ", "90"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\le(3,\\frac{\\pi}{2}\\right)"),
        ("\\textbf{Evelyn}", "Evelyn"),
        ("5.", "5."),  # ".$" -> "$" only acts on a "$"
    ],
)
def test_normalize_final_answer(raw, expected):
    assert normalize_final_answer(raw) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Final Answer: The final answer is $5$. I hope it is correct.", "$5$"),
        ("Final Answer: The final answer is 5. ", "5"),  # the appended suffix completes it
        ("Final Answer: The final answer is 5.", "[invalidanswer]"),  # "5.I hope": no space
        ("Final Answer: The final answer is\n5. I hope it is correct.", "[invalidanswer]"),
        ("no final answer", "[invalidanswer]"),
    ],
)
def test_minerva_answer(text, expected):
    assert minerva_answer(text) == expected


def test_boxed_helpers():
    assert last_boxed_only_string("a \\boxed{1} b \\boxed{\\frac{2}{3}} c") == "\\boxed{\\frac{2}{3}}"
    assert last_boxed_only_string("so \\boxed 5$ and more") == "\\boxed 5"
    assert last_boxed_only_string("\\boxed{unclosed") is None
    assert remove_boxed("\\boxed{\\frac{2}{3}}") == "\\frac{2}{3}"
    assert remove_boxed("\\boxed 5") == "5"
    assert remove_boxed(last_boxed_only_string("\\fbox{3}")) is None  # an AssertionError upstream


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ("0.5", "\\frac{1}{2}", True),
        ("\\dfrac{1}{2}", "\\frac12", True),
        ("1/2", "\\frac{1}{2}", True),
        ("k = 3", "3", True),
        ("\\$5", "5", True),
        ("50\\%", "50", True),
        ("5^\\circ", "5", True),
        ("x/2", "\\frac{x}{2}", False),  # int("x") fails: raw comparison
        ("x/2", "x/2", True),
        ("2", "3", False),
    ],
)
def test_hendrycks_is_equiv(a, b, expected):
    assert hendrycks_is_equiv(a, b) is expected


@pytest.mark.parametrize(
    "gold, pred, expected",
    [
        ("\\frac{1}{2}", "0.5", True),
        ("\\frac{1}{2}", "\\dfrac{1}{2}", True),
        ("x^2+1", "1+x^2", True),
        ("2\\sqrt{2}", "\\sqrt{8}", True),
        ("[2,5)", "[2,5)", True),
        ("2", "3", False),
        ("2", "", False),
    ],
)
def test_symbolic_equal(gold, pred, expected):
    assert symbolic_equal(gold, pred) is expected


@pytest.mark.parametrize(
    "output, gold, strict, flex",
    [
        ("Final Answer: The final answer is $0.5$. I hope it is correct.", "\\frac{1}{2}", 1.0, 1.0),
        ("So $x = \\boxed{\\dfrac{1}{2}}$.", "\\frac{1}{2}", 0.0, 1.0),
        ("The result is $7$ apples.", "7", 0.0, 1.0),
        ("7", "7", 0.0, 1.0),
        ("\\boxed{3}, then maybe $7$", "7", 0.0, 0.0),  # the $-span is only a fallback
        ("Final Answer: The final answer is $8$. I hope it is correct. \\boxed{7}", "7", 0.0, 1.0),
        ("Final Answer: The final answer is $x^2+1$. I hope it is correct.", "1+x^2", 1.0, 1.0),
        ("Final Answer: The final answer is $5$. I hope it is correct.", "6", 0.0, 0.0),
    ],
)
def test_strict_and_flex(output, gold, strict, flex):
    score = MathScorer().score(output, gold)
    assert (score["exact_match"], score["exact_match_flex"]) == (strict, flex)


def test_flex_candidate_order():
    assert flex_candidates("Final Answer: The final answer is $1$. I hope it is correct. \\boxed{2}") == ["1", "2"]
    assert flex_candidates("we get $a$ and then $b=3$") == ["3"]
    assert flex_candidates("plain 42") == ["plain42"]


def test_reward_like_open_instruct():
    task = get_task("math500")
    assert task.reward("So the remainder is \\boxed{2x-8}.", "2x-8") == 1.0
    assert task.reward("So the remainder is \\boxed{-8+2x}.", "2x-8") == 1.0
    assert task.reward("Final Answer: The final answer is $25$. I hope it is correct.", "25") == 1.0
    assert task.reward("The answer is $\\frac{16}{2}$", "8") == 1.0
    assert task.reward("I think it is 9", "8") == 0.0


def test_aggregate_micro_and_macro(tmp_path):
    rows = [
        {"problem": "p", "solution": "\\boxed{1}", "type": "Algebra"},
        {"problem": "p", "solution": "\\boxed{1}", "type": "Algebra"},
        {"problem": "p", "solution": "\\boxed{1}", "type": "Algebra"},
        {"problem": "p", "solution": "\\boxed{1}", "type": "Geometry"},
    ]
    path = tmp_path / "math.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    task = MathTask(name="math")
    samples = task.load(path)
    assert [s.meta["subject"] for s in samples] == ["algebra"] * 3 + ["geometry"]
    scores = [{"exact_match": 1.0, "exact_match_flex": 1.0}] * 3 + [{"exact_match": 0.0, "exact_match_flex": 0.0}]
    metrics = task.aggregate(scores, samples)
    assert metrics["exact_match_flex"] == 0.75
    assert metrics["exact_match_flex_macro"] == 0.5
    assert metrics["exact_match_flex/geometry"] == 0.0


def test_bad_rows_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"problem": "p", "solution": "no box", "type": "Algebra"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1.*no \\\\boxed"):
        MathTask(name="math").load(path)
    path.write_text(json.dumps({"problem": "p", "solution": "\\boxed{1}", "type": "Topology"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: unknown MATH subject 'Topology'"):
        MathTask(name="math").load(path)


# ---------------------------------------------------------------------------------------------
# Against independent formulations


def _spec_normalize(final_answer: str) -> str:
    """The spec's normalize_final_answer with its original regexes (quadratic on long input)."""
    final_answer = final_answer.split("=")[-1]
    for before, after in SUBSTITUTIONS:
        final_answer = final_answer.replace(before, after)
    for expr in REMOVED_EXPRESSIONS:
        final_answer = final_answer.replace(expr, "")
    final_answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", final_answer)
    final_answer = re.sub(r"(\\text\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", final_answer)
    final_answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", final_answer)
    final_answer = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", final_answer)
    final_answer = final_answer.replace("$", "")
    if final_answer.replace(",", "").isdigit():
        final_answer = final_answer.replace(",", "")
    return final_answer


def _spec_minerva(text: str) -> str:
    match = re.search(r"Final Answer: The final answer is(.*?). I hope it is correct.", text + "I hope it is correct.")
    return match.group(1).strip() if match else "[invalidanswer]"


def _random_texts(n: int, seed: int) -> list[str]:
    pieces = ["$", "\n", "}", "{", "\\text{", "\\textbf{", "\\boxed{", "\\overline{", "a", "1", " ", "=", ",",
              "frac", "sqrt", "Final Answer: The final answer is", " I hope it is correct", ".", "x"]  # fmt: skip
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 14))) for _ in range(n)]


def test_linear_helpers_equal_spec_regexes():
    answers = [json.loads(line)["answer"] for line in MATH500.read_text().splitlines()]
    for text in _random_texts(4000, seed=1) + answers:
        assert normalize_final_answer(text) == _spec_normalize(text), repr(text)
        assert minerva_answer(text) == _spec_minerva(text), repr(text)


@pytest.fixture(scope="module")
def hendrycks_ref():
    spec = importlib.util.find_spec("lm_eval")
    assert spec is not None, "needs `pip install lm-eval==0.4.13` (test dependency)"
    path = Path(list(spec.submodule_search_locations)[0]) / "tasks" / "hendrycks_math" / "utils.py"
    module_spec = importlib.util.spec_from_file_location("_hendrycks_math_reference", path)
    module = importlib.util.module_from_spec(module_spec)
    # It imports `datasets` only for `process_docs`, which is not used here; a stand-in saves
    # seconds of import time when nothing else has loaded it yet.
    stub = "datasets" not in sys.modules
    if stub:
        sys.modules["datasets"] = types.SimpleNamespace(Dataset=object)  # used in annotations
    try:
        module_spec.loader.exec_module(module)
    finally:
        if stub:
            del sys.modules["datasets"]
    return module


def _ref_call(fn, *args):
    try:
        return fn(*args)
    except Exception as e:
        return type(e).__name__


def test_string_helpers_equal_lm_eval(hendrycks_ref):
    rows = [json.loads(line) for line in MATH500.read_text().splitlines()]
    texts = [r["solution"] for r in rows] + [r["answer"] for r in rows] + _random_texts(3000, seed=2)
    texts += ["\\sqrt", "\\frac1", "a/b/c", "x/2", "\\text{ a}\\text{ b}", ".5", "\\fbox{3}", "\\boxed 5$x"]
    for text in texts:
        boxed = last_boxed_only_string(text)
        assert boxed == hendrycks_ref.last_boxed_only_string(text), repr(text)
        if boxed is not None:
            theirs = _ref_call(hendrycks_ref.remove_boxed, boxed)
            assert remove_boxed(boxed) == (None if theirs == "AssertionError" else theirs), repr(text)
        # equal outputs, or the same exception (ours raises ValueError where theirs asserts)
        ours = _ref_call(strip_string, text)
        theirs = _ref_call(hendrycks_ref.strip_string, text)
        assert ours == theirs or (ours, theirs) == ("ValueError", "AssertionError"), repr(text)
    rng = random.Random(3)
    answers = [r["answer"] for r in rows]
    pairs = [(a, normalize_final_answer(a)) for a in answers] + [(rng.choice(answers), rng.choice(answers)) for _ in range(500)]
    pairs += [("0.5", "\\frac{1}{2}"), ("x/2", "x/2"), ("\\sqrt", "\\sqrt")]
    for a, b in pairs:
        assert hendrycks_is_equiv(a, b) == hendrycks_ref.is_equiv(a, b), (a, b)


def test_scorer_normalises_the_gold_like_the_output():
    # The spec's gold is normalize_final_answer(...): a raw `\$36` must score as the task's "36".
    final = "Final Answer: The final answer is \\$36. I hope it is correct."
    assert MathScorer().score(final, "\\$36")["exact_match"] == 1.0
    assert MathScorer().score(final, "36", gold_normalized=True)["exact_match"] == 1.0
    # normalising is not idempotent everywhere ("fftt" -> "ft" -> ""), so a normalised gold is
    # passed through untouched
    assert normalize_final_answer("fftt") == "ft" and normalize_final_answer("ft") == ""
    boxed = "so \\boxed{fftt}"  # candidate "ft"
    assert MathScorer().score(boxed, "fftt")["exact_match_flex"] == 1.0
    assert MathScorer().score(boxed, "ft", gold_normalized=True)["exact_match_flex"] == 1.0
    assert MathScorer().score(boxed, "ft")["exact_match_flex"] == 0.0  # normalised twice: ""
    answers = [json.loads(line)["answer"] for line in MATH500.read_text().splitlines()]
    assert all(normalize_final_answer(normalize_final_answer(a)) == normalize_final_answer(a) for a in answers)
