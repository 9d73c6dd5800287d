"""The OpenAI chat-completions HTTP layer of `posttrain serve`: request schema and validation
messages, sampling settings and token budgets, response and stream bodies, and the ASGI app over
a `ChatService` (`generation/server.py` owns the batching, the service and running it)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import time
import uuid
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request

from posttrain.generation.engine import Completion
from posttrain.generation.sampling import SamplingParams

if TYPE_CHECKING:  # the service imports this module to build its app
    from posttrain.generation.server import ChatService


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code


def error_body(message: str, param: str | None = None, kind: str = "invalid_request_error",
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The accepted subset of OpenAI's chat request; any other field is a 400 naming it."""

    model_config = ConfigDict(extra="forbid")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)  # not OpenAI's; vLLM's extension
    n: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    user: str | None = None


def to_chat_messages(messages) -> list[dict]:
    out = []
    for m in messages:
        content = m.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        out.append({"role": "system" if m.role == "developer" else m.role, "content": content or ""})
    return out


def sampling_params(req, service: ChatService) -> SamplingParams:
    """Map an OpenAI request onto SamplingParams; APIError(400) naming the field when unsupported."""
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(req, name):
            raise APIError(400, f"{name} is not supported by this server (only 0)", name)
    if req.max_tokens is not None and req.max_completion_tokens is not None \
            and req.max_tokens != req.max_completion_tokens:
        raise APIError(400, "max_tokens and max_completion_tokens disagree; give one", "max_tokens")
    n = req.n or 1
    if n > service.max_n:
        raise APIError(400, f"n={n} exceeds this server's limit of {service.max_n}", "n")
    stop = req.stop
    stop = () if stop is None else ((stop,) if isinstance(stop, str) else tuple(stop))
    if any(not s for s in stop):
        raise APIError(400, "stop strings must be non-empty", "stop")
    return SamplingParams(
        max_new_tokens=req.max_completion_tokens or req.max_tokens or service.default_max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        n=n,
        stop=stop,
        seed=req.seed,
        logprobs=False,
    )


def completion_budget(req, service: ChatService, prompt_tokens: int) -> int:
    """The request's max_new_tokens; APIError(400) when it asks for more than fits after the prompt
    (vLLM's rule: the engine would otherwise clip it silently, and a huge value would then decode
    to the end of the context) or more than the server's max_tokens_limit."""
    name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    requested = getattr(req, name)
    room = service.context - prompt_tokens
    if requested is None:
        return service.default_max_tokens  # the engine clips a default to `room`
    limit = service.max_tokens_limit
    allowed = room if limit is None else min(room, limit)
    if requested <= allowed:
        return requested
    facts = (f"the prompt has {prompt_tokens} tokens and the model's context length is {service.context}, "
             f"so {room} completion tokens fit")
    if limit is not None:
        facts += f"; this server's max_tokens_limit is {limit}"
    if requested > room:
        raise APIError(400, f"{name}={requested} is too large: {facts}; at most {allowed} is allowed", name,
                       code="context_length_exceeded")
    raise APIError(400, f"{name}={requested} exceeds this server's max_tokens_limit: {facts}; at most {allowed} "
                        f"is allowed", name, code="invalid_value")


def finish_reason(c: Completion) -> str:
    return "length" if c.finish_reason == "length" else "stop"


def completion_body(rid: str, created: int, model: str, outs: list[Completion], prompt_tokens: int) -> dict:
    completion_tokens = sum(len(o.token_ids) for o in outs)
    return {
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": o.sample_index, "message": {"role": "assistant", "content": o.text},
                     "logprobs": None, "finish_reason": finish_reason(o)} for o in outs],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def text_pieces(tokenizer, token_ids: list[int], final_text: str) -> list[str]:
    """Split `final_text` at token boundaries for streaming; the pieces always concatenate to it.

    Incremental detokenization: a piece is emitted once the decoded text grows without ending in a
    partial UTF-8 character; the tail (after a stop string cut, or what decoding merges) is clipped
    to the engine's final text."""
    pieces, prefix, read = [], 0, 0
    for k in range(1, len(token_ids) + 1):
        before = tokenizer.decode(token_ids[prefix:read], skip_special_tokens=True)
        now = tokenizer.decode(token_ids[prefix:k], skip_special_tokens=True)
        if len(now) > len(before) and not now.endswith("\ufffd") and now.startswith(before):
            pieces.append(now[len(before):])
            prefix, read = read, k
    out, pos = [], 0
    for p in pieces:
        if not final_text.startswith(p, pos):
            break
        out.append(p)
        pos += len(p)
    if pos < len(final_text):
        out.append(final_text[pos:])
    return out


