"""The held-out log-likelihood tasks the pipeline demo uses to show SFT and DPO at work: chat NLL of
the last assistant turn (`chat_nll`) and chosen-vs-rejected preference accuracy (`preference`)."""

from __future__ import annotations

import json
import math

import pytest

from conftest import shared, tiny_model
from posttrain.evaluation.runner import evaluate
from posttrain.evaluation.stats import metric_intervals, wilson_interval
from posttrain.evaluation.tasks.base import LoglikOutput, MissingData, Sample
from posttrain.evaluation.tasks.chat_nll import ChatNLLTask, parse_chat_row
from posttrain.evaluation.tasks.preference import PreferenceTask, parse_preference_row


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def out(logprobs, tokens) -> LoglikOutput:
    return LoglikOutput(list(logprobs), list(tokens), [False] * len(tokens), ["x"] * len(tokens))


SAMPLE = Sample(id="s", messages=[msg("user", "q")], assistant_prefix="", ground_truth="a")


# -- chat_nll: scores and aggregate ---------------------------------------------------------------


def test_chat_nll_score_and_aggregate_by_hand():
    task = ChatNLLTask()
    a = task.score(SAMPLE, out([-6.0], [3]))
    assert a == {"nll_sum": 6.0, "tokens": 3, "nll_per_token": 2.0}
    b = task.score(SAMPLE, out([-4.0], [1]))
    m = task.aggregate([a, b], [SAMPLE, SAMPLE])
    # token-weighted: (6 + 4) / (3 + 1) = 2.5; per-sample mean: (2 + 4) / 2 = 3
    assert m == {"nll": 2.5, "mean_nll": 3.0, "ppl": pytest.approx(math.exp(2.5)), "num_samples": 2.0,
                 "num_tokens": 4.0}
    assert task.primary_metric == "nll" and ChatNLLTask.lower_is_better == ("nll", "mean_nll", "ppl")
    with pytest.raises(ValueError, match="one scored continuation"):
        task.score(SAMPLE, out([-1.0, -2.0], [1, 1]))


def test_chat_nll_has_no_reward_and_no_default_data():
    with pytest.raises(TypeError, match="not verifiable"):
        ChatNLLTask().reward("text", "text")
    with pytest.raises(MissingData, match="chat_nll"):
        ChatNLLTask().load(None)


def test_chat_nll_intervals_are_bootstraps_even_when_every_response_is_one_token():
    # every `tokens` field is 1 (a 0/1 field): nll still must not get a Wilson interval from it
    task = ChatNLLTask()
    scores = [task.score(SAMPLE, out([-lp], [1])) for lp in (0.5, 1.5, 2.0, 3.0, 0.25, 4.0)]
    iv = metric_intervals(task, scores, [SAMPLE] * len(scores), n_boot=200)
    assert set(iv) == {"nll", "mean_nll", "ppl"}  # counts get none
    assert {v["method"] for v in iv.values()} == {"bootstrap"}
    nll = task.aggregate(scores, [SAMPLE] * 6)["nll"]
    assert iv["nll"]["low"] < nll < iv["nll"]["high"]


# -- chat_nll: loading ----------------------------------------------------------------------------


def test_chat_nll_loads_single_and_multi_turn_rows(tmp_path):
    rows = [
        {"id": "oasst_1", "source": "x", "messages": [msg("user", "Hi"), msg("assistant", "Hello!")]},
        {"messages": [msg("system", "Be brief."), msg("user", "2+2?"), msg("assistant", "4"),
                      msg("user", "and 3+3?"), msg("assistant", "6"), msg("user", "thanks")]},
    ]
    samples = ChatNLLTask().load(write_jsonl(tmp_path / "sft.jsonl", rows))
    assert [s.id for s in samples] == ["chat_nll/0", "chat_nll/1"]
    assert samples[0].messages == [msg("user", "Hi")] and samples[0].ground_truth == "Hello!"
    assert samples[0].meta == {"context_messages": 1, "source_id": "oasst_1"}
    # multi-turn: the context is everything before the LAST assistant message; the trailing user turn is dropped
    assert samples[1].messages == rows[1]["messages"][:4] and samples[1].ground_truth == "6"
    assert ChatNLLTask().continuations(samples[1]) == ["6"]
    assert samples[1].assistant_prefix == ""
    named = ChatNLLTask(name="chat_nll:sft").load(str(tmp_path / "sft.jsonl"), limit=1)
    assert [s.id for s in named] == ["chat_nll:sft/0"]


