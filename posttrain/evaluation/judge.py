"""An LLM judge for evaluation tasks: batched, cached on disk, resumable.

    with open_judge(EndpointConfig(base_url=..., model="gpt-4-turbo", temperature=0.0),
                    cache_path=out_dir / "judge_cache.jsonl") as judge:
        task = get_task("alpaca_eval", judge=judge)
        scores = task.score_batch(samples, outputs)

A task hands the judge a list of chat prompts and a `version` string naming its judging prompt;
the judge answers every prompt (concurrently, through the OpenAI-compatible client of
`generation/llm_client.py`: a URL or a local checkpoint served in-process) and returns one
`JudgeReply` per prompt, in order. Replies are cached in an append-only JSONL keyed by
sha256(judge identity, judge model, version, messages, max_tokens), so a killed or repeated run
re-judges nothing it already judged; a failed call is never cached (a re-run asks again).

Log-probabilities: `logprobs=k` asks for the first generated token's k alternatives, which the
AlpacaEval preference prefers over a parsed verdict. It needs `ChatParams.top_logprobs` and a
`ChatResult.top_logprobs` in the client (not there yet: until then `logprobs > 0` is refused with
one line, and every preference comes from the parsed verdict). `posttrain serve` returns no
log-probabilities either.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from posttrain.generation.llm_client import (ChatParams, LLMClient, ResponseCache, first_token_alternatives,
                                            open_endpoints)

JUDGE_CACHE_NAME = "judge_cache.jsonl"


@dataclass(frozen=True)
class JudgeReply:
    """One judge answer. `top_logprobs` maps the candidate tokens of the first generated token to
    their log-probabilities when the endpoint returned them (None otherwise); `error` is set, and
    `text` empty, when the call failed for good."""

    text: str
    top_logprobs: dict[str, float] | None = None
    error: str | None = None
    cached: bool = False


def judge_key(identity: str, model: str, version: str, messages: Sequence[dict], max_tokens: int) -> str:
    blob = json.dumps({"judge": identity, "model": model, "version": version, "messages": list(messages),
                       "max_tokens": max_tokens}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def first_token_logprobs(result: Any) -> dict[str, float] | None:
    """The first generated token's candidates from a client result, if it carries them: either a
    `top_logprobs` dict (`ChatResult`), or a raw OpenAI choice with `logprobs.content`."""
    direct = getattr(result, "top_logprobs", None)
    if isinstance(direct, dict):
        return {str(k): float(v) for k, v in direct.items()}
    return first_token_alternatives(result)


class Judge:
    """Answers judging prompts through `client` (an `LLMClient`, or anything with `endpoint.identity`,
    `endpoint.model` and `async chat(messages, params)`), caching replies in `cache` (a
    `ResponseCache`, or None for no disk cache)."""

    def __init__(self, client: Any, cache: Any = None, *, temperature: float = 0.0, logprobs: int = 0,
                 seed: int = 0):
        self.client, self.temperature, self.logprobs, self.seed = client, temperature, logprobs, seed
        self.cache = cache if cache is not None else ResponseCache(None)
        self.calls = 0  # judge calls sent this session (cache hits excluded)

    @property
    def identity(self) -> str:
        return f"{self.client.endpoint.identity}|{self.client.endpoint.model}"

    def _params(self, max_tokens: int):
        fields: dict[str, Any] = dict(temperature=self.temperature, top_p=1.0, max_tokens=max_tokens, seed=self.seed)
        if self.logprobs:
            fields["top_logprobs"] = self.logprobs
        return ChatParams(**fields)

    def __call__(self, prompts: Sequence[Sequence[dict]], version: str, max_tokens: int = 16) -> list[JudgeReply]:
        ep = self.client.endpoint
        keys = [judge_key(ep.identity, ep.model, version, p, max_tokens) for p in prompts]
        replies: list[JudgeReply | None] = []
        for key in keys:
            hit = self.cache.get(key)
            replies.append(JudgeReply(hit["text"], hit.get("top_logprobs"), cached=True) if hit else None)
        todo = [i for i, r in enumerate(replies) if r is None]
        if todo:
            params = self._params(max_tokens)
            results = asyncio.run(self._ask([prompts[i] for i in todo], params))
            for i, result in zip(todo, results):
                replies[i] = self._record(keys[i], result)
        return [r for r in replies if r is not None]

    async def _ask(self, prompts: Sequence[Sequence[dict]], params: Any) -> list[Any]:
        async def one(messages):
            try:
                return await self.client.chat(list(messages), params)
            except Exception as e:  # noqa: BLE001 - a failed call becomes a JudgeReply with an error
                return e
        try:
            return await asyncio.gather(*(one(p) for p in prompts))
        finally:
            close = getattr(self.client, "aclose", None)
            if close is not None:
                await close()

    def _record(self, key: str, result: Any) -> JudgeReply:
        if isinstance(result, Exception):
            return JudgeReply("", error=f"{type(result).__name__}: {result}")
        self.calls += 1
        reply = JudgeReply(result.text or "", first_token_logprobs(result))
        self.cache.put(key, {"text": reply.text, "top_logprobs": reply.top_logprobs})
        return reply

    def close(self) -> None:
        self.cache.close()


@contextlib.contextmanager
def open_judge(endpoint: Any, cache_path: str | os.PathLike | None = None, *, logprobs: int = 0,
               serve_overrides: dict | None = None) -> Iterator[Judge]:
    """A `Judge` for one `EndpointConfig` (base_url + model, or a local `checkpoint` served in-process
    for the duration), caching into `cache_path`. Decoding is greedy unless the endpoint's
    temperature says otherwise; `logprobs` > 0 asks for that many first-token alternatives."""
    with open_endpoints([endpoint], serve_overrides) as (ep,):
        # the judge keeps its own cache (keyed with the prompt version); the client keeps none
        judge = Judge(LLMClient(ep, ResponseCache(None)), ResponseCache(cache_path),
                      temperature=endpoint.temperature, logprobs=logprobs)
        try:
            yield judge
        finally:
            judge.close()