def stream_events(service: ChatService, rid: str, created: int, outs: list[Completion], prompt_tokens: int,
                  include_usage: bool) -> list[str]:
    """The SSE `data:` lines of a streamed response, ending with `[DONE]`."""
    def chunk(choices, usage=None):
        body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": service.name,
                "choices": choices}
        if include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    events = []
    for o in outs:
        i = o.sample_index
        events.append(chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]))
        for piece in text_pieces(service.tokenizer, o.token_ids, o.text):
            events.append(chunk([{"index": i, "delta": {"content": piece}, "finish_reason": None}]))
        events.append(chunk([{"index": i, "delta": {}, "finish_reason": finish_reason(o)}]))
    if include_usage:
        completion_tokens = sum(len(o.token_ids) for o in outs)
        events.append(chunk([], {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                 "total_tokens": prompt_tokens + completion_tokens}))
    events.append("data: [DONE]\n\n")
    return events


def _validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """A one-line message and the offending field from pydantic's error list."""
    e = errors[0]
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    if e.get("type") == "json_invalid":
        return f"request body is not valid JSON: {e.get('msg', '')}", None
    # pydantic adds the union member tried (e.g. 'str', 'list[TextPart]') to the location
    loc = [x for x in loc if not (x in ("str", "list[TextPart]", "TextPart") or x.startswith(("list[", "function-")))]
    param = ".".join(loc) or None
    message = f"{param or 'request body'}: {e.get('msg', 'invalid value')}"
    if e.get("type") == "extra_forbidden":
        message = f"{param}: unknown or unsupported parameter"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return message, param


async def _result_unless_disconnected(future: concurrent.futures.Future, request, poll_s: float = 1.0):
    """The job's result; if the client goes away first (e.g. it timed out and will retry), cancel
    the job so that, while still queued, it costs no engine time."""
    wrapped = asyncio.wrap_future(future)
    while True:
        done, _ = await asyncio.wait({wrapped}, timeout=poll_s)
        if done:
            return wrapped.result()
        if await request.is_disconnected():
            future.cancel()  # no effect once the engine runs it: its result is then dropped
            wrapped.cancel()
            raise APIError(499, "client disconnected", kind="client_closed_request")


def create_app(service: ChatService, api_key: str | None = None):
    from fastapi import Depends, FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="posttrain serve", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = _validation_message(list(exc.errors()))
        return JSONResponse(error_body(message, param), status_code=400)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return JSONResponse(error_body(exc.message, exc.param, exc.kind, exc.code), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(str(exc.detail)), status_code=exc.status_code)

    def authorize(request: Request) -> None:
        # a route dependency, so it runs before body validation; an HTTP middleware would wrap
        # `receive` and hide client disconnects from the handler
        if api_key and request.headers.get("authorization", "") != f"Bearer {api_key}":
            raise APIError(401, "invalid or missing API key", kind="authentication_error", code="invalid_api_key")

    def model_card() -> dict:
        return {"id": service.name, "object": "model", "created": service.created, "owned_by": "posttrain",
                "max_model_len": service.context}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/stats")
    async def stats():
        return dataclasses.asdict(service.batcher.stats)

    auth = [Depends(authorize)]

    @app.get("/v1/models", dependencies=auth)
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}", dependencies=auth)
    async def model(model_id: str):
        if model_id not in service.names:
            raise APIError(404, f"model {model_id!r} not found; this server has {service.name!r}", "model",
                           code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(req: ChatRequest, request: Request):
        if req.model not in service.names:
            raise APIError(404, f"model {req.model!r} not found; this server has {service.name!r}", "model",
                           code="model_not_found")
        params = sampling_params(req, service)
        try:
            prompt_ids = service.encode_chat(to_chat_messages(req.messages))
        except Exception as e:  # noqa: BLE001 - a template may reject a role order, etc.
            raise APIError(400, f"cannot apply the chat template: {e}", "messages") from None
        if len(prompt_ids) >= service.context:
            raise APIError(400, f"the prompt has {len(prompt_ids)} tokens; the model's context is "
                                f"{service.context}", "messages", code="context_length_exceeded")
        params = dataclasses.replace(params, max_new_tokens=completion_budget(req, service, len(prompt_ids)))
        try:
            outs = await _result_unless_disconnected(service.submit(prompt_ids, params), request)
        except ValueError as e:
            raise APIError(400, str(e)) from None
        except RuntimeError as e:
            raise APIError(503, str(e), kind="server_error") from None
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if not req.stream:
            return completion_body(rid, created, service.name, outs, len(prompt_ids))
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        events = stream_events(service, rid, created, outs, len(prompt_ids), include_usage)

        async def gen():
            for e in events:
                yield e

        return StreamingResponse(gen(), media_type="text/event-stream")

    return app
