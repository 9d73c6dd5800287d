"""`posttrain serve`: OpenAI-compatible responses that match direct engine calls, streaming,
batching under 64 concurrent requests, seeds independent of the batch, and 4xx errors."""

import asyncio
import concurrent.futures
import json
import threading
import time

import httpx
import pytest
import torch

from posttrain.generation import Engine, SamplingParams
from posttrain.generation.sampling import sequence_key
from posttrain.config import ConfigError, load_config
from posttrain.generation.openai_api import text_pieces
from posttrain.generation.server import Batcher, ChatService, ServeConfig, ServerHandle, batch_seed

NAME = "tiny-chat"


def untied_tiny(tokenizer, seed=0):
    """A tiny random Llama whose greedy output depends on the prompt (a tied one just echoes "\\n")."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return untied_tiny(tokenizer)


@pytest.fixture(scope="module")
def server(model, tokenizer):
    service = ChatService(Engine(model, tokenizer), tokenizer, NAME, max_batch=64, batch_window_ms=20)
    with ServerHandle.for_service(service) as handle:
        yield handle


@pytest.fixture(scope="module")
def reference(model, tokenizer):
    """Direct engine calls on the chat-templated prompt: what the server must return."""
    engine = Engine(model, tokenizer)

    def run(messages, params):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids, engine.generate([ids], params)
    return run


def user(text):
    return [{"role": "user", "content": text}]


def post(server, body, **kw):
    return httpx.post(server.base_url + "/chat/completions", json=body, timeout=120, **kw)


def test_models_endpoint(server):
    r = httpx.get(server.base_url + "/models")
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == [NAME]
    assert httpx.get(f"{server.base_url}/models/{NAME}").json()["id"] == NAME
    missing = httpx.get(f"{server.base_url}/models/other")
    assert missing.status_code == 404 and "other" in missing.json()["error"]["message"]


def test_greedy_response_equals_engine_call(server, reference):
    msgs = user("Name three rivers in Europe.")
    r = post(server, {"model": NAME, "messages": msgs, "temperature": 0, "max_tokens": 7})
    assert r.status_code == 200
    body = r.json()
    ids, (ref,) = reference(msgs, SamplingParams(temperature=0, max_new_tokens=7))
    assert body["object"] == "chat.completion" and body["model"] == NAME
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": ref.text}
    assert choice["finish_reason"] == ("length" if ref.finish_reason == "length" else "stop")
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": len(ref.token_ids),
                             "total_tokens": len(ids) + len(ref.token_ids)}


def _sse(text):
    lines = [ln for ln in text.split("\n") if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"
    return [json.loads(ln[6:]) for ln in lines[:-1]]


def test_streaming_chunks_concatenate_to_the_completion(server, reference):
    msgs = user("Write a haiku about rain.")
    body = {"model": NAME, "messages": msgs, "temperature": 0.9, "seed": 11, "max_tokens": 9, "n": 2,
            "stream": True, "stream_options": {"include_usage": True}}
    r = post(server, body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = _sse(r.text)
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    ids, refs = reference(msgs, SamplingParams(temperature=0.9, seed=11, max_new_tokens=9, n=2))
    for ref in refs:
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == ref.sample_index]
        assert mine[0]["delta"]["role"] == "assistant"
        assert "".join(ch["delta"].get("content", "") for ch in mine) == ref.text
        assert len(mine) >= 3 and mine[-1]["finish_reason"] == "length"  # 9 tokens, budget 9
    assert refs[0].text != refs[1].text
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and usage["completion_tokens"] == 18 and usage["prompt_tokens"] == len(ids)


def test_stop_string_cuts_the_text(server, reference):
    msgs = user("Count from one to ten.")
    _, (full,) = reference(msgs, SamplingParams(temperature=0, max_new_tokens=8))
    stop = full.text[len(full.text) // 2:][:4]  # a piece from the middle of the greedy output
    assert stop.strip()
    r = post(server, {"model": NAME, "messages": msgs, "temperature": 0, "max_tokens": 8, "stop": [stop]})
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == full.text[:full.text.index(stop)]
    assert choice["finish_reason"] == "stop"


def test_64_concurrent_requests_all_answered_and_matched(server, reference):
    """Half greedy, half seeded sampling, all different prompts, sent at once through the openai
    client; every reply must equal a direct engine call on its own prompt (the seeded ones alone,
    so the batch position must not change the sample)."""
    import openai

    jobs = [(user(f"Request {i}: tell me about topic number {i * 13 % 64}."),
             {"temperature": 0} if i % 2 == 0 else {"temperature": 1.0, "seed": 1000 + i}) for i in range(64)]
    before = httpx.get(f"http://{server.host}:{server.port}/stats").json()

    async def fire():
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)
        try:
            return await asyncio.gather(*(client.chat.completions.create(model=NAME, messages=m, max_tokens=5, **kw)
                                          for m, kw in jobs))
        finally:
            await client.close()

    replies = asyncio.run(fire())
    after = httpx.get(f"http://{server.host}:{server.port}/stats").json()
    assert len(replies) == 64 and len({r.id for r in replies}) == 64
    greedy = [reference(m, SamplingParams(temperature=0, max_new_tokens=5))[1][0].text for m, kw in jobs[::2]]
    seeded = [reference(m, SamplingParams(temperature=1.0, seed=kw["seed"], max_new_tokens=5))[1][0].text
              for m, kw in jobs[1::2]]
    assert [r.choices[0].message.content for r in replies[::2]] == greedy
    assert [r.choices[0].message.content for r in replies[1::2]] == seeded
    assert len(set(seeded)) == 32  # sampled texts differ, so a swapped reply could not pass
    assert after["requests"] - before["requests"] == 64 and after["failed_requests"] == before["failed_requests"]
    assert after["batches"] - before["batches"] < 64 and after["largest_batch"] > 1  # requests were batched


BAD_REQUESTS = [
    ({"model": NAME, "messages": []}, 400, "messages"),
    ({"model": NAME}, 400, "messages"),
    ({"messages": user("hi")}, 400, "model"),
    ({"model": NAME, "messages": [{"role": "tool", "content": "x"}]}, 400, "messages.0.role"),
    ({"model": NAME, "messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content"),
    ({"model": NAME, "messages": user("hi"), "temperature": 3}, 400, "temperature"),
    ({"model": NAME, "messages": user("hi"), "top_p": 0}, 400, "top_p"),
    ({"model": NAME, "messages": user("hi"), "max_tokens": 0}, 400, "max_tokens"),
    ({"model": NAME, "messages": user("hi"), "max_tokens": -1}, 400, "max_tokens"),
    ({"model": NAME, "messages": user("hi"), "max_tokens": 10**30}, 400, "max_tokens"),
    ({"model": NAME, "messages": user("hi"), "max_tokens": "lots"}, 400, "max_tokens"),
    ({"model": NAME, "messages": user("hi"), "max_tokens": 5, "max_completion_tokens": 6}, 400, "max_tokens"),
    ({"model": NAME, "messages": user("hi"), "n": 100}, 400, "n"),
    ({"model": NAME, "messages": user("hi"), "stop": [""]}, 400, "stop"),
    ({"model": NAME, "messages": user("hi"), "tools": []}, 400, "tools"),
    ({"model": NAME, "messages": user("hi"), "presence_penalty": 0.5}, 400, "presence_penalty"),
    ({"model": NAME, "messages": user("word " * 600)}, 400, "context"),
    ({"model": "gpt-4o", "messages": user("hi")}, 404, "gpt-4o"),
    ([1, 2], 400, "body"),
]


@pytest.mark.parametrize("body, status, needle", BAD_REQUESTS)
def test_malformed_requests_get_4xx_naming_the_problem(server, body, status, needle):
    r = post(server, body)
    assert r.status_code == status
    err = r.json()["error"]
    assert needle in err["message"] or needle == err["param"], err


def test_invalid_json_and_unknown_route(server):
    r = httpx.post(server.base_url + "/chat/completions", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.get(server.base_url + "/nothing-here")
    assert r.status_code == 404 and "message" in r.json()["error"]


def test_api_key_is_enforced(model, tokenizer):
    service = ChatService(Engine(model, tokenizer), tokenizer, NAME)
    with ServerHandle.for_service(service, api_key="sekrit") as handle:
        body = {"model": NAME, "messages": user("hi"), "max_tokens": 2}
        assert httpx.post(handle.base_url + "/chat/completions", json=body).status_code == 401
        assert httpx.post(handle.base_url + "/chat/completions", json={"bad": 1}).status_code == 401  # auth first
        assert httpx.get(handle.base_url + "/models").status_code == 401
        ok = httpx.post(handle.base_url + "/chat/completions", json=body, headers={"Authorization": "Bearer sekrit"})
        assert ok.status_code == 200


def prompt_len(tokenizer, messages):
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_a_huge_max_tokens_is_refused_at_once(server, tokenizer, field):
    """Clipped silently, max_tokens 1e9 would decode to the end of the context (minutes on CPU on an
    8k-context model); like vLLM, the server refuses it, giving the numbers."""
    msgs = user("Tell me everything.")
    p = prompt_len(tokenizer, msgs)
    t = time.perf_counter()
    r = post(server, {"model": NAME, "messages": msgs, field: 1_000_000_000})
    assert time.perf_counter() - t < 5  # answered before any decoding
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == field and err["type"] == "invalid_request_error"
    assert err["code"] == "context_length_exceeded"
    assert err["message"] == (f"{field}=1000000000 is too large: the prompt has {p} tokens and the model's "
                              f"context length is 512, so {512 - p} completion tokens fit; at most {512 - p} "
                              f"is allowed")
    ok = post(server, {"model": NAME, "messages": msgs, "max_tokens": 3, "temperature": 0})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 3


def short_context_server(tokenizer, context, **service_kw):
    """A server over a tiny model with `context` positions, so decoding to the end of it is cheap."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=context,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)
    service = ChatService(Engine(LlamaForCausalLM(cfg).eval(), tokenizer), tokenizer, NAME, batch_window_ms=1,
                          **service_kw)
    return ServerHandle.for_service(service)