@pytest.mark.parametrize("row, field", [
    ({"text": "hi"}, "'messages'"),
    ({"messages": "hi"}, "'messages'"),
    ({"messages": []}, "'messages'"),
    ({"messages": [msg("user", "hi")]}, "no assistant message"),
    ({"messages": [msg("user", "hi"), msg("assistant", "  ")]}, "'messages[1].content'"),
    ({"messages": [msg("user", "hi"), {"role": "bot", "content": "x"}]}, "'messages[1].role'"),
    ({"messages": [msg("user", "hi"), {"role": "assistant", "content": 3}]}, "'messages[1].content'"),
    ({"messages": [msg("user", "hi"), "assistant: x"]}, "'messages[1]'"),
    ({"messages": [msg("assistant", "x"), msg("user", "hi")]}, "no context"),
])
def test_chat_nll_bad_rows_name_file_line_and_field(tmp_path, row, field):
    good = {"messages": [msg("user", "a"), msg("assistant", "b")]}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(ValueError) as e:
        ChatNLLTask().load(path)
    assert f"{path}:2" in str(e.value) and field in str(e.value)


def test_chat_nll_reads_the_shared_sft_sample():
    samples = ChatNLLTask().load(shared("sft/open_instruct_sft_sample.jsonl"))
    assert len(samples) == 100
    assert all(s.messages[-1]["role"] != "assistant" and s.ground_truth.strip() for s in samples)


# -- preference: scores and aggregate -------------------------------------------------------------


PAIRS = [  # (chosen logprob, chosen tokens, rejected logprob, rejected tokens)
    (-6.0, 3, -4.0, 1),  # per token -2 vs -4: correct; summed -6 vs -4: not; chosen longer
    (-3.0, 3, -2.0, 2),  # per token -1 vs -1: a tie, not correct; summed: not; chosen longer
    (-1.0, 1, -5.0, 2),  # per token -1 vs -2.5: correct; summed: correct; chosen shorter
]


def pair_scores(task, pairs=PAIRS):
    return [task.score(SAMPLE, out([lc, lr], [tc, tr])) for lc, tc, lr, tr in pairs]


def test_preference_score_by_hand():
    a, tie, c = pair_scores(PreferenceTask())
    assert a == {"correct": 1, "correct_sum": 0, "margin": 2.0, "margin_sum": -2.0, "chosen_avg_logprob": -2.0,
                 "rejected_avg_logprob": -4.0, "chosen_tokens": 3, "rejected_tokens": 1, "chosen_longer": 1,
                 "tie": 0, "extracted": 0}
    assert (tie["correct"], tie["tie"], tie["margin"], tie["extracted"]) == (0, 1, 0.0, 1)
    assert (c["correct"], c["correct_sum"], c["margin"], c["margin_sum"], c["chosen_longer"]) == (1, 1, 1.5, 4.0, 0)


def test_preference_aggregate_by_hand():
    task = PreferenceTask()
    m = task.aggregate(pair_scores(task), [SAMPLE] * 3)
    assert m == pytest.approx({"accuracy": 2 / 3, "accuracy_sum": 1 / 3, "margin": 3.5 / 3, "margin_sum": 1 / 3,
                               "chosen_avg_logprob": -4 / 3, "rejected_avg_logprob": -7.5 / 3,
                               "chosen_longer": 2 / 3, "num_samples": 3.0, "num_ties": 1.0})
    assert task.primary_metric == "accuracy"
    with pytest.raises(TypeError, match="not verifiable"):
        task.reward("x", 0)


