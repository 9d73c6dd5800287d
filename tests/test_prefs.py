"""`posttrain prefs`: judge-reply parsing, binarization, and an end-to-end run whose responses come
from a real `posttrain serve` subprocess of a tiny model over HTTP, rated by a scripted judge
endpoint (so every parse path, retries and a transient 500 are exercised deterministically)."""

import hashlib
import json
import random
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch

from posttrain.generation.llm_client import EndpointConfig
from posttrain.curation.onpolicy import (ASPECTS, JUDGE_RETRY, PrefsConfig, Rated, binarize, parse_ratings,
                                         prompt_messages, run_prefs)
from posttrain.data.preference import load_preferences
from posttrain.generation.server import ServerHandle
from conftest import REPO, subprocess_env

FOUR = {"helpfulness": 4.0, "instruction_following": 3.0, "honesty": 5.0, "truthfulness": 2.0}


@pytest.mark.parametrize("reply", [
    '{"helpfulness": 4, "instruction_following": 3, "honesty": 5, "truthfulness": 2}',
    'Here are my ratings:\n```json\n{"Helpfulness": "4", "Instruction Following": 3, "honesty": "5/5"'
    .replace('"5/5"', '5') + ', "truthfulness": 2}\n```\nThe response is fine.',
    '{"ratings": {"helpful": 4, "instruction-following": {"rating": 3, "why": "ok"}, "honest": 5, "truthful": 2}}',
    "Helpfulness: 4\nInstruction following: 3\nHonesty: 5\nTruthfulness: 2",
    "**Helpfulness** - 4/5\n**Instruction Following** - 3/5\n**Honesty** - 5 out of 5\n**Truthfulness** - 2/5",
    "Helpfulness (1-5): 4. Instruction following (on a scale of 1 to 5): 3. Honesty: 5. Truthfulness: 2.",
    '{"helpfulness": 9}\n{"helpfulness": 4, "instruction_following": 3, "honesty": 5, "truthfulness": 2}',
])
def test_parse_ratings_reads_common_judge_replies(reply):
    assert parse_ratings(reply) == FOUR


@pytest.mark.parametrize("reply", [
    "",
    "The response is helpful and honest.",
    '{"helpfulness": 4, "instruction_following": 3, "honesty": 5}',  # an aspect missing
    '{"helpfulness": 6, "instruction_following": 3, "honesty": 5, "truthfulness": 2}',  # out of range
    "Helpfulness: 4\nInstruction following: 0\nHonesty: 5\nTruthfulness: 2",
    '{"helpfulness": true, "instruction_following": 3, "honesty": 5, "truthfulness": 2}',
])
def test_parse_ratings_rejects_unusable_replies(reply):
    assert parse_ratings(reply) is None


def test_binarize_by_hand():
    rng = random.Random(0)
    assert binarize([Rated(0, "a", 3.0)], rng) == "fewer_than_2_rated"
    assert binarize([Rated(0, "a", 3.0), Rated(1, "b", 3.0), Rated(2, "c", 3.0)], rng) == "all_tied"
    # the only lower response has the chosen text: no pair
    assert binarize([Rated(0, "same", 4.0), Rated(1, " same ", 2.0)], rng) == "all_tied"
    rated = [Rated(0, "a", 2.5), Rated(1, "b", 4.25), Rated(2, "c", 1.0), Rated(3, "d", 4.25)]
    seen_chosen, seen_rejected = set(), set()
    for seed in range(200):
        chosen, rejected = binarize(rated, random.Random(seed))
        assert chosen.mean == 4.25 and rejected.mean < 4.25
        seen_chosen.add(chosen.index)
        seen_rejected.add(rejected.index)
    assert seen_chosen == {1, 3} and seen_rejected == {0, 2}  # ties at the top and the draw are both random
    assert binarize(rated, random.Random(7)) == binarize(rated, random.Random(7))
    assert binarize(rated, random.Random(0), min_margin=2.0)[1].index == 2  # only 1.0 is > 2 below 4.25


def test_prompt_messages():
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}]
    assert prompt_messages({"messages": conv}) == conv[:2]
    assert prompt_messages({"prompt": "Q?"}) == [{"role": "user", "content": "Q?"}]
    assert prompt_messages({"instruction": "Sort", "input": "3 1 2"}) == [{"role": "user", "content": "Sort\n3 1 2"}]
    assert prompt_messages({"question": "2+2?"}) == [{"role": "user", "content": "2+2?"}]
    assert prompt_messages({"messages": [{"role": "assistant", "content": "x"}]}) is None


# ----------------------------------------------------------------------------------- end to end


def fake_ratings(response: str) -> dict:
    h = hashlib.sha256(response.encode()).digest()
    return {a: 1 + h[i] % 5 for i, a in enumerate(ASPECTS)}


def fake_judge_app():
    """A scripted OpenAI-compatible judge. The prompt's keyword picks its behaviour:
    alpha: JSON at once; beta: "Aspect: n" lines; gamma: a 500 first, then prose, then JSON on the
    re-ask; delta: never parseable; epsilon: the same ratings for every response (a tie)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI()
    failed_once = set()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        msgs = body["messages"]
        first = msgs[1]["content"]
        response = first.split("[Response to rate]\n", 1)[1].rsplit("\n[End of response]", 1)[0]
        ratings = fake_ratings(response)
        reask = len(msgs) > 2 and msgs[-1]["content"] == JUDGE_RETRY
        if "gamma" in first and not reask and first not in failed_once:
            failed_once.add(first)
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=500)
        if "alpha" in first or ("gamma" in first and reask):
            text = json.dumps(ratings)
        elif "beta" in first:
            text = "\n".join(f"{a.replace('_', ' ').title()}: {v}" for a, v in ratings.items())
        elif "epsilon" in first:
            text = json.dumps({a: 3 for a in ASPECTS})
        else:
            text = "I think this response is quite good overall."
        return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    return app


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)
    path = tmp_path_factory.mktemp("tiny-untied")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def served(tiny_dir):
    """`posttrain serve` as a subprocess, as a user would start it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "posttrain.cli", "serve", f"model={tiny_dir}", f"port={port}",
                             "served_model_name=tiny", "batch_window_ms=20"], cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "posttrain serve did not come up"
            time.sleep(0.3)
        yield url + "/v1"
    finally:
        proc.terminate()
        proc.wait(30)


