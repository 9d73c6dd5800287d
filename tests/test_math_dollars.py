"""MATH answers written with currency dollars (`\\$18.90`, `\\$1,\\!000`): the RLVR reward and the
eval scorer must accept numerically equal answers, as math-verify does (issue #14)."""

from __future__ import annotations

import logging

import pytest

from posttrain.evaluation.tasks import get_task
from posttrain.evaluation.tasks.math_answers import without_currency
from posttrain.evaluation.tasks.minerva_math import MathScorer
from posttrain.evaluation.tasks.verifiers import verify


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("\\$18.90", "18.90"),
        ("$18.90", "18.90"),  # a `$` with no partner cannot delimit math
        ("-$5", "-5"),
        ("\\$1,\\!000", "1,\\!000"),  # digit grouping is math-verify's job
        ("\\$0.50", "0.50"),
        ("18.90 dollars", "18.90"),
        ("18.90\\ dollars", "18.90"),
        ("18.90\\text{ dollars}", "18.90"),
        ("1~\\mbox{dollar}", "1"),
        ("50 cents", "50 cents"),  # not converted to \$0.50
        ("xdollars", "xdollars"),  # not the unit word
        ("$x$", "$x$"),  # math delimiters stay
        ("$$5", "$$5"),
        ("a\\\\$b$", "a\\\\$b$"),  # `\\` is a line break, the `$` after it is math
        ("\\frac{1}{2}", "\\frac{1}{2}"),
    ],
)
def test_without_currency(raw, expected):
    assert without_currency(raw) == expected


@pytest.mark.parametrize(
    "completion, truth, expected",
    [
        ("So $\\boxed{18.9}$.", "\\$18.90", 1.0),
        ("\\boxed{\\$18.9}", "\\$18.90", 1.0),
        ("\\boxed{18.90}", "\\$18.90", 1.0),
        ("\\boxed{18.91}", "\\$18.90", 0.0),
        ("\\boxed{1000}", "\\$1,\\!000", 1.0),
        ("\\boxed{\\$1,000}", "\\$1,\\!000", 1.0),
        ("\\boxed{1}", "\\$1,\\!000", 0.0),  # the separator does not make a tuple (1, 000)
        ("\\boxed{100}", "\\$1,\\!000", 0.0),
        ("\\boxed{32348}", "\\$32,\\!348", 1.0),
        ("\\boxed{0.5}", "\\$0.50", 1.0),
        ("\\boxed{\\frac{1}{2}}", "\\$0.50", 1.0),
        ("\\boxed{\\$.50}", "\\$0.50", 1.0),
        ("\\boxed{5}", "\\$0.50", 0.0),
        # Decision (docs/EVAL_NOTES.md): the unit word "dollars" is a currency mark like `\$`.
        ("\\boxed{18.90 dollars}", "\\$18.90", 1.0),
        ("\\boxed{\\$18.90}", "18.90 dollars", 1.0),
        ("\\boxed{18.90\\text{ dollars}}", "\\$18.90", 1.0),
        ("\\boxed{18.80 dollars}", "\\$18.90", 0.0),
        ("\\boxed{50 cents}", "\\$0.50", 0.0),  # no unit conversion
        ("Final Answer: The final answer is \\$36. I hope it is correct.", "\\$36", 1.0),
    ],
)
def test_currency_reward(completion, truth, expected):
    assert MathScorer().reward(completion, truth) == expected
    assert verify(completion, "math", truth) == expected


def _final(answer: str) -> str:
    return f"Final Answer: The final answer is {answer}. I hope it is correct."


@pytest.mark.parametrize(
    "output, gold, strict, flex",
    [
        (_final("\\$36"), "\\$36", 1.0, 1.0),  # issue #14: strict was 0 (gold not normalised)
        (_final("$36$"), "\\$36", 1.0, 1.0),
        (_final("\\$18.9"), "\\$18.90", 1.0, 1.0),
        (_final("18.90 dollars"), "\\$18.90", 1.0, 1.0),
        (_final("\\$1,000"), "\\$1,\\!000", 1.0, 1.0),
        (_final("1000"), "\\$1,\\!000", 1.0, 1.0),
        (_final("\\$0.5"), "\\$0.50", 1.0, 1.0),
        (_final("\\$0.51"), "\\$0.50", 0.0, 0.0),
        (_final("50 cents"), "\\$0.50", 0.0, 0.0),  # Minerva drops "cents": 50 != 0.50
        ("so the price is $\\boxed{\\$18.9}$", "\\$18.90", 0.0, 1.0),
        ("so the price is $\\boxed{1,000}$", "\\$1,\\!000", 0.0, 1.0),
        ("It costs $\\$0.50$ each", "\\$0.50", 0.0, 1.0),  # last `$...$` span
    ],
)
def test_currency_eval_raw_gold(output, gold, strict, flex):
    score = MathScorer().score(output, gold)
    assert (score["exact_match"], score["exact_match_flex"]) == (strict, flex)


def test_currency_math500_items():
    """The three MATH-500 items written with `\\$`, through `MathTask` (gold normalised at load)."""
    task = get_task("math500")
    samples = [s for s in task.load() if "\\$" in s.meta["answer"]]
    assert sorted(s.meta["answer"] for s in samples) == ["\\$18.90", "\\$32,\\!348", "\\$36"]
    assert sorted(s.ground_truth for s in samples) == ["18.90", "32348", "36"]
    numbers = {"\\$18.90": "18.9", "\\$32,\\!348": "32,348", "\\$36": "36.0"}
    for sample in samples:
        answer = sample.meta["answer"]
        as_written = task.score(sample, _final(answer))
        assert (as_written["exact_match"], as_written["exact_match_flex"]) == (1.0, 1.0), answer
        plain = task.score(sample, _final(numbers[answer]))
        assert (plain["exact_match"], plain["exact_match_flex"]) == (1.0, 1.0), answer
        # the raw answer given to the scorer directly scores the same as the normalised gold
        direct = MathScorer().score(_final(answer), answer)
        assert (direct["exact_match"], direct["exact_match_flex"]) == (1.0, 1.0), answer
        assert task.reward("so $\\boxed{" + numbers[answer] + "}$", answer) == 1.0, answer
        assert task.reward("so $\\boxed{1}$", answer) == 0.0, answer


def test_math_verify_agrees_on_delimited_currency():
    """math-verify, the independent reference here, equates these once they are in `$...$`."""
    from math_verify import parse
    from math_verify import verify as mv_verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    pairs = [("$\\$18.90$", "$18.9$"), ("$\\$1,\\!000$", "$1000$"), ("$\\$0.50$", "$\\frac{1}{2}$")]
    for gold, pred in pairs:
        assert mv_verify(parse(gold), parse(pred)), (gold, pred)
    assert not mv_verify(parse("$\\$0.50$"), parse("$5$"))
