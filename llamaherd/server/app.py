"""The OpenAI-compatible HTTP API over the batching engine, and the chat page.

`create_app(llm=...)` serves a loaded model; `create_app(loader=...)` starts at once and
loads in the background (GET /health answers 503 until the model is ready).
Every request becomes one engine request per choice; their tokens come back on the
engine thread and are handed to the event loop, where they are decoded to text, checked
for stop strings and sent as one JSON body or as server-sent events.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse

from ..api import LLM
from ..engine import ContextTooLong, Engine, QueueFull
from ..engine import Request as EngineRequest
from ..generate import SamplingParams, StopStrings
from .errors import APIError, install_error_handlers, log
from .metrics import Metrics
from .schemas import ChatCompletionRequest, CompletionRequest, SamplingFields

CHAT_PAGE = Path(__file__).parent / "static" / "chat.html"
# The KV cache holds max_batch x context tokens up front; 4096 keeps that bounded for long-context models.
DEFAULT_MAX_CONTEXT = 4096
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass
class ServerState:
    model_id: str
    max_batch: int
    max_queue: int
    context_length: int | None
    api_key: str | None
    llm: LLM | None = None
    engine: Engine | None = None
    load_error: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    metrics: Metrics = field(default_factory=Metrics)

    def attach(self, llm: LLM) -> None:
        context = self.context_length or min(llm.config.max_seq_len, DEFAULT_MAX_CONTEXT)
        engine = Engine(llm.model, self.max_batch, self.max_queue, context).start()
        self.llm, self.engine = llm, engine

    def ready(self) -> tuple[LLM, Engine]:
        if self.engine is None or self.llm is None:
            raise APIError(503, self.load_error or "the model is still loading", code="model_not_ready",
                           type="server_error")
        return self.llm, self.engine


def create_app(
    llm: LLM | None = None,
    *,
    loader: Callable[[], LLM] | None = None,
    model_id: str | None = None,
    max_batch: int = 8,
    max_queue: int = 64,
    context_length: int | None = None,
    api_key: str | None = None,
) -> FastAPI:
    if (llm is None) == (loader is None):
        raise ValueError("give either a loaded llm or a loader")
    if model_id is None:
        if llm is None:
            raise ValueError("a loader needs a model_id")
        model_id = model_id_for(llm.source)
    state = ServerState(model_id, max_batch, max_queue, context_length, api_key)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if llm is not None:
            state.attach(llm)
        else:
            threading.Thread(target=_load_in_background, args=(state, loader), daemon=True).start()
        yield
        if state.engine is not None:
            state.engine.stop()

    app = FastAPI(title="llamaherd", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible completions and chat completions with continuous batching.")
    app.state.server = state
    install_error_handlers(app)
    app.add_middleware(AuthAndCount, state=state)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(CHAT_PAGE.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.engine is not None:
            return JSONResponse({"status": "ok", "model": state.model_id})
        status = "error" if state.load_error else "loading"
        return JSONResponse({"status": status, "message": state.load_error}, status_code=503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        text = state.metrics.render(state.engine, state.engine is not None)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [_model_card(state)]}

    @app.get("/v1/models/{model}")
    async def get_model(model: str) -> dict:
        _check_model(state, model)
        return _model_card(state)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        llm, engine = state.ready()
        _check_model(state, body.model)
        if body.logprobs:
            raise APIError(400, "logprobs are not supported", param="logprobs")
        prompts, texts = _completion_prompts(llm, body.prompt)
        max_tokens = 16 if body.max_tokens is None else body.max_tokens
        echo = bool(body.echo)
        gen = Generation(llm, engine, prompts, body, max_tokens, param="prompt")
        created, rid = int(time.time()), f"cmpl-{uuid.uuid4().hex}"
        n = body.n or 1

        def prefix(choice: Choice) -> str:
            return texts[choice.index // n] if echo and texts[choice.index // n] is not None else ""

        def chunk(choices: list[dict], usage: dict | None = None) -> dict:
            out = {"id": rid, "object": "text_completion", "created": created, "model": state.model_id,
                   "choices": choices}
            if usage is not None:
                out["usage"] = usage
            return out

        if body.stream:
            async def events() -> AsyncIterator[dict]:
                if echo:
                    for c in gen.choices:
                        if prefix(c):
                            yield chunk([{"index": c.index, "text": prefix(c), "logprobs": None, "finish_reason": None}])
                async for c, text, finished in gen.events():
                    if text or finished:
                        last = finished and gen.finished
                        yield chunk([{"index": c.index, "text": text, "logprobs": None,
                                      "finish_reason": c.finish_reason if finished else None}],
                                    usage=gen.usage() if last and not _include_usage(body) else None)
                if _include_usage(body):
                    yield chunk([], usage=gen.usage())

            return _sse(events(), gen)

        texts_out = await gen.collect(request)
        return chunk([{"index": c.index, "text": prefix(c) + texts_out[c.index], "logprobs": None,
                       "finish_reason": c.finish_reason} for c in gen.choices], usage=gen.usage())

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        llm, engine = state.ready()
        _check_model(state, body.model)
        messages = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
                    for m in body.messages]
        for m in messages:
            _check_text(m["content"], "messages")
        try:
            prompt_ids = llm.tokenizer.encode_chat(messages, add_generation_prompt=True)
        except ValueError as e:
            raise APIError(400, f"the messages cannot be rendered with the model's chat template: {e}",
                           param="messages") from None
        max_tokens = body.max_completion_tokens or body.max_tokens or engine.context_length
        gen = Generation(llm, engine, [prompt_ids], body, max_tokens, param="messages")
        created, rid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"

        def chunk(choices: list[dict], usage: dict | None = None) -> dict:
            out = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": state.model_id,
                   "system_fingerprint": None, "choices": choices}
            if usage is not None:
                out["usage"] = usage
            return out

        if body.stream:
            async def events() -> AsyncIterator[dict]:
                for c in gen.choices:  # OpenAI opens each choice with the role
                    yield chunk([{"index": c.index, "delta": {"role": "assistant", "content": ""},
                                  "logprobs": None, "finish_reason": None}])
                async for c, text, finished in gen.events():
                    if text:
                        yield chunk([{"index": c.index, "delta": {"content": text}, "logprobs": None,
                                      "finish_reason": None}])
                    if finished:
                        last = gen.finished and not _include_usage(body)
                        yield chunk([{"index": c.index, "delta": {}, "logprobs": None,
                                      "finish_reason": c.finish_reason}], usage=gen.usage() if last else None)
                if _include_usage(body):
                    yield chunk([], usage=gen.usage())

            return _sse(events(), gen)

        texts_out = await gen.collect(request)
        return {
            "id": rid, "object": "chat.completion", "created": created, "model": state.model_id,
            "system_fingerprint": None,
            "choices": [{"index": c.index, "message": {"role": "assistant", "content": texts_out[c.index]},
                         "logprobs": None, "finish_reason": c.finish_reason} for c in gen.choices],
            "usage": gen.usage(),
        }

    return app


# ---- generation: engine requests for the choices of one API request --------------------


class Choice:
    """One choice: its engine request, and the text made of its tokens so far."""

    def __init__(self, index: int, prompt_ids: list[int], request: EngineRequest, tokenizer, stops: list[str]) -> None:
        self.index = index
        self.prompt_tokens = len(prompt_ids)
        self.request = request
        self.decoder = tokenizer.stream_decoder(prompt_ids)
        self.stops = StopStrings(list(stops))
        self.completion_tokens = 0
        self.finish_reason: str | None = None

    def push(self, token: int) -> str:
        self.completion_tokens += 1
        return self.stops.push(self.decoder.push(token))

    def finish(self) -> str:
        tail = self.stops.push(self.decoder.flush()) + self.stops.flush()
        if self.stops.stopped:
            self.request.cancel()  # a stop string ended it: free the row now
            self.finish_reason = "stop"
        else:
            self.finish_reason = self.request.finish_reason
        return tail


class Generation:
    """The choices of one API request; their tokens arrive on one asyncio queue."""

    def __init__(self, llm: LLM, engine: Engine, prompts: list[list[int]], body: SamplingFields,
                 max_tokens: int, param: str) -> None:
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, int | None]] = asyncio.Queue()
        n = body.n or 1
        stops = body.stop_strings()
        for s in stops:
            _check_text(s, "stop")
        self.prompt_tokens = sum(len(p) for p in prompts)  # a prompt shared by n choices counts once, as at OpenAI
        self.choices: list[Choice] = []
        for p, prompt_ids in enumerate(prompts):
            for j in range(n):
                index = p * n + j
                listener = lambda token, index=index: loop.call_soon_threadsafe(self.queue.put_nowait, (index, token))
                request = EngineRequest(prompt_ids, _sampling_params(body, j), max_tokens,
                                        stop_ids=frozenset(llm.tokenizer.eog_ids), listener=listener)
                self.choices.append(Choice(index, prompt_ids, request, llm.tokenizer, stops))
        self._open = set(range(len(self.choices)))
        try:
            engine.submit(*(c.request for c in self.choices))
        except ContextTooLong as e:
            raise APIError(400, f"{e}; shorten the {param}", param=param, code="context_length_exceeded") from None
        except QueueFull as e:
            raise APIError(429, f"{e}; retry later", code="rate_limit_exceeded") from None
        except ValueError as e:
            raise APIError(400, str(e), param=param) from None

    @property
    def finished(self) -> bool:
        return not self._open

    async def events(self) -> AsyncIterator[tuple[Choice, str, bool]]:
        """(choice, new text, whether the choice just finished), as tokens arrive."""
        while self._open:
            index, token = await self.queue.get()
            if index not in self._open:
                continue  # tokens that raced a stop string
            choice = self.choices[index]
            if token is None:
                text = choice.finish()
                if choice.finish_reason == "error":
                    raise APIError(500, f"generation failed: {choice.request.error}", type="server_error")
                self._open.discard(index)
                yield choice, text, True
                continue
            text = choice.push(token)
            if choice.stops.stopped:
                text += choice.finish()
                self._open.discard(index)
                yield choice, text, True
            else:
                yield choice, text, False

    async def collect(self, request: Request) -> list[str]:
        """Every choice's whole text; cancels everything if the client goes away meanwhile."""
        watcher = asyncio.create_task(_cancel_on_disconnect(request, self))
        texts = [""] * len(self.choices)
        try:
            async for choice, text, _ in self.events():
                texts[choice.index] += text
        finally:
            watcher.cancel()
            self.cancel()
        return texts

    def cancel(self) -> None:
        for c in self.choices:
            c.request.cancel()

    def usage(self) -> dict:
        completion = sum(c.completion_tokens for c in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}


