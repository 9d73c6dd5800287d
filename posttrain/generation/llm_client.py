"""Calling OpenAI-compatible chat endpoints for data generation: bounded concurrency, retries with
backoff, and an on-disk cache that makes every run resumable.

    with open_endpoints([cfg.generator]) as (gen,):
        client = LLMClient(gen, ResponseCache(out_dir / "cache.jsonl"))
        results = run_calls(client, [(messages, ChatParams(seed=i)) for i, messages in ...])

The cache is keyed by a hash of (endpoint identity, model, messages, sampling parameters) and is
appended to after every successful call, so a killed run loses at most the calls in flight and a
re-run skips everything already answered. An endpoint is either a URL (`base_url`, or the
`OPENAI_BASE_URL` environment variable) or a local `checkpoint`, which is served in-process by
`posttrain serve` on a loopback port for the duration of the run (no network needed); endpoints
that name the same checkpoint share one server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Literal, Sequence

from posttrain.config import ConfigError, field


@dataclass
class EndpointConfig:
    """One chat model to call: where it is, and how to sample from it."""

    name: str = field("", "label written into the outputs (default: the model name)")
    base_url: str | None = field(None, "OpenAI-compatible base URL ending in /v1 (default: $OPENAI_BASE_URL)")
    model: str = field("", "model name sent with each request (local checkpoints: the served name)")
    checkpoint: str | None = field(None, "serve this checkpoint (HF dir or embedded name) in-process "
                                         "instead of calling base_url")
    chat_template: str = field("model", "chat template of a local checkpoint (model, tulu, or Jinja)")
    backend: Literal["auto", "fast", "hf", "vllm"] = field("auto", "generation backend of a local checkpoint's server "
                                                                  "(vllm: pip install -e .[vllm]; docs/VLLM.md)")
    api_key_env: str = field("OPENAI_API_KEY", "environment variable holding the API key")
    max_concurrency: int = field(16, "requests in flight at once")
    max_retries: int = field(4, "retries of a failed call (connection errors, timeouts, 429, 5xx)")
    backoff_s: float = field(1.0, "first retry delay; doubles each retry, with jitter, capped at 60 s")
    timeout_s: float = field(600.0, "seconds before a request to base_url times out and is retried (local "
                                    "checkpoints wait without limit: a big CPU batch can take longer, and a "
                                    "re-sent request would only queue behind its abandoned twin)")
    temperature: float = field(0.7, "sampling temperature")
    top_p: float = field(1.0, "nucleus sampling mass")
    max_tokens: int = field(512, "completion budget per call")

    def validate(self) -> None:
        if self.base_url and self.checkpoint:
            raise ConfigError(f"endpoint {self.label!r}: give base_url or checkpoint, not both")
        if self.max_concurrency < 1 or self.max_retries < 0 or self.max_tokens < 1:
            raise ConfigError(f"endpoint {self.label!r}: max_concurrency and max_tokens must be >= 1, "
                              f"max_retries >= 0")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"endpoint {self.label!r}: temperature must be >= 0 and top_p in (0, 1]")

    @property
    def label(self) -> str:
        return self.name or self.model or (self.checkpoint or "") or (self.base_url or "endpoint")


_LOAD_LOCK = threading.Lock()


class LocalServer:
    """A checkpoint served by `posttrain serve` on a loopback port, started on first use, so a
    re-run whose calls are all cached never loads the model."""

    # Two servers starting at once (the policy and an off-policy model, from asyncio.to_thread) load
    # in parallel threads, which transformers' lazy imports and meta-device loading do not survive
    # ("cannot import name AutoTokenizer", "Cannot copy out of meta tensor"): loads take turns.

    # A pipeline sends its calls in one burst, which a busy CPU parses one by one; a long batching
    # window (it only delays the first call) keeps the burst in one engine call.
    SERVE_DEFAULTS = {"batch_window_ms": 500.0}

    def __init__(self, checkpoint: str, chat_template: str = "model", serve_overrides: dict | None = None):
        self.checkpoint, self.chat_template = checkpoint, chat_template
        self.serve_overrides = {**self.SERVE_DEFAULTS, **(serve_overrides or {})}
        self._lock = threading.Lock()
        self._handle = None

    @property
    def model(self) -> str:
        return self.serve_overrides.get("served_model_name") or self.checkpoint

    def base_url(self) -> str:
        """Start the server if needed (blocking) and return its URL."""
        from posttrain.generation.server import ServeConfig, start_server

        with self._lock, _LOAD_LOCK:
            if self._handle is None:
                t = time.perf_counter()
                self._handle = start_server(ServeConfig(model=self.checkpoint, port=0, chat_template=self.chat_template,
                                                        **self.serve_overrides))
                print(f"[posttrain] serving {self.checkpoint} at {self._handle.base_url} "
                      f"({time.perf_counter() - t:.1f} s to load)", flush=True)
            return self._handle.base_url

    @property
    def started(self) -> bool:
        return self._handle is not None

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                st = self._handle.service.batcher.stats
                print(f"[posttrain] {self.checkpoint}: {st.requests} requests in {st.batches} engine calls "
                      f"(largest {st.largest_batch}), {st.generated_tokens} tokens generated in "
                      f"{st.busy_seconds:.0f} s busy", flush=True)
                self._handle = None


@dataclass(frozen=True)
class Endpoint:
    """A resolved endpoint: where to send requests and the identity its cache entries are filed under."""

    config: EndpointConfig
    model: str
    api_key: str
    identity: str  # the URL, or "checkpoint:<path>" so local runs keep their cache across ports
    url: str | None = None
    local: LocalServer | None = None

    @property
    def label(self) -> str:
        return self.config.name or self.model

    def base_url(self) -> str:
        """The URL to call; starts a local checkpoint's server on first use (blocking)."""
        if self.local is not None:
            return self.local.base_url()
        assert self.url is not None
        return self.url


