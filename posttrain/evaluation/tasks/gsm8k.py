"""GSM8K, 8-shot chain of thought, exact match: OLMES `gsm8k::tulu` (EVAL_SPEC.md §1).

Prompt: the 8 Wei et al. (2022) exemplars as user/assistant turn pairs ("Question: ..." /
"Answer: ..."), then the test question; generation continues after the assistant prefix "Answer:".
Scoring takes the last number of the output and compares strings the way HF `evaluate`'s
exact_match does with OLMES's settings, quirks included: "18.00" != "18", and the sign of an
integer is dropped ("-5" is extracted as "5"). The RLVR reward follows open-instruct's
GSM8KVerifier instead, which keeps the sign.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from posttrain.evaluation.tasks.base import (GenerationConfig, Sample, as_text, clip_tail, fewshot_messages,
                                             iter_rows, mean, require_field, shared_data_dir, shown, take, truncate_at_stop)

# (question, chain of thought) in the fixed order OLMES uses ("STD:GSM8k").
FEWSHOT: tuple[tuple[str, str], ...] = (
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. "
        "After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. "
        "So there must have been 21 - 15 = 6. So the answer is 6.",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. So the answer is 5.",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. "
        "After eating 35, they had 74 - 35 = 39. So the answer is 39.",
    ),
    (
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. "
        "How many lollipops did Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. "
        "So he gave Denny 20 - 12 = 8. So the answer is 8.",
    ),
    (
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. "
        "How many toys does he have now?",
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. "
        "5 + 4 = 9. So the answer is 9.",
    ),
    (
        "There were nine computers in the server room. Five more computers were installed each day, "
        "from monday to thursday. How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. "
        "So 5 * 4 = 20 computers were added. 9 + 20 is 29. So the answer is 29.",
    ),
    (
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. "
        "How many golf balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. "
        "After losing 2 more, he had 35 - 2 = 33 golf balls. So the answer is 33.",
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. "
        "So she has 23 - 15 dollars left. 23 - 15 is 8. So the answer is 8.",
    ),
)

ASSISTANT_PREFIX = "Answer:"
STOP = ("Question:", "</s>", "<|im_end|>")

_DIGIT_COMMA = re.compile(r"(\d),(\d)")
# Eval regex: the sign only attaches to the decimal branch (OLMES/lm-eval quirk).
_NUMBER_EVAL = re.compile(r"[-+]?\d*\.\d+|\d+")
# Reward regex (open-instruct GSM8KVerifier per EVAL_SPEC): the sign attaches to both branches.
_NUMBER_REWARD = re.compile(r"[-+]?(?:\d*\.\d+|\d+)")
_HASHES = "#### "


def user_turn(question: str) -> str:
    # OLMES's raw query is "Question: q\nAnswer:"; the assistant prefix is cut from the user turn.
    return "Question: " + question


def build_messages(question: str, num_shots: int = len(FEWSHOT)) -> list[dict[str, str]]:
    shots = [(user_turn(q), ASSISTANT_PREFIX + " " + cot) for q, cot in FEWSHOT]
    return fewshot_messages(shots, num_shots, user_turn(question))


def _last_number(text: str, pattern: re.Pattern) -> str:
    text = _DIGIT_COMMA.sub(r"\1\2", text)
    last = None
    for last in pattern.finditer(text):
        pass
    return last.group(0) if last is not None else text


def extract_answer(text: str) -> str:
    """The last number in `text` after removing digit-group commas; the whole text if none."""
    return _last_number(as_text(text), _NUMBER_EVAL)


def gold_answer(answer_field: str) -> str:
    """The cleaned gold: last number of the text after '####' (the eval regex, as OLMES does)."""
    return _last_number(answer_field.split("####")[-1], _NUMBER_EVAL)


def _drop_through_last_hashes(s: str) -> str:
    # Same result as re.sub(r"(?s).*#### ", "", s) without its quadratic backtracking.
    i = s.rfind(_HASHES)
    return s[i + len(_HASHES) :] if i >= 0 else s


def _em_clean(s: str) -> str:
    # HF evaluate exact_match with regexes_to_ignore=[",", "\\$", "(?s).*#### ", "\\.$"],
    # ignore_case=True, applied in that order.
    s = s.replace(",", "").replace("$", "")
    s = _drop_through_last_hashes(s)
    s = re.sub(r"\.$", "", s)
    return s.lower()


def exact_match(prediction: str, reference: str) -> float:
    return float(_em_clean(prediction) == _em_clean(reference))


def reward(completion: str, ground_truth: Any) -> float:
    """open-instruct GSM8KVerifier: last signed number vs the ground truth, lowercased strings.

    Unlike open-instruct, digit-group commas are removed from the ground truth too: the Tülu 3
    data has labels like "3,380" that no comma-stripped prediction could ever match.
    """
    label = _DIGIT_COMMA.sub(r"\1\2", as_text(ground_truth).strip())
    if not label:
        raise ValueError(f"GSM8K ground truth is empty: {ground_truth!r}")
    extracted = _last_number(clip_tail(as_text(completion)), _NUMBER_REWARD)
    return float(extracted.lower() == label.lower())


def reward_label(answer_field: str) -> str:
    """The RLVR ground truth of a GSM8K `answer`: its last number after '####', digit-group commas
    removed and the sign kept, as `reward` compares (`gold_answer` drops an integer's sign, which
    would reward "7" for "#### -7")."""
    return _last_number(answer_field.split("####")[-1], _NUMBER_REWARD)


def validate_ground_truth(ground_truth: Any) -> None:
    """Raise ValueError unless `reward` can ever match `ground_truth`: one number, as a string
    ("72", "3,380", "-0.5") or a JSON number. Anything else (null, a list, words) scores 0 forever."""
    usable = isinstance(ground_truth, (str, int, float)) and not isinstance(ground_truth, bool)
    label = _DIGIT_COMMA.sub(r"\1\2", as_text(ground_truth).strip()) if usable else ""
    if not _NUMBER_REWARD.fullmatch(label):
        raise ValueError(f'expected a number (a string such as "72" or "3,380", or a JSON number), '
                         f"got {shown(ground_truth)}")


@dataclass
class GSM8KTask:
    name: str = "gsm8k"
    num_shots: int = len(FEWSHOT)
    generation: GenerationConfig = GenerationConfig(max_new_tokens=512, stop=STOP)
    primary_metric: str = "exact_match"

    def default_path(self) -> str:
        return str(shared_data_dir() / "gsm8k" / "test.jsonl")

    def load(self, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Sample]:
        source = path if path is not None else self.default_path()
        rows = iter_rows(source, hf_config="main", hf_split="test")
        return [self._sample(i, where, row) for i, (where, row) in enumerate(take(rows, limit))]

    def _sample(self, index: int, where: str, row: dict) -> Sample:
        question = require_field(row, "question", where)
        answer = require_field(row, "answer", where)
        if "####" not in answer:
            raise ValueError(f"{where}: field 'answer' has no '####' final answer")
        return Sample(
            id=f"gsm8k/{index}",
            messages=build_messages(question, self.num_shots),
            assistant_prefix=ASSISTANT_PREFIX,
            ground_truth=gold_answer(answer),
            meta={"question": question},
        )

    def score(self, sample: Sample, output: str) -> dict[str, Any]:
        extracted = extract_answer(clip_tail(truncate_at_stop(as_text(output), self.generation.stop)))
        return {"exact_match": exact_match(extracted, sample.ground_truth), "extracted": extracted}

    def aggregate(self, scores: list[dict[str, Any]], samples: list[Sample]) -> dict[str, float]:
        return {"exact_match": mean(s["exact_match"] for s in scores), "num_samples": float(len(scores))}

    def reward(self, completion: str, ground_truth: Any) -> float:
        return reward(completion, ground_truth)
