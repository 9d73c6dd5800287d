"""`posttrain serve`: an OpenAI-compatible chat server over any checkpoint, on the project's engine.

    posttrain serve model=smollm2-135m port=8000
    curl localhost:8000/v1/chat/completions -d '{"model": "smollm2-135m",
         "messages": [{"role": "user", "content": "Hi"}]}'

Endpoints: `POST /v1/chat/completions` (streaming and not), `GET /v1/models`, `GET /health`,
`GET /stats`. Requests that queued while the previous engine call ran, and those arriving less than
`batch_window_ms` apart after them (up to `max_batch`), are decoded by one engine call with
per-request sampling settings. The engine holds one model and is not thread-safe, so every
engine call runs on one worker thread. The engine returns whole
completions, so a streamed response arrives in one burst when its batch finishes: the chunks have
OpenAI's `chat.completion.chunk` shape, but time-to-first-token equals the full latency.

A request's `seed` gives the same completion whether it runs alone or inside any batch (see
`batch_seed`). A `max_tokens` (or `max_completion_tokens`) above the context left after the prompt,
or above `max_tokens_limit`, is a 400, as in vLLM; without one, `default_max_tokens` is clipped to
that room.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

from posttrain.config import ConfigError, field
from posttrain.generation.engine import Completion
from posttrain.generation.openai_api import create_app
from posttrain.generation.sampling import SamplingParams, sequence_key
from posttrain.generation.vllm_engine import VLLMConfig

# ----------------------------------------------------------------------------------- config


@dataclass
class ServeConfig:
    """`posttrain serve`: an OpenAI-compatible HTTP server over one checkpoint."""

    model: str = field("smollm2-135m", "HF directory, hub id, or embedded model name")
    served_model_name: str | None = field(None, "name in /v1/models and in requests (default: `model`)")
    host: str = field("127.0.0.1", "interface to listen on (0.0.0.0 for all)")
    port: int = field(8000, "TCP port (0 = any free port)")
    chat_template: str = field("model", "'model' (the tokenizer's own), 'tulu', or a Jinja template")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field("auto", "auto = fp32 on CPU, bf16 on CUDA")
    device: str = field("auto", "auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    backend: Literal["auto", "fast", "hf", "vllm"] = field("auto", "engine backend: auto/fast/hf (generation/engine.py)"
                                                                  " or vllm (pip install -e .[vllm]; docs/VLLM.md)")
    vllm: VLLMConfig = field(VLLMConfig(), "backend=vllm: the vLLM engine's settings")
    max_batch: int = field(32, "most requests decoded by one engine call")
    batch_window_ms: float = field(50.0, "a batch keeps collecting while requests arrive less than this apart "
                                          "(at most 10 windows in all)")
    engine_rows: int = field(64, "KV-cache rows: sequences decoded together inside one engine call")
    default_max_tokens: int = field(512, "completion budget when a request gives no max_tokens (clipped to "
                                         "the context left after the prompt)")
    max_tokens_limit: int | None = field(None, "largest max_tokens / max_completion_tokens a request may ask for "
                                               "(a 400 above it); null (the default) = no cap besides the context "
                                               "left after the prompt, which always applies (a 400 above it too)")
    max_n: int = field(16, "largest `n` (samples per request) accepted")
    api_key: str | None = field(None, "if set, requests must send `Authorization: Bearer <api_key>`")
    log_level: str = field("warning", "uvicorn log level")

    def validate(self) -> None:
        if self.max_batch < 1 or self.engine_rows < 1 or self.max_n < 1:
            raise ConfigError("max_batch, engine_rows and max_n must be >= 1")
        if self.batch_window_ms < 0:
            raise ConfigError(f"batch_window_ms must be >= 0, got {self.batch_window_ms}")
        if self.default_max_tokens < 1:
            raise ConfigError(f"default_max_tokens must be >= 1, got {self.default_max_tokens}")
        if self.max_tokens_limit is not None:
            if self.max_tokens_limit < 1:
                raise ConfigError(f"max_tokens_limit must be >= 1 (or null for no cap), got {self.max_tokens_limit}")
            if self.default_max_tokens > self.max_tokens_limit:
                # otherwise every request without max_tokens would silently get less than asked
                raise ConfigError(f"default_max_tokens ({self.default_max_tokens}) exceeds max_tokens_limit "
                                  f"({self.max_tokens_limit}); lower default_max_tokens too")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")

    @property
    def name(self) -> str:
        return self.served_model_name or self.model


# ----------------------------------------------------------------------------------- seeds

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_GOLDEN_INV = pow(_GOLDEN, -1, 1 << 64)


def batch_seed(seed: int, prompt_index: int) -> int:
    """The engine seed that gives prompt `prompt_index` of a batch the random stream that prompt 0
    of a one-prompt call with `seed` gets, so a seeded request samples the same tokens whatever
    batch it lands in. The engine keys a sequence by mix(mix(seed*G + prompt) * G + sample);
    solving seed'*G + i = seed*G (mod 2^64) gives seed' = seed - i/G. `_check_batch_seed` falls
    back to the raw seed if the engine's key derivation ever changes."""
    return (seed - prompt_index * _GOLDEN_INV) & _MASK64