@dataclass(frozen=True)
class ChatParams:
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int = 0  # > 0: ask for that many alternatives of each generated token (judges)

    @classmethod
    def of(cls, cfg: EndpointConfig, seed: int | None = None, **overrides: Any) -> "ChatParams":
        base = dict(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=seed)
        base.update(overrides)
        return cls(**base)

    def request_fields(self) -> dict:
        out: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}
        if self.seed is not None:
            out["seed"] = self.seed
        if self.stop:
            out["stop"] = list(self.stop)
        if self.top_logprobs:
            out["logprobs"], out["top_logprobs"] = True, self.top_logprobs
        return out


@dataclass
class ChatResult:
    text: str
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    top_logprobs: dict[str, float] | None = None  # first generated token's alternatives, when asked for


def first_token_alternatives(choice: Any) -> dict[str, float] | None:
    """{token: logprob} of the first generated token's alternatives (itself included) from an
    OpenAI chat choice, or None when the endpoint sent no log-probs."""
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    first = content[0]
    out = {str(t.token): float(t.logprob) for t in (getattr(first, "top_logprobs", None) or [])}
    out.setdefault(str(first.token), float(first.logprob))
    return out


class LLMCallError(RuntimeError):
    """A call that failed for good (a 4xx, or every retry used up)."""