def test_preference_intervals_wilson_for_rates_bootstrap_for_margins():
    task = PreferenceTask()
    pairs = PAIRS * 3 + [(-1.0, 2, -3.0, 3)]  # 10 pairs: correct 2*3+1, correct_sum 1*3+1, chosen longer 2*3+0
    scores = pair_scores(task, pairs)
    iv = metric_intervals(task, scores, [SAMPLE] * len(scores), n_boot=200)
    for metric, successes in (("accuracy", 7), ("accuracy_sum", 4), ("chosen_longer", 6)):
        assert iv[metric]["method"] == "wilson"
        assert (iv[metric]["low"], iv[metric]["high"]) == pytest.approx(wilson_interval(successes, 10))
    for metric in ("margin", "margin_sum", "chosen_avg_logprob", "rejected_avg_logprob"):
        assert iv[metric]["method"] == "bootstrap"
    assert "num_samples" not in iv and "num_ties" not in iv


# -- preference: loading --------------------------------------------------------------------------


def test_preference_loads_both_formats(tmp_path):
    shared_prefix = [msg("system", "Be kind."), msg("user", "Hi"), msg("assistant", "Hello."), msg("user", "Joke?")]
    rows = [
        # chosen/rejected full conversations, multi-turn shared prefix
        {"id": "p0", "chosen": shared_prefix + [msg("assistant", "Knock knock.")],
         "rejected": shared_prefix + [msg("assistant", "No.")]},
        # prompt string + string responses
        {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."},
        # the Tülu 3 files: the response lists repeat the prompt
        {"prompt": "Capital of France?", "chosen": [msg("user", "Capital of France?"), msg("assistant", "Paris.")],
         "rejected": [msg("user", "Capital of France?"), msg("assistant", "Rome.")]},
        # prompt as messages, responses as assistant-only lists
        {"prompt": [msg("user", "Say hi.")], "chosen": [msg("assistant", "Hi!")], "rejected": [msg("assistant", "No")]},
    ]
    samples = PreferenceTask().load(write_jsonl(tmp_path / "pairs.jsonl", rows))
    got = [(s.messages, PreferenceTask().continuations(s)) for s in samples]
    assert got == [
        (shared_prefix, ["Knock knock.", "No."]),
        ([msg("user", "Name a colour.")], ["Blue.", "Seven."]),
        ([msg("user", "Capital of France?")], ["Paris.", "Rome."]),
        ([msg("user", "Say hi.")], ["Hi!", "No"]),
    ]
    assert [s.ground_truth for s in samples] == [0] * 4 and samples[0].meta["source_id"] == "p0"
    assert [s.id for s in PreferenceTask().load(str(tmp_path / "pairs.jsonl"), limit=2)] == \
        ["preference/0", "preference/1"]


U, A = msg("user", "q"), msg("assistant", "a")


@pytest.mark.parametrize("row, field", [
    ({"chosen": [U, A]}, "missing field 'rejected'"),
    ({"chosen": [U, A], "rejected": [U, A]}, "identical"),
    ({"chosen": "a", "rejected": "b"}, "field 'chosen' should be a list"),
    ({"chosen": [U, msg("assistant", "x")], "rejected": [msg("user", "other"), msg("assistant", "y")]},
     "first messages differ"),
    ({"chosen": [U, A, msg("assistant", "x")], "rejected": [U, A, msg("assistant", "y")]},
     "must end with a user message"),
    ({"chosen": [U, msg("assistant", "x"), U, A], "rejected": [U, msg("assistant", "y")]},
     "field 'chosen': expected exactly one assistant message"),
    ({"chosen": [U, A], "rejected": [U, msg("assistant", " ")]}, "field 'rejected': the response is empty"),
    ({"prompt": "q", "chosen": [msg("user", "other"), A], "rejected": "b"}, "does not repeat 'prompt'"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "field 'prompt' is empty"),
    ({"prompt": "q", "chosen": 3, "rejected": "b"}, "'chosen' should be a non-empty list"),
    ({"prompt": "q", "chosen": "a", "rejected": [{"role": "assistant"}]}, "'rejected[0].content'"),
])
def test_preference_bad_rows_name_file_line_and_field(tmp_path, row, field):
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(ValueError) as e:
        PreferenceTask().load(path)
    assert f"{path}:2" in str(e.value) and field in str(e.value)


def test_row_parsers_are_what_load_checks():
    # what the held-out split can call: an hh-rlhf pair whose chosen side is two assistant turns
    # is a valid training pair but has no single continuation to score
    hh = {"chosen": [U, A, msg("assistant", "more")], "rejected": [U, msg("assistant", "b")]}
    with pytest.raises(ValueError, match="x.jsonl:7: field 'chosen': expected exactly one assistant"):
        parse_preference_row(hh, "x.jsonl:7")
    assert parse_preference_row({"prompt": "q", "chosen": "a", "rejected": "b"}, "w") == ([U], "a", "b")
    assert parse_chat_row({"messages": [U, A]}, "w") == ([U], "a")
    with pytest.raises(ValueError, match="x.jsonl:3: missing field 'messages'"):
        parse_chat_row({"text": "q"}, "x.jsonl:3")


def test_preference_reads_the_shared_tulu_sample():
    samples = PreferenceTask().load(shared("preference/open_instruct_preference_sample.jsonl"))
    assert len(samples) == 100
    assert all(s.messages[-1]["role"] == "user" and s.meta["chosen"] != s.meta["rejected"] for s in samples)


# -- end to end through the runner ----------------------------------------------------------------


def test_both_tasks_end_to_end_with_a_tiny_model(tokenizer, tmp_path):
    sft = write_jsonl(tmp_path / "sft.jsonl", [
        {"messages": [msg("user", "What is 2+2?"), msg("assistant", "It is 4.")]},
        {"messages": [msg("system", "Answer briefly."), msg("user", "Colour of the sky?"), msg("assistant", "Blue."),
                      msg("user", "At night?"), msg("assistant", "Mostly black, with stars.")]},
        {"messages": [msg("user", "Say hello in French."), msg("assistant", "Bonjour !")]},
    ])
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"chosen": [msg("user", "Capital of Italy?"), msg("assistant", "Rome.")],
         "rejected": [msg("user", "Capital of Italy?"), msg("assistant", "I think it might be Milan, or Turin.")]},
        {"prompt": "Is water wet?", "chosen": "Yes, in everyday use.", "rejected": "No."},
    ])
    tasks = [ChatNLLTask(name="chat_nll:sft"), PreferenceTask()]
    summary = evaluate(tiny_model(seed=7), tokenizer, tasks, out_dir=tmp_path / "eval", progress=False,
                       data_paths={"chat_nll:sft": sft, "preference": pairs}, log=lambda *_: None)

    chat = summary["tasks"]["chat_nll:sft"]
    rows = [json.loads(x) for x in (tmp_path / "eval" / "chat_nll:sft.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and chat["n"] == 3
    # the context is rendered up to the generation prompt of the last assistant turn
    assert rows[1]["prompt"].endswith("At night?<|im_end|>\n<|im_start|>assistant\n")
    logprob = sum(r["output"]["logprobs"][0] for r in rows)
    tokens = sum(r["output"]["num_tokens"][0] for r in rows)
    m = chat["metrics"]
    assert m["nll"] == pytest.approx(-logprob / tokens) and m["num_tokens"] == tokens
    assert m["ppl"] == pytest.approx(math.exp(m["nll"]))
    # a random model over a 49k vocabulary is near uniform: about ln(49152) = 10.8 nats per token
    assert all(math.isfinite(v) for v in m.values()) and 5 < m["nll"] < 20
    assert chat["intervals"]["nll"]["method"] == "bootstrap"

    pref = summary["tasks"]["preference"]
    prow = [json.loads(x) for x in (tmp_path / "eval" / "preference.jsonl").read_text().splitlines()]
    per_token = [[lp / n for lp, n in zip(r["output"]["logprobs"], r["output"]["num_tokens"])] for r in prow]
    assert pref["metrics"]["accuracy"] == sum(c > r for c, r in per_token) / 2
    assert pref["metrics"]["margin"] == pytest.approx(sum(c - r for c, r in per_token) / 2)
    assert pref["metrics"]["chosen_longer"] == 0.5  # "Rome." is shorter, "Yes, in everyday use." longer
    assert all(math.isfinite(v) for v in pref["metrics"].values())
    assert pref["intervals"]["accuracy"]["method"] == "wilson"