def test_prefs_end_to_end_against_posttrain_serve(tmp_path, served):
    rows = [{"id": k, "messages": [{"role": "user", "content": f"Tell me something about {k}."},
                                   {"role": "assistant", "content": "An old answer that is not used."}]}
            for k in ("alpha", "beta", "gamma", "delta", "epsilon")]
    rows[1]["messages"].insert(0, {"role": "system", "content": "Answer briefly."})
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = dict(base_url=served, model="tiny", max_tokens=6, backoff_s=0.01)
    with ServerHandle(fake_judge_app(), model="fake-judge") as judge:
        cfg = PrefsConfig(
            prompts=str(prompts), out_dir=str(tmp_path / "out"), judge_retries=2,
            policy=EndpointConfig(name="policy", temperature=1.0, **common),
            others=[EndpointConfig(name="nucleus", temperature=1.0, top_p=0.9, **common),
                    EndpointConfig(name="greedy", temperature=0.0, **common)],
            judge=EndpointConfig(name="judge", base_url=judge.base_url, model="fake-judge", max_retries=2,
                                 backoff_s=0.01, temperature=0.0))
        stats = run_prefs(cfg)
        out = tmp_path / "out"
        responses = [json.loads(x) for x in open(out / "responses.jsonl")]
        ratings = [json.loads(x) for x in open(out / "ratings.jsonl")]
        prefs = [json.loads(x) for x in open(out / "preferences.jsonl")]

        assert len(responses) == 15 and all(r["response"] and r["error"] is None for r in responses)
        assert {r["model"] for r in responses} == {"policy", "nucleus", "greedy"}
        by_prompt = {}
        for r in ratings:
            kind = r["prompt_id"]
            by_prompt.setdefault(kind, []).append(r)
            resp = next(x["response"] for x in responses if (x["prompt_id"], x["model"]) == (kind, r["model"]))
            if kind in ("alpha", "beta", "gamma"):
                assert r["ratings"] == {a: float(v) for a, v in fake_ratings(resp).items()}
                assert r["attempts"] == (2 if kind == "gamma" else 1)
            elif kind == "delta":
                assert r["ratings"] is None and r["attempts"] == 3 and len(r["judge_raw"]) == 3
        assert stats["judge"] == {**stats["judge"], "judged": 15, "parsed": 12, "parsed_first_try": 9,
                                  "parsed_after_retry": 3, "unparseable": 3, "call_failures": 0}
        judge_calls = stats["calls"][-1]
        # alpha, beta, epsilon: 1 call each; gamma: 500, re-sent, re-asked = 3; delta: 3 attempts
        assert judge_calls["retries"] == 3 and judge_calls["calls"] == 3 + 3 + 3 * 3 + 3 * 3 + 3

        pairs = {p["id"][len("prefs-"):]: p for p in prefs}
        assert stats["no_pair"].get("fewer_than_2_rated") == 1 and "delta" not in pairs
        assert "epsilon" not in pairs and stats["no_pair"].get("all_tied") == 1
        for kind, pair in pairs.items():
            means = [sum(r["ratings"].values()) / 4 for r in by_prompt[kind]]
            assert pair["chosen_rating"] == max(means) and pair["rejected_rating"] < max(means)
            assert pair["chosen"][:-1] == pair["prompt"] == pair["rejected"][:-1]
            assert pair["prompt"] == prompt_messages(rows[["alpha", "beta", "gamma"].index(kind)])
        assert len(pairs) == stats["pairs"] == sum(1 for k in ("alpha", "beta", "gamma")
                                                   if len({sum(r["ratings"].values()) for r in by_prompt[k]}) > 1)
        loaded = load_preferences(str(out / "preferences.jsonl"))
        assert len(loaded) == len(prefs) and all(p.chosen[0]["role"] == "assistant" for p in loaded)
        if "beta" in pairs:  # the system turn stays part of the prompt
            assert pairs["beta"]["prompt"][0]["role"] == "system"

        # resume: every call is in the cache, nothing is sent, the outputs are the same
        before = (out / "preferences.jsonl").read_bytes(), (out / "ratings.jsonl").read_bytes()
        again = run_prefs(cfg)
        assert sum(c["calls"] for c in again["calls"]) == 0
        assert ((out / "preferences.jsonl").read_bytes(), (out / "ratings.jsonl").read_bytes()) == before


def test_prefs_config_checks():
    from posttrain.config import ConfigError, load_config

    cfg = load_config(PrefsConfig, REPO / "configs/prefs/smollm2-cpu.yaml")
    assert cfg.policy.checkpoint == "smollm2-135m" and len(cfg.responders()) == 2
    with pytest.raises(ConfigError, match="at least 2 responses"):
        load_config(PrefsConfig, None, ["others=[]"])
    with pytest.raises(ConfigError, match="base_url or checkpoint"):
        load_config(PrefsConfig, None, ["policy.base_url=http://x/v1", "policy.checkpoint=ckpt"])
    with pytest.raises(ConfigError, match="labels must differ"):
        load_config(PrefsConfig, REPO / "configs/prefs/smollm2-cpu.yaml", ["others=[{name: policy, checkpoint: x}]"])
