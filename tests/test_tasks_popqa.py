"""PopQA: 15-shot prompt (one exemplar per other relation type), Mallen et al.'s alias rule on a
hand-checked list, loading and bad data, reward."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from posttrain.evaluation.tasks import base
from posttrain.evaluation.tasks import popqa as popqa_module
from posttrain.evaluation.tasks.popqa import PopQATask, alias_match, parse_aliases, reward

FIXTURE = Path(__file__).parent / "fixtures" / "eval" / "popqa" / "test.jsonl"


# (output, aliases, correct): each checked by hand against `a in out or a.lower() in out or
# a.capitalize() in out`.
ALIAS_CASES = [
    ("Paris", ["Paris"], 1.0),
    ("paris", ["Paris"], 1.0),  # lowercased alias
    ("PARIS", ["Paris"], 0.0),  # no upper-case variant
    ("The answer is paris.", ["Paris"], 1.0),
    ("Parisian", ["Paris"], 1.0),  # a substring test
    ("New york", ["New York"], 1.0),  # str.capitalize() lowercases the rest
    ("new york", ["New York"], 1.0),
    ("New YORK", ["New York"], 0.0),
    ("George VI", ["king george vi"], 0.0),  # the alias must be in the output, not the reverse
    ("Physicist", ["physicist"], 1.0),  # capitalized alias
    ("I don't know", ["physicist", "chemist"], 0.0),
    ("a chemist", ["physicist", "chemist"], 1.0),  # any alias
    ("anything", ["", " "], 0.0),  # blank aliases never match
    ("Mozart", ["Wolfgang Amadeus Mozart", "Mozart"], 1.0),
    ("W.A. Mozart", ["W. A. Mozart"], 0.0),
    ("tennis", ["lawn tennis"], 0.0),
    ("Ciudad de méxico", ["Ciudad de México"], 1.0),  # capitalize() lowercases the accented letter too
    ("DC", ["dc"], 0.0),  # "Dc" and "dc" are not in "DC"
    ("", ["Paris"], 0.0),
]


@pytest.mark.parametrize("output, aliases, correct", ALIAS_CASES)
def test_alias_rule_hand_checked(output, aliases, correct):
    assert alias_match(output, aliases) == correct


def test_fifteen_shots_one_per_other_relation():
    task = PopQATask()
    samples = task.load(FIXTURE)
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    relation_of = {r["question"]: r["prop_id"] for r in rows}
    answer_of = {r["question"]: r["obj"] for r in rows}
    assert len(samples) == 17
    for sample, row in zip(samples, rows):
        messages = sample.messages
        assert [m["role"] for m in messages] == ["user", "assistant"] * 15 + ["user"]
        assert messages[-1]["content"] == f"Q: {row['question']} A:"
        questions = [m["content"][len("Q: "):-len(" A:")] for m in messages[:-1:2]]
        assert all(m["content"] == f"Q: {q} A:" for m, q in zip(messages[:-1:2], questions))
        assert [m["content"] for m in messages[1::2]] == [answer_of[q] for q in questions]
        relations = [relation_of[q] for q in questions]
        assert sorted(relations) == sorted({r["prop_id"] for r in rows} - {row["prop_id"]})
    first = samples[0]
    assert first.id == "popqa/1001" and first.assistant_prefix == ""
    assert first.ground_truth == ["physicist", "chemist", "scientist"]
    assert first.meta == {"question": "What is Marie Curie's occupation?", "relation": "22", "s_pop": 1000}
    # shuffled (not in the relation order), per question, and the same on every load
    assert [relation_of[m["content"][3:-3]] for m in first.messages[:-1:2]] != [
        218, 91, 257, 182, 164, 526, 97, 533, 639, 472, 106, 560, 484, 292, 422]
    assert first.messages[:-1] != samples[2].messages[:-1]
    assert [s.messages for s in task.load(FIXTURE)] == [s.messages for s in samples]
    assert [s.messages for s in task.load(FIXTURE, limit=3)] == [s.messages for s in samples[:3]]
    gen = task.generation
    assert (gen.max_new_tokens, gen.stop, gen.do_sample) == (15, ("\n\n",), False)


def test_fewer_relations_fewer_shots_and_zero_shots(tmp_path):
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()][:4]  # 3 relation types
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = PopQATask().load(small)
    assert [len(s.messages) for s in samples] == [5, 5, 5, 5]  # 2 other relations each
    assert PopQATask(num_shots=0).load(small)[0].messages == [
        {"role": "user", "content": "Q: What is Marie Curie's occupation? A:"}]


def test_prop_name_is_the_relation_without_prop_id(tmp_path):
    rows = [{"id": i, "question": f"q{i}?", "obj": f"o{i}", "prop": p, "possible_answers": [f"o{i}"]}
            for i, p in enumerate(["genre", "genre", "sport"])]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    samples = PopQATask().load(path)
    assert [s.messages[0]["content"] for s in samples[:2]] == ["Q: q2? A:", "Q: q2? A:"]  # the only sport row
    assert samples[2].messages[0]["content"] in ("Q: q0? A:", "Q: q1? A:")  # one of the genre rows
    assert [len(s.messages) for s in samples] == [3, 3, 3]


def test_hf_source_reads_the_test_split(monkeypatch):
    seen = {}

    def fake_iter_rows(source, hf_config=None, hf_split="test"):
        seen.update(source=source, split=hf_split)
        yield "hf:akariasai/PopQA:1", {"id": 7, "question": "Who?", "obj": "X", "prop_id": 22,
                                       "possible_answers": '["X"]'}

    monkeypatch.setattr(popqa_module, "iter_rows", fake_iter_rows)
    [sample] = PopQATask().load("hf:akariasai/PopQA@rev1")
    assert seen == {"source": "hf:akariasai/PopQA@rev1", "split": "test"}
    assert sample.messages == [{"role": "user", "content": "Q: Who? A:"}] and sample.ground_truth == ["X"]


def test_bad_data_names_the_place(tmp_path):
    with pytest.raises(ValueError, match="akariasai/PopQA"):
        PopQATask().load(None)
    good = {"id": 1, "question": "q?", "obj": "o", "prop_id": 22, "possible_answers": '["o"]'}
    cases = [
        ({**good, "possible_answers": "o, p"}, r"bad\.jsonl:2: field 'possible_answers' is not a JSON list"),
        ({**good, "possible_answers": '[1, 2]'},
         r"bad\.jsonl:2: field 'possible_answers' should be a list of strings"),
        ({**good, "possible_answers": '["", " "]'}, r"bad\.jsonl:2: field 'possible_answers' has no non-blank"),
        ({k: v for k, v in good.items() if k != "question"}, r"bad\.jsonl:2: missing field 'question'"),
        ({k: v for k, v in good.items() if k != "prop_id"}, r"bad\.jsonl:2: missing field 'prop'"),
    ]
    for row, message in cases:
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
        with pytest.raises(ValueError, match=message):
            PopQATask().load(path)
    assert parse_aliases(["a", " ", "b"], "x") == ["a", "b"]


def test_score_and_aggregate():
    task = PopQATask()
    samples = task.load(FIXTURE, limit=2)
    assert task.score(samples[0], " Chemist\n\nQ: What is") == {"exact_match": 1.0, "extracted": "Chemist"}
    assert task.score(samples[0], " teacher\n\nphysicist")["exact_match"] == 0.0  # after the stop string
    assert task.score(samples[1], None)["exact_match"] == 0.0
    scores = [{"exact_match": 1.0}, {"exact_match": 0.0}]
    assert task.aggregate(scores, samples) == {"exact_match": 0.5, "num_samples": 2.0}


def test_reward():
    assert reward("Nairobi.", ["Nairobi", "Nairobi City"]) == 1.0
    assert reward("nairobi", '["Nairobi"]') == 1.0  # the JSON text of the list
    assert reward("Nairobi", "Nairobi") == 1.0  # one alias
    assert reward("Mombasa\n\nNairobi", ["Nairobi"]) == 0.0
    assert PopQATask().reward(None, ["x"]) == 0.0
    for bad in (" ", [], [""], [3]):
        with pytest.raises(ValueError):
            reward("x", bad)


def test_graders_are_bounded_on_huge_outputs():
    aliases = ["Wolfgang Amadeus Mozart", "Mozart"] * 50
    for output in ("Moz" * 3_000_000, "\n" * 10_000_000, None, b"Mozart", 7):
        start = time.perf_counter()
        alias_match(output, aliases)
        reward(output, aliases)
        assert time.perf_counter() - start < 2.0


def test_render_with_the_embedded_chat_template(tokenizer):
    sample = PopQATask().load(FIXTURE, limit=1)[0]
    prompt = base.render_prompt(tokenizer, sample)
    assert prompt.count("<|im_start|>user\nQ: ") == 16 and prompt.count("<|im_start|>assistant\n") == 16
    assert prompt.endswith("Q: What is Marie Curie's occupation? A:<|im_end|>\n<|im_start|>assistant\n")