def cache_key(identity: str, model: str, messages: Sequence[dict], params: ChatParams) -> str:
    blob = json.dumps({"endpoint": identity, "model": model, "messages": list(messages),
                       "params": params.request_fields()}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """Append-only JSONL of `{"key", "result"}`; a torn last line (killed mid-write) is ignored."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        self._data: dict[str, dict] = {}
        self.torn_lines = 0
        if self.path is not None and self.path.is_file():
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                        self._data[rec["key"]] = rec["result"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        self.torn_lines += 1
        self._fh = None

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> dict | None:
        return self._data.get(key)

    def put(self, key: str, result: dict) -> None:
        self._data[key] = result
        if self.path is None:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
            if self.torn_lines:  # start on a fresh line after a torn one
                self._fh.write("\n")
        self._fh.write(json.dumps({"key": key, "result": result}, ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def backoff_delay(attempt: int, base: float, cap: float = 60.0, rng: random.Random | None = None) -> float:
    """Delay before retry `attempt` (0-based): base * 2^attempt capped, times a jitter in [0.5, 1)."""
    rng = rng or random
    return min(cap, base * (2 ** attempt)) * (0.5 + rng.random() / 2)


def is_retryable(exc: BaseException) -> bool:
    """Transient failures: connection problems, timeouts, rate limits, server errors (5xx)."""
    import openai

    if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                        openai.InternalServerError, asyncio.TimeoutError)):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status >= 500 or status in (408, 409, 429))


@dataclass
class CallStats:
    calls: int = 0  # requests sent (retries included)
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0  # calls given up on
    prompt_tokens: int = 0
    completion_tokens: int = 0


class LLMClient:
    """Async chat calls against one endpoint, with a shared on-disk cache."""

    def __init__(self, endpoint: Endpoint, cache: ResponseCache | None = None, seed: int = 0):
        self.endpoint = endpoint
        self.cache = cache if cache is not None else ResponseCache(None)  # an empty cache is falsy
        # the HTTP client and the semaphore belong to one event loop: made on first use, dropped
        # by aclose(), so one LLMClient can serve several `run_calls`
        self._client = None
        self._sem: asyncio.Semaphore | None = None
        self._init_lock: asyncio.Lock | None = None
        self._rng = random.Random(seed)
        self.stats = CallStats()

    def key(self, messages: Sequence[dict], params: ChatParams) -> str:
        return cache_key(self.endpoint.identity, self.endpoint.model, messages, params)

    async def chat(self, messages: Sequence[dict], params: ChatParams) -> ChatResult:
        key = self.key(messages, params)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats.cache_hits += 1
            return ChatResult(**{**hit, "cached": True})
        cfg = self.endpoint.config
        if self._client is None:
            await self._connect()
        async with self._sem:
            for attempt in range(cfg.max_retries + 1):
                self.stats.calls += 1
                try:
                    resp = await self._client.chat.completions.create(
                        model=self.endpoint.model, messages=list(messages), **params.request_fields())
                    break
                except Exception as e:  # noqa: BLE001 - classified just below
                    if not is_retryable(e) or attempt == cfg.max_retries:
                        self.stats.failures += 1
                        raise LLMCallError(f"{self.endpoint.label}: {type(e).__name__}: {e}") from None
                    self.stats.retries += 1
                    await asyncio.sleep(backoff_delay(attempt, cfg.backoff_s, rng=self._rng))
        choice = resp.choices[0]
        usage = resp.usage
        result = ChatResult(text=choice.message.content or "", finish_reason=choice.finish_reason,
                            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                            top_logprobs=first_token_alternatives(choice) if params.top_logprobs else None)
        self.stats.prompt_tokens += result.prompt_tokens
        self.stats.completion_tokens += result.completion_tokens
        self.cache.put(key, {"text": result.text, "finish_reason": result.finish_reason,
                             "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                             "top_logprobs": result.top_logprobs})
        return result

    async def _connect(self) -> None:
        import openai

        if self._init_lock is None:
            self._init_lock = asyncio.Lock()
        async with self._init_lock:
            if self._client is not None:
                return
            base_url = await asyncio.to_thread(self.endpoint.base_url)  # may load a local checkpoint
            cfg = self.endpoint.config
            self._sem = asyncio.Semaphore(cfg.max_concurrency)
            # our own retry loop (counted, with backoff); the SDK's would hide attempts from us
            timeout = None if self.endpoint.local is not None else cfg.timeout_s
            self._client = openai.AsyncOpenAI(base_url=base_url, api_key=self.endpoint.api_key,
                                              timeout=timeout, max_retries=0)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
        self._client, self._sem, self._init_lock = None, None, None


# ----------------------------------------------------------------------------------- endpoints


def resolve_endpoint(cfg: EndpointConfig, local: dict[tuple[str, str, str], LocalServer] | None = None) -> Endpoint:
    """A URL (or local server), model and key for `cfg`; `local` maps checkpoints to their servers."""
    cfg.validate()
    if cfg.checkpoint:
        server = (local or {}).get(_local_key(cfg))
        assert server is not None, f"no local server for {cfg.checkpoint}"
        identity = f"checkpoint:{_checkpoint_identity(cfg.checkpoint)}"
        if cfg.chat_template != "model":
            identity += f"|template:{hashlib.sha256(cfg.chat_template.encode()).hexdigest()[:12]}"
        if cfg.backend == "vllm":  # other samples for the same seeds: cached native answers do not apply
            identity += "|backend:vllm"
        return Endpoint(cfg, cfg.model or server.model, "local", identity, local=server)
    base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL")
    if not base_url:
        raise ConfigError(f"endpoint {cfg.label!r}: set base_url (or $OPENAI_BASE_URL) or checkpoint")
    if not cfg.model:
        raise ConfigError(f"endpoint {cfg.label!r}: set model (the name the endpoint serves)")
    # local servers need no key; the OpenAI client insists on one, so send a placeholder
    key = os.environ.get(cfg.api_key_env) or "EMPTY"
    url = base_url.rstrip("/")
    return Endpoint(cfg, cfg.model, key, identity=url, url=url)


def _local_key(cfg: EndpointConfig) -> tuple[str, str, str]:
    return (cfg.checkpoint or "", cfg.chat_template, cfg.backend)


def _checkpoint_identity(checkpoint: str) -> str:
    path = Path(checkpoint)
    return str(path.resolve()) if path.exists() else checkpoint


@contextlib.contextmanager
def open_endpoints(configs: Sequence[EndpointConfig], serve_overrides: dict | None = None
                   ) -> Iterator[list[Endpoint]]:
    """Resolve endpoints; each distinct local checkpoint gets one lazily started server, shut
    down on exit."""
    servers: dict[tuple[str, str, str], LocalServer] = {}
    try:
        for cfg in configs:
            cfg.validate()
            if cfg.checkpoint and _local_key(cfg) not in servers:
                overrides = serve_overrides if cfg.backend == "auto" else \
                    {**(serve_overrides or {}), "backend": cfg.backend}
                servers[_local_key(cfg)] = LocalServer(cfg.checkpoint, cfg.chat_template, overrides)
        yield [resolve_endpoint(cfg, servers) for cfg in configs]
    finally:
        for server in servers.values():
            server.close()


# ----------------------------------------------------------------------------------- running


Call = tuple[Sequence[dict], ChatParams]


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from any parts (unlike hash(), the same in every process)."""
    blob = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") >> 1


async def _gather(clients: Sequence[LLMClient], tasks: Sequence[Callable[[], Awaitable[Any]]], desc: str,
                  every: float) -> list[Any]:
    done, last, start = 0, time.monotonic(), time.monotonic()

    async def one(task):
        nonlocal done, last
        try:
            return await task()
        except LLMCallError as e:
            return e
        finally:
            done += 1
            if desc and (time.monotonic() - last > every or done == len(tasks)):
                last = time.monotonic()
                hits = sum(c.stats.cache_hits for c in clients)
                failed = sum(c.stats.failures for c in clients)
                print(f"[{desc}] {done}/{len(tasks)} done ({hits} cached calls, {failed} failed, "
                      f"{last - start:.0f} s)", flush=True)

    try:
        return await asyncio.gather(*(one(t) for t in tasks))
    finally:
        for c in clients:
            await c.aclose()


def run_tasks(clients: LLMClient | Sequence[LLMClient], tasks: Sequence[Callable[[], Awaitable[Any]]],
              desc: str = "", progress_every_s: float = 10.0) -> list[Any]:
    """Run coroutine factories that call the given clients, all concurrently (each endpoint bounded
    by its max_concurrency); results in order, a failed call as its LLMCallError instead of an
    exception that stops the run."""
    if not tasks:
        return []
    clients = [clients] if isinstance(clients, LLMClient) else list(clients)
    return asyncio.run(_gather(clients, tasks, desc, progress_every_s))


def run_calls(client: LLMClient, calls: Sequence[Call], desc: str = "", progress_every_s: float = 10.0
              ) -> list[ChatResult | LLMCallError]:
    """`client.chat` on every (messages, params), concurrently; see `run_tasks`."""
    return run_tasks(client, [lambda m=m, p=p: client.chat(m, p) for m, p in calls], desc, progress_every_s)
