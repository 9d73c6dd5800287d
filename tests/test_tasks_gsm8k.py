"""GSM8K: exact 8-shot chat prompt, answer extraction quirks, HF-evaluate exact match, reward."""

from __future__ import annotations

import pytest

from posttrain.evaluation.tasks import get_task
from posttrain.evaluation.tasks.gsm8k import (
    FEWSHOT,
    build_messages,
    exact_match,
    extract_answer,
    gold_answer,
    reward,
    STOP,
    truncate_at_stop,
)


class _TemplateTokenizer:
    """Stands in for a HF tokenizer: a fixed, visible chat template."""

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and not tokenize
        body = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
        return body + "<|assistant|>\n"


def test_eight_shot_messages_exact_strings():
    messages = build_messages("Janet has 3 apples. How many?")
    assert len(messages) == 17
    assert [m["role"] for m in messages] == ["user", "assistant"] * 8 + ["user"]
    assert messages[0] == {
        "role": "user",
        "content": "Question: There are 15 trees in the grove. Grove workers will plant trees in the grove "
        "today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
    }
    assert messages[1] == {
        "role": "assistant",
        "content": "Answer: There are 15 trees originally. Then there were 21 trees after some more were "
        "planted. So there must have been 21 - 15 = 6. So the answer is 6.",
    }
    assert messages[14]["content"] == (
        "Question: Olivia has $23. She bought five bagels for $3 each. How much money does she have left?"
    )
    assert messages[15]["content"] == (
        "Answer: Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has "
        "23 - 15 dollars left. 23 - 15 is 8. So the answer is 8."
    )
    assert messages[16] == {"role": "user", "content": "Question: Janet has 3 apples. How many?"}
    answers = [cot.rsplit("So the answer is ", 1)[1] for _, cot in FEWSHOT]
    assert answers == ["6.", "5.", "39.", "8.", "9.", "29.", "33.", "8."]


def test_load_render_and_settings():
    task = get_task("gsm8k")
    samples = task.load(limit=2)
    first = samples[0]
    assert first.id == "gsm8k/0"
    assert first.ground_truth == "18"
    assert first.assistant_prefix == "Answer:"
    assert first.messages[-1]["content"].startswith("Question: Janet\u2019s ducks lay 16 eggs per day.")
    from posttrain.evaluation.tasks import render_prompt

    prompt = render_prompt(_TemplateTokenizer(), first)
    assert prompt.startswith("<|user|>\nQuestion: There are 15 trees")
    assert prompt.endswith("market?\n<|assistant|>\nAnswer:")
    gen = task.generation
    assert (gen.max_new_tokens, gen.stop, gen.do_sample) == (512, ("Question:", "</s>", "<|im_end|>"), False)
    assert len(task.load()) == 1319


@pytest.mark.parametrize(
    "text, expected",
    [
        ("So the answer is 1,234.", "1234"),
        ("First 12 then 7.5 so 18.", "18"),
        ("The answer is 18.00", "18.00"),
        ("She owes -5 dollars", "5"),  # integer sign dropped (regex quirk)
        ("Change is -0.5", "-0.5"),  # sign kept on the decimal branch
        ("no numbers here", "no numbers here"),
        ("a 1,2,3 list", "3"),  # re.sub is non-overlapping: "1,2,3" -> "12,3"
        ("version .75", ".75"),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_gold_answer_from_hashes():
    assert gold_answer("He pays 2,000 - 5 = <<2000-5=1995>>1995.\n#### 1,995") == "1995"
    assert gold_answer("#### -3") == "3"  # the same sign quirk applies to the gold


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("18", "18", 1.0),
        ("18.00", "18", 0.0),  # strings, not numbers
        ("$18", "18", 1.0),  # "\$" ignored
        ("18.", "18", 1.0),  # trailing "\." ignored
        ("1,800", "1800", 1.0),  # "," ignored
        ("so #### 18", "18", 1.0),  # "(?s).*#### " ignored
        ("A", "a", 1.0),  # ignore_case
    ],
)
def test_exact_match(prediction, reference, expected):
    assert exact_match(prediction, reference) == expected


def test_score_uses_last_number_and_stops():
    task = get_task("gsm8k")
    sample = task.load(limit=1)[0]
    out = " She sells 9 eggs for $2 each: 9 * 2 = 18. So the answer is 18.\n\nQuestion: Next one has 99"
    assert truncate_at_stop(out, STOP) == out.split("Question:")[0]
    assert task.score(sample, out) == {"exact_match": 1.0, "extracted": "18"}
    assert task.score(sample, "So the answer is 18.00")["exact_match"] == 0.0
    assert task.score(sample, None)["exact_match"] == 0.0


def test_aggregate():
    task = get_task("gsm8k")
    samples = task.load(limit=4)
    scores = [{"exact_match": v} for v in (1.0, 0.0, 1.0, 1.0)]
    assert task.aggregate(scores, samples)["exact_match"] == 0.75


def test_reward_keeps_sign_and_compares_strings():
    assert reward("The answer is -5.", "-5") == 1.0
    assert reward("The answer is -5.", "5") == 0.0
    assert reward("I think 1,104 inches", "1104") == 1.0
    assert reward("18.0", "18") == 0.0
    assert reward("", "0") == 0.0
    assert get_task("gsm8k").reward("so 42", 42) == 1.0


def test_render_with_the_embedded_chat_template(tokenizer):
    from posttrain.evaluation.tasks import render_prompt

    sample = get_task("gsm8k").load(limit=1)[0]
    prompt = render_prompt(tokenizer, sample)
    assert prompt.count("<|im_start|>user\nQuestion: ") == 9
    assert prompt.count("<|im_start|>assistant\nAnswer: ") == 8
    assert prompt.endswith("at the farmers' market?<|im_end|>\n<|im_start|>assistant\nAnswer:")