def test_max_tokens_up_to_the_context_left_is_accepted(tokenizer):
    msgs = user("hi")
    p = prompt_len(tokenizer, msgs)
    with short_context_server(tokenizer, p + 20) as handle:
        over = post(handle, {"model": NAME, "messages": msgs, "max_tokens": 21})
        assert over.status_code == 400, over.text
        assert f"the prompt has {p} tokens" in over.json()["error"]["message"]
        # this seeded random model, greedy, emits no EOS within 20 tokens, so the reply fills the
        # context exactly: the budget reached the engine unclipped
        for body in ({"max_tokens": 20}, {}):  # {}: the default (512) is clipped to the room, not refused
            r = post(handle, {"model": NAME, "messages": msgs, "temperature": 0, **body})
            assert r.status_code == 200, r.text
            assert r.json()["usage"] == {"prompt_tokens": p, "completion_tokens": 20, "total_tokens": p + 20}
            assert r.json()["choices"][0]["finish_reason"] == "length"


def test_max_tokens_limit_is_enforced(tokenizer):
    msgs = user("hi")
    p = prompt_len(tokenizer, msgs)
    with short_context_server(tokenizer, 256, max_tokens_limit=6) as handle:
        r = post(handle, {"model": NAME, "messages": msgs, "max_completion_tokens": 7})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["param"] == "max_completion_tokens" and err["code"] == "invalid_value"
        assert err["message"] == (f"max_completion_tokens=7 exceeds this server's max_tokens_limit: the prompt "
                                  f"has {p} tokens and the model's context length is 256, so {256 - p} completion "
                                  f"tokens fit; this server's max_tokens_limit is 6; at most 6 is allowed")
        r = post(handle, {"model": NAME, "messages": msgs, "max_tokens": 6, "temperature": 0})
        assert r.status_code == 200
        # the default budget (512) is capped by the limit too
        r = post(handle, {"model": NAME, "messages": msgs, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 6


def test_max_tokens_limit_is_validated_in_the_config():
    assert load_config(ServeConfig).max_tokens_limit is None
    assert load_config(ServeConfig, overrides=["max_tokens_limit=64", "default_max_tokens=64"]).max_tokens_limit == 64
    assert load_config(ServeConfig, overrides=["max_tokens_limit=null"]).max_tokens_limit is None
    for bad, needle in ((["max_tokens_limit=0"], "max_tokens_limit must be >= 1"),
                        (["max_tokens_limit=-5"], "max_tokens_limit must be >= 1"),
                        (["max_tokens_limit=lots"], "max_tokens_limit"),
                        (["max_tokens_limit=100"], r"default_max_tokens \(512\) exceeds max_tokens_limit \(100\)")):
        with pytest.raises(ConfigError, match=needle):
            load_config(ServeConfig, overrides=bad)


# ----------------------------------------------------------------------------------- pieces


@pytest.mark.parametrize("index", [0, 1, 5, 63])
def test_batch_seed_reproduces_the_stream_of_prompt_zero(index):
    for seed in (0, 7, 2**40 + 3, -5):
        for sample in (0, 3):
            assert sequence_key(batch_seed(seed, index), index, sample) == sequence_key(seed % 2**64, 0, sample)


def _fake_run(prompts, params):
    """Stands in for Engine.generate: echoes each prompt's tokens; prompt [666] fails the batch."""
    from posttrain.generation.engine import Completion

    if [666] in prompts:
        raise ValueError("poisoned prompt")
    return [Completion(i, j, p, list(p), [], f"{p}/{j}", "length")
            for i, (p, sp) in enumerate(zip(prompts, params)) for j in range(sp.n)]


def test_batcher_groups_requests_and_isolates_a_failing_one():
    calls = []

    def run(prompts, params):
        calls.append(len(prompts))
        return _fake_run(prompts, params)

    batcher = Batcher(run, max_batch=8, window_s=0.2)
    try:
        futures = [batcher.submit([i], SamplingParams(n=1 + i % 2)) for i in range(5)]
        bad = batcher.submit([666], SamplingParams())
        results = [f.result(timeout=10) for f in futures]
        with pytest.raises(ValueError, match="poisoned"):
            bad.result(timeout=10)
    finally:
        batcher.close()
    assert [[c.text for c in r] for r in results] == [["[0]/0"], ["[1]/0", "[1]/1"], ["[2]/0"],
                                                      ["[3]/0", "[3]/1"], ["[4]/0"]]
    # all six arrived within the window: one batch, which failed and was rerun one request at a time
    assert calls == [6, 1, 1, 1, 1, 1, 1]
    assert batcher.stats.requests == 5 and batcher.stats.failed_requests == 1


def test_batcher_respects_max_batch():
    sizes = []
    gate = threading.Event()

    def run(prompts, params):
        gate.wait(10)
        sizes.append(len(prompts))
        return _fake_run(prompts, params)

    batcher = Batcher(run, max_batch=3, window_s=0.05)
    try:
        futures = [batcher.submit([i], SamplingParams()) for i in range(7)]
        time.sleep(0.2)
        gate.set()
        concurrent.futures.wait(futures, timeout=10)
    finally:
        batcher.close()
    assert sum(sizes) == 7 and max(sizes) == 3


def test_batcher_keeps_collecting_a_trickling_burst():
    sizes = []

    def run(prompts, params):
        sizes.append(len(prompts))
        return _fake_run(prompts, params)

    batcher = Batcher(run, max_batch=16, window_s=0.3)
    try:
        futures = []
        for i in range(6):  # 0.5 s in all, longer than one window, but never a 0.3 s gap
            futures.append(batcher.submit([i], SamplingParams()))
            time.sleep(0.1)
        concurrent.futures.wait(futures, timeout=10)
        time.sleep(0.5)
        batcher.submit([9], SamplingParams()).result(timeout=10)  # after a gap: its own batch
    finally:
        batcher.close()
    assert sizes == [6, 1]


def test_text_pieces_concatenate_to_the_final_text(tokenizer):
    ids = tokenizer("Grüße aus Köln! 🙂 Done. STOP here", add_special_tokens=False)["input_ids"]
    full = tokenizer.decode(ids)
    pieces = text_pieces(tokenizer, ids, full)
    assert "".join(pieces) == full and len(pieces) > 5
    cut = full[:full.index(" STOP")]  # an engine text cut before a stop string
    assert "".join(text_pieces(tokenizer, ids, cut)) == cut


class GateEngine:
    """Engine stand-in whose generate() blocks until released and records what it ran."""

    def __init__(self):
        from types import SimpleNamespace

        self.backend = SimpleNamespace(max_positions=4096)
        self.gate, self.ran = threading.Event(), []

    def generate(self, prompts, params):
        from posttrain.generation.engine import Completion

        self.gate.wait(30)
        self.ran.append(len(prompts))
        return [Completion(i, j, p, [5], [], "ok", "length") for i, (p, sp) in enumerate(zip(prompts, params))
                for j in range(sp.n)]


def test_a_request_abandoned_while_queued_costs_no_engine_time(tokenizer):
    engine = GateEngine()
    service = ChatService(engine, tokenizer, NAME, batch_window_ms=1)
    body = {"model": NAME, "messages": user("hi"), "max_tokens": 2}
    with ServerHandle.for_service(service) as handle:
        url = handle.base_url + "/chat/completions"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, url, json=body, timeout=60)  # occupies the engine
            time.sleep(0.5)
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url, json=body, timeout=1.0)  # queued behind it; the client gives up
            time.sleep(2.5)  # the server notices the disconnect (it polls every second)
            engine.gate.set()
            assert first.result().status_code == 200
        time.sleep(0.3)
    assert engine.ran == [1] and service.batcher.stats.requests == 1
