"""Prompts -> completions from a served OpenAI-compatible model (vllm serve, SGLang, a hosted API) over HTTP."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx

from mathfactory.tasks.engines.base import Completion, SamplingParams, request_seeds
from mathfactory.tasks.engines.quota import Quota

log = logging.getLogger(__name__)

MAX_WAIT_S = 120.0  # longest single pause between attempts, even when a server asks for more


class EngineHTTPError(RuntimeError):
    """A request that failed for good; the message names the URL and the status, `reason` says why in a few
    words without the URL ("HTTP 500: ...", "timeout (ReadTimeout)", "unreadable response: ...")."""

    def __init__(self, message: str, reason: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message
        self.status = status  # the HTTP status of a refused request, None for other failures

    @property
    def bad_request(self) -> bool:
        """The server refused this request's content (a prompt too long for its context, say), not the client:
        the same request fails again, while others may succeed."""
        return self.status in (400, 413, 422)


@dataclass(frozen=True)
class Usage:
    """Running totals for cost accounting: tokens as billed by the server."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0  # requests that returned completions
    retries: int = 0  # attempts re-sent after a 429, a 5xx, a timeout or a connection error


def finish_reason(reason: str | None) -> str:
    """The server's finish_reason -> "stop" | "length".

    Anything but "length" ended the text early (EOS, a stop string, a provider's content filter); the protocol
    has only the two reasons, and one odd choice must not sink a batch: the verifier grades the text anyway.
    """
    if reason not in ("stop", "length"):
        log.warning("finish_reason %r recorded as 'stop'", reason)
    return "length" if reason == "length" else "stop"


def split_completion_tokens(total: int, texts: Sequence[str], reasons: Sequence[str], max_tokens: int) -> list[int]:
    """Per-choice token counts from a response's `usage.completion_tokens`, which OpenAI-style servers give
    only summed over the n choices.

    A "length" choice used exactly `max_tokens`. The rest is shared among the other choices in proportion to
    len(text) + 1 (the +1 for the EOS or stop-string token that ended them), rounded by largest remainder so
    the counts add up to `total`. If `total` cannot cover the "length" choices, all choices share it that way.
    """
    counts = [0] * len(texts)
    n_length = sum(r == "length" for r in reasons)
    if n_length * max_tokens <= total:
        for i, reason in enumerate(reasons):
            if reason == "length":
                counts[i] = max_tokens
        shared = [i for i, reason in enumerate(reasons) if reason != "length"]
        budget = total - n_length * max_tokens
    else:
        shared, budget = list(range(len(texts))), total
    if not shared:
        return counts
    weights = [len(texts[i]) + 1 for i in shared]
    whole = sum(weights)
    quotas = [divmod(budget * w, whole) for w in weights]
    for i, (q, _) in zip(shared, quotas, strict=True):
        counts[i] = q
    leftover = budget - sum(q for q, _ in quotas)
    by_remainder = sorted(range(len(shared)), key=lambda k: -quotas[k][1])
    for k in by_remainder[:leftover]:
        counts[shared[k]] += 1
    return counts


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def backoff_delay(attempt: int, backoff_s: float, retry_after: float | None, rng: random.Random) -> float:
    """Exponential backoff with jitter (so a burst of 429s does not come back in lockstep), never shorter
    than the server's Retry-After."""
    delay = min(MAX_WAIT_S, backoff_s * 2**attempt) * (0.5 + rng.random())
    return min(MAX_WAIT_S, max(delay, retry_after or 0.0))