def _check_batch_seed(seed: int, prompt_index: int) -> int:
    adjusted = batch_seed(seed, prompt_index)
    if sequence_key(adjusted, prompt_index, 0) == sequence_key(seed & _MASK64, 0, 0):
        return adjusted
    return seed & _MASK64  # pragma: no cover - only if the engine changes its key derivation


# ----------------------------------------------------------------------------------- batching


@dataclass
class GenJob:
    prompt_ids: list[int]
    params: SamplingParams
    future: concurrent.futures.Future  # resolves to list[Completion] (one per sample)


@dataclass
class BatchStats:
    requests: int = 0
    batches: int = 0
    largest_batch: int = 0
    failed_requests: int = 0
    generated_tokens: int = 0
    busy_seconds: float = 0.0


_MAX_WAIT_WINDOWS = 10  # a batch waits at most this many windows for stragglers
RunBatch = Callable[[list[list[int]], list[SamplingParams]], list[Completion]]


class Batcher:
    """Collects jobs from many threads and runs them in batches on a single worker thread.

    The first job of a batch waits at most `window_s` for more; jobs that queued while the
    previous batch ran join at once, so under load batches fill up without extra latency.
    """

    def __init__(self, run_batch: RunBatch, max_batch: int, window_s: float):
        assert max_batch >= 1 and window_s >= 0
        self._run_batch, self.max_batch, self.window_s = run_batch, max_batch, window_s
        self._queue: queue.Queue[GenJob | None] = queue.Queue()
        self._closed = threading.Event()
        self.stats = BatchStats()
        self._thread = threading.Thread(target=self._loop, name="posttrain-serve-engine", daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> concurrent.futures.Future:
        if self._closed.is_set():
            raise RuntimeError("the generation worker is shut down")
        job = GenJob(list(prompt_ids), params, concurrent.futures.Future())
        self._queue.put(job)
        return job.future

    def close(self, timeout: float = 30.0) -> None:
        self._closed.set()
        self._queue.put(None)
        self._thread.join(timeout)

    def _collect(self, first: GenJob) -> list[GenJob]:
        """`first` plus whatever is queued, then whatever arrives less than `window_s` after the
        previous arrival (a burst of requests parsed one by one trickles in), for at most
        `_MAX_WAIT_WINDOWS` windows in all."""
        batch = [first]
        now = time.monotonic()
        cap = now + self.window_s * _MAX_WAIT_WINDOWS
        gap_end = now + self.window_s
        while len(batch) < self.max_batch:
            try:  # whatever is already queued joins without waiting
                job = self._queue.get_nowait()
            except queue.Empty:
                left = min(gap_end, cap) - time.monotonic()
                if left <= 0:
                    break
                try:
                    job = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if job is None:
                self._queue.put(None)  # keep the shutdown marker for the loop
                break
            batch.append(job)
            gap_end = time.monotonic() + self.window_s
        return batch

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                break
            batch = [j for j in self._collect(first) if j.future.set_running_or_notify_cancel()]
            start = time.perf_counter()
            if batch:
                self._run(batch)
            self.stats.busy_seconds += time.perf_counter() - start
        while True:  # fail whatever is still queued after shutdown
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(RuntimeError("server shutting down"))

    def _run(self, batch: list[GenJob]) -> None:
        try:
            results = self._generate(batch)
        except Exception as e:  # noqa: BLE001 - one bad request must not fail its batch-mates
            if len(batch) > 1:
                for job in batch:
                    self._run([job])
            else:
                batch[0].future.set_exception(e)
                self.stats.failed_requests += 1
            return
        for job, outs in zip(batch, results):
            job.future.set_result(outs)
            self.stats.generated_tokens += sum(len(o.token_ids) for o in outs)
        self.stats.requests += len(batch)
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))

    def _generate(self, batch: list[GenJob]) -> list[list[Completion]]:
        params = []
        for i, job in enumerate(batch):
            p = job.params
            if p.seed is not None:
                p = dataclasses.replace(p, seed=_check_batch_seed(p.seed, i))
            params.append(p)
        outs = self._run_batch([j.prompt_ids for j in batch], params)
        grouped: list[list[Completion]] = [[] for _ in batch]
        for o in outs:
            grouped[o.prompt_index].append(o)
        assert all(len(g) == j.params.n for g, j in zip(grouped, batch)), "engine lost a sample"
        return grouped