async def _cancel_on_disconnect(request: Request, gen: Generation) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            gen.cancel()
            return


def _sse(events: AsyncIterator[dict], gen: Generation) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"
        except APIError as e:
            yield f"data: {json.dumps(e.body())}\n\n"
        finally:  # also runs when Starlette cancels us because the client disconnected
            gen.cancel()

    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)


# ---- request details ------------------------------------------------------------------


def _sampling_params(body: SamplingFields, choice: int) -> SamplingParams:
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    if top_p == 0:  # OpenAI accepts 0: only the most likely token survives
        temperature = 0.0
    seed = None if body.seed is None else (body.seed + choice) % 2**63  # n choices, n different draws
    return SamplingParams(
        temperature=temperature, top_p=top_p if top_p > 0 else 1.0, top_k=body.top_k or 0,
        min_p=body.min_p or 0.0, repeat_penalty=body.repetition_penalty or 1.0,
        frequency_penalty=body.frequency_penalty or 0.0, presence_penalty=body.presence_penalty or 0.0, seed=seed,
    )


def _include_usage(body: SamplingFields) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def _check_text(text: str, param: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, f"{param} holds text that is not valid Unicode (a lone surrogate)", param=param) from None


def _completion_prompts(llm: LLM, prompt) -> tuple[list[list[int]], list[str | None]]:
    """Token ids of each prompt, and its text (None for prompts given as ids)."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    ids, texts = [], []
    vocab = llm.config.vocab_size
    for p in prompt:
        if isinstance(p, str):
            _check_text(p, "prompt")
            ids.append(llm.encode_prompt(p))
            texts.append(p)
        else:
            if any(not 0 <= t < vocab for t in p):
                raise APIError(400, f"prompt token ids must lie in [0, {vocab})", param="prompt")
            ids.append(list(p))
            texts.append(None)
        if not ids[-1]:
            raise APIError(400, "the prompt is empty", param="prompt")
    return ids, texts


def model_id_for(path: Path) -> str:
    name = Path(path).name
    return name[: -len(".gguf")] if name.endswith(".gguf") else name


def _model_card(state: ServerState) -> dict:
    return {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "llamaherd"}


def _check_model(state: ServerState, model: str) -> None:
    if model not in (state.model_id, f"{state.model_id}.gguf"):
        raise APIError(404, f"the model '{model}' does not exist; this server serves '{state.model_id}'",
                       param="model", code="model_not_found")


def _load_in_background(state: ServerState, loader: Callable[[], LLM]) -> None:
    try:
        state.attach(loader())
        log.info("model %s loaded", state.model_id)
    except Exception as e:  # /health reports it; the process stays up to say so
        log.exception("loading the model failed")
        state.load_error = f"loading the model failed: {e}"


class AuthAndCount:
    """ASGI middleware: checks the API key on /v1/ routes and counts responses for /metrics.
    (Plain ASGI rather than BaseHTTPMiddleware, which would get in the way of streaming.)"""

    def __init__(self, app, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path in KNOWN_ENDPOINTS:
            endpoint = path
        else:  # bounded label values: never the raw path
            endpoint = "/v1/models/{model}" if path.startswith("/v1/models/") else "other"
        key = self.state.api_key
        if key is not None and path.startswith("/v1/") and not _authorized(scope, key):
            self.state.metrics.count_request(endpoint, 401)
            error = APIError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'",
                             code="invalid_api_key")
            return await error.response()(scope, receive, send)

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                self.state.metrics.count_request(endpoint, message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)


KNOWN_ENDPOINTS = {"/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions",
                   "/openapi.json", "/docs"}


def _authorized(scope, key: str) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())
    return False