class OpenAIEngine:
    """Engine over an OpenAI-compatible HTTP API: one request per prompt (with `n`), up to `max_concurrency`
    in flight (and within `quota`, the limits every worker shares), retried on 429 / 5xx / timeouts / connection
    errors, failing fast on any other 4xx.

    `base_url` is the server's root, with or without the trailing "/v1" the OpenAI SDK expects. Greedy
    requests ask for one completion and repeat it n times: greedy samples are identical, and vLLM refuses
    n > 1 at temperature 0.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        mode: Literal["completions", "chat"] = "completions",
        max_concurrency: int = 8,
        timeout_s: float = 60,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        system_prompt: str | None = None,
        quota: Quota | None = None,
    ) -> None:
        if mode not in ("completions", "chat"):
            raise ValueError(f"mode must be 'completions' or 'chat', got {mode!r}")
        if max_concurrency < 1 or max_retries < 0:
            raise ValueError("max_concurrency must be >= 1 and max_retries >= 0")
        root = base_url.rstrip("/").removesuffix("/v1")
        self.url = f"{root}/v1/chat/completions" if mode == "chat" else f"{root}/v1/completions"
        self.model, self.mode, self.system_prompt = model, mode, system_prompt
        self.max_concurrency, self.timeout_s = max_concurrency, timeout_s
        self.max_retries, self.backoff_s = max_retries, backoff_s
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}  # kept out of repr and messages
        self._usage = Usage()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_concurrency)  # the limit holds across concurrent calls too
        self._rng = random.Random()
        self.quota = quota or Quota()  # limits shared with every other client of the server (Prefect's)

    def __repr__(self) -> str:
        return f"OpenAIEngine(url={self.url!r}, model={self.model!r})"

    @property
    def usage(self) -> Usage:
        with self._lock:
            return self._usage

    def _count(self, **deltas: int) -> None:
        with self._lock:
            self._usage = replace(self._usage, **{k: getattr(self._usage, k) + v for k, v in deltas.items()})

    def payload(self, prompt: str, params: SamplingParams, seed: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "n": 1 if params.greedy else params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
            "seed": seed,
        }
        if params.stop:  # some servers refuse an empty list
            body["stop"] = list(params.stop)
        if self.mode == "chat":
            system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            body["messages"] = [*system, {"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return body

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        # Threads, not asyncio: generate is synchronous and must work from inside a running event loop and
        # from Prefect's worker threads alike; a thread pool needs neither a loop of its own nor the caller's.
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not one string")
        if not prompts:
            return []
        stop = threading.Event()  # set on the first failure so the other workers stop retrying
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        with (
            httpx.Client(timeout=self.timeout_s, limits=limits, headers=self._headers) as client,
            ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="openai-engine") as pool,
        ):
            futures = [
                pool.submit(self._complete, client, prompt, params, seed, stop)
                for prompt, seed in zip(prompts, request_seeds(prompts, params.seed), strict=True)
            ]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
            finally:
                stop.set()
                for future in futures:
                    future.cancel()
        for future in futures:
            error = None if future.cancelled() else future.exception()
            if error is not None and not isinstance(error, _Abandoned):
                raise error
        return [future.result() for future in futures]

    def _complete(
        self, client: httpx.Client, prompt: str, params: SamplingParams, seed: int, stop: threading.Event
    ) -> list[Completion]:
        try:
            return self._complete_one(client, prompt, params, seed, stop)
        except _Abandoned:
            raise
        except BaseException:
            stop.set()  # before the next queued prompt is taken up, so nothing more is sent
            raise

    def _complete_one(
        self, client: httpx.Client, prompt: str, params: SamplingParams, seed: int, stop: threading.Event
    ) -> list[Completion]:
        body = self.payload(prompt, params, seed)
        failure = reason = ""
        for attempt in range(self.max_retries + 1):
            if stop.is_set():
                raise _Abandoned
            retry_after = None
            try:
                with self._slots, self.quota.slot():  # every attempt takes its slots: a retry is a request too
                    response = client.post(self.url, json=body)
            except httpx.TransportError as e:  # timeouts, refused or dropped connections
                failure = f"{type(e).__name__}: {e}"
                reason = f"timeout ({type(e).__name__})" if isinstance(e, httpx.TimeoutException) else failure
            else:
                if response.is_success:
                    return self._completions(response, body, params)
                failure = reason = f"HTTP {response.status_code}: {_snippet(response)}"
                if response.status_code != 429 and response.status_code < 500:
                    raise EngineHTTPError(f"POST {self.url} -> {failure}", failure, response.status_code)
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            if attempt == self.max_retries:
                break
            delay = backoff_delay(attempt, self.backoff_s, retry_after, self._rng)
            log.warning("POST %s failed (%s); retry %d/%d in %.2fs", self.url, failure, attempt + 1,
                        self.max_retries, delay)
            self._count(retries=1)
            if stop.wait(delay):
                raise _Abandoned
        raise EngineHTTPError(f"POST {self.url} failed after {self.max_retries + 1} attempts; last: {failure}", reason)

    def _completions(self, response: httpx.Response, body: dict, params: SamplingParams) -> list[Completion]:
        try:
            data = response.json()
            choices = sorted(data["choices"], key=lambda c: c["index"])
            texts = [(c["message"]["content"] if self.mode == "chat" else c["text"]) or "" for c in choices]
            reasons = [finish_reason(c.get("finish_reason")) for c in choices]
            usage = data.get("usage") or {}
        except (ValueError, KeyError, TypeError) as e:
            reason = f"unreadable response ({e!r}): {_snippet(response)}"
            raise EngineHTTPError(f"POST {self.url} -> {reason}", reason) from e
        if len(choices) != body["n"]:
            reason = f"{len(choices)} choices, asked for {body['n']}"
            raise EngineHTTPError(f"POST {self.url} -> {reason}", reason)
        total = int(usage.get("completion_tokens") or 0)  # servers that send no usage cost 0 tokens here
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        self._count(prompt_tokens=prompt_tokens, completion_tokens=total, requests=1)
        counts = split_completion_tokens(total, texts, reasons, params.max_new_tokens)
        # usage.prompt_tokens is per request: each choice carries it whole (sum over choices would overcount).
        completions = [Completion(t, k, r, prompt_tokens) for t, k, r in zip(texts, counts, reasons, strict=True)]
        return completions * params.n if params.greedy else completions


class _Abandoned(Exception):
    """A worker stopped because another request already failed the batch."""


def _snippet(response: httpx.Response, limit: int = 300) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:limit] + ("..." if len(text) > limit else "")