# ----------------------------------------------------------------------------------- service


class ChatService:
    """Chat template + tokenization + the batcher: everything the HTTP layer calls."""

    def __init__(self, engine, tokenizer, name: str, *, max_batch: int = 32, batch_window_ms: float = 50.0,
                 default_max_tokens: int = 512, max_n: int = 16, aliases: Sequence[str] = (),
                 max_tokens_limit: int | None = None):
        import torch

        self.engine, self.name = engine, name
        # The engine decodes on the worker thread; a Rust tokenizer used from two threads at once
        # can fail ("Already borrowed"), so the HTTP side encodes with its own copy.
        self.tokenizer = copy.deepcopy(tokenizer)
        self.names = {name, *aliases}
        self.max_n, self.max_tokens_limit = max_n, max_tokens_limit
        self.default_max_tokens = default_max_tokens if max_tokens_limit is None \
            else min(default_max_tokens, max_tokens_limit)
        self.context = int(engine.max_positions if hasattr(engine, "max_positions") else engine.backend.max_positions)
        self.created = int(time.time())

        def run_batch(prompts, params):
            with torch.no_grad():
                return engine.generate(prompts, params)

        self.batcher = Batcher(run_batch, max_batch, batch_window_ms / 1000.0)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> concurrent.futures.Future:
        return self.batcher.submit(prompt_ids, params)

    def close(self) -> None:
        self.batcher.close()
        if hasattr(self.engine, "close"):  # a vLLM engine holds its memory until closed
            self.engine.close()


def load_service(cfg: ServeConfig) -> ChatService:
    import torch

    from posttrain.models import default_dtype, load_model, load_tokenizer, parse_dtype
    from posttrain.generation.engine import Engine

    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = default_dtype(device) if cfg.dtype == "auto" else parse_dtype(cfg.dtype)
    tokenizer = load_tokenizer(cfg.model, cfg.chat_template)
    if cfg.backend == "vllm":  # vLLM loads the weights itself
        from posttrain.generation.vllm_engine import make_engine

        engine = make_engine("vllm", cfg.model, tokenizer, max_batch_size=cfg.engine_rows, vllm=cfg.vllm, dtype=dtype,
                             device=device)
    else:
        model = load_model(cfg.model, dtype=dtype, device=device).eval()
        engine = Engine(model, tokenizer, backend=cfg.backend, max_batch_size=cfg.engine_rows)
    return ChatService(engine, tokenizer, cfg.name, max_batch=cfg.max_batch, batch_window_ms=cfg.batch_window_ms,
                       default_max_tokens=cfg.default_max_tokens, max_n=cfg.max_n, aliases=(cfg.model,),
                       max_tokens_limit=cfg.max_tokens_limit)


# ----------------------------------------------------------------------------------- running


class ServerHandle:
    """An ASGI app served by uvicorn on a background thread (tests, and the local endpoints of
    synth/prefs). `close()` stops the server, then calls `on_close` (e.g. the service's)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 on_close: Callable[[], None] | None = None, model: str = ""):
        import uvicorn

        self.model, self._on_close = model, on_close
        self.service: ChatService | None = None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.host, self.port = host, sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="posttrain-serve-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError(f"the server on {self.host}:{self.port} did not start")
            time.sleep(0.01)

    @classmethod
    def for_service(cls, service: ChatService, host: str = "127.0.0.1", port: int = 0,
                    api_key: str | None = None, log_level: str = "warning") -> "ServerHandle":
        handle = cls(create_app(service, api_key), host, port, log_level, on_close=service.close, model=service.name)
        handle.service = service
        return handle

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)
        if self._on_close is not None:
            self._on_close()

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def start_server(cfg: ServeConfig) -> ServerHandle:
    """Load the checkpoint and serve it from a background thread; `close()` stops it."""
    cfg.validate()
    return ServerHandle.for_service(load_service(cfg), cfg.host, cfg.port, cfg.api_key, cfg.log_level)


def main(cfg: ServeConfig) -> int:
    import uvicorn

    cfg.validate()
    service = load_service(cfg)
    print(f"posttrain serve: {cfg.name} ({service.engine.backend_name} backend, {service.engine.device}, "
          f"context {service.context}) on http://{cfg.host}:{cfg.port}/v1", flush=True)
    try:
        uvicorn.run(create_app(service, cfg.api_key), host=cfg.host, port=cfg.port, log_level=cfg.log_level)
    finally:
        service.close()
    return 0
