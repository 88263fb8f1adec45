"""Any Engine -> a small OpenAI-compatible HTTP server on loopback, with injectable faults, for tests."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from mathfactory.tasks.engines.base import Engine, SamplingParams


@dataclass
class Faults:
    """What the server does wrong, counted by arrival order of requests."""

    fail_first: int = 0  # the first K requests answer `fail_status`
    fail_status: int = 429
    retry_after: str | None = "0"  # Retry-After header sent with those failures
    hang_first: int = 0  # the K requests after those sleep `hang_s` before answering (past a client timeout)
    hang_s: float = 0.0
    delay_s: float = 0.0  # every request takes at least this long, so concurrent requests overlap
    hang_after: int | None = None  # every request after the first K (None: none) sleeps `hang_s` too
    garbage_first: int = 0  # the first K requests answer 200 with `garbage_body`; the faults above count after them
    garbage_body: str = '{"choices": [{"index": 0, "te'  # cut off mid-document


@dataclass
class Record:
    """What the server saw; read by tests from their own thread."""

    received: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    bodies: list[dict] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    completion_tokens: int = 0  # summed over the usage of successful responses
    prompt_tokens: int = 0


class _Sampling(BaseModel):
    model: str
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    stop: str | list[str] | None = None
    seed: int | None = None


class CompletionRequest(_Sampling):
    prompt: str


class Message(BaseModel):
    role: str
    content: str


class ChatRequest(_Sampling):
    messages: list[Message]


def render_chat(messages: list[Message]) -> str:
    """A plain chat template: the backing engines take text."""
    return "".join(f"<{m.role}>{m.content}\n" for m in messages) + "<assistant>"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "code": status}}, status)


def make_app(
    engine: Engine,
    model: str,
    faults: Faults,
    record: Record,
    max_model_len: int = 512,
    count_tokens: Callable[[str], int] = lambda text: len(text.split()),
) -> FastAPI:
    app = FastAPI()
    engine_lock = asyncio.Lock()  # the backing engine need not be thread-safe

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, str(exc.errors()))  # vLLM and OpenAI answer 400, FastAPI's default is 422

    async def serve(req: _Sampling, prompt: str, raw: Request, chat: bool) -> Response:
        record.received += 1
        nth = record.received
        record.bodies.append(await raw.json())
        record.headers.append(dict(raw.headers))
        record.in_flight += 1
        record.peak_in_flight = max(record.peak_in_flight, record.in_flight)
        try:
            response = await _answer(req, prompt, chat, nth)
        finally:
            record.in_flight -= 1
        record.statuses.append(response.status_code)
        return response

    async def _answer(req: _Sampling, prompt: str, chat: bool, nth: int) -> Response:
        await asyncio.sleep(faults.delay_s)
        if nth <= faults.garbage_first:
            return Response(faults.garbage_body, 200, media_type="application/json")
        k = nth - faults.garbage_first
        if k <= faults.fail_first:
            headers = {"Retry-After": faults.retry_after} if faults.retry_after is not None else {}
            return JSONResponse({"error": {"message": "injected", "code": faults.fail_status}},
                                faults.fail_status, headers=headers)
        if k <= faults.fail_first + faults.hang_first or (faults.hang_after is not None and nth > faults.hang_after):
            await asyncio.sleep(faults.hang_s)
        if req.model != model:
            return _error(404, f"The model `{req.model}` does not exist.")
        prompt_tokens = count_tokens(prompt)
        if prompt_tokens + req.max_tokens > max_model_len:
            return _error(400, f"max_tokens={req.max_tokens} + {prompt_tokens} prompt tokens > {max_model_len}")
        if req.temperature == 0 and req.n > 1:
            return _error(400, f"n must be 1 when using greedy sampling, got {req.n}.")  # as vLLM says
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        params = SamplingParams(n=req.n, temperature=req.temperature, top_p=req.top_p,
                                max_new_tokens=req.max_tokens, stop=stop, seed=req.seed or 0)
        async with engine_lock:
            [completions] = await asyncio.to_thread(engine.generate, [prompt], params)
        completion_tokens = sum(c.n_tokens for c in completions)
        record.prompt_tokens += prompt_tokens
        record.completion_tokens += completion_tokens
        choices = [
            {"index": j, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason}
            if chat else {"index": j, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
            for j, c in enumerate(completions)
        ]
        choices.reverse()  # clients must order by "index", not by position
        return JSONResponse({
            "id": f"cmpl-{nth}", "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, raw: Request) -> Response:
        return await serve(req, req.prompt, raw, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, raw: Request) -> Response:
        return await serve(req, render_chat(req.messages), raw, chat=True)

    return app


class Server:
    """uvicorn in a daemon thread on 127.0.0.1. The port is bound at construction, so `url` is known (and
    connections are refused) before `start()`."""

    def __init__(self, app: FastAPI) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def start(self) -> Server:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"test server at {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._socket.close()
