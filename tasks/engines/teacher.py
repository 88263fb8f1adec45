"""Prompts -> a paid teacher's validated answers, each request cached the moment it is answered, so a rerun after
a crash pays only for what was never answered."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, fields, replace

from mathfactory.tasks.core.records import derive_seed, stable_id
from mathfactory.tasks.engines.base import Engine, RequestCache, SamplingParams, request_seeds
from mathfactory.tasks.engines.openai_engine import EngineHTTPError

log = logging.getLogger(__name__)

# A request that failed for good after the engine's own retries; anything else is a bug and propagates.
REQUEST_ERRORS = (EngineHTTPError, TimeoutError)


@dataclass(frozen=True)
class Answer:
    """One prompt's outcome; the fields are TeacherCall's (the caller adds round, seed_id, stage, prompt)."""

    request_id: str  # the cache key: request_key(model, prompt, params with this prompt's seed)
    completion: str | None  # None if the request failed
    ok: bool
    reason: str  # "ok", or the last attempt's failure: "HTTP 500: ...", "timeout (ReadTimeout)", "empty", ...
    attempts: int  # requests sent for it (as stored, for a cached answer)
    cached: bool  # answered from the cache: its tokens were paid by an earlier run
    prompt_tokens: int  # summed over the attempts that returned text
    completion_tokens: int  # likewise: a rejected answer was paid for too


@dataclass(frozen=True)
class TeacherUsage:
    """What a Teacher spent in this process (cache hits cost nothing)."""

    requests: int = 0  # engine calls made, one per attempt
    cached: int = 0  # prompts answered from the cache
    failed: int = 0  # prompts returned with ok=False
    retries: int = 0  # attempts after a prompt's first (an HTTP failure, a timeout or a rejected text)
    prompt_tokens: int = 0
    completion_tokens: int = 0


def request_key(model: str, prompt: str, params: SamplingParams) -> str:
    """The request's content hash: model, prompt and every sampling field (a field added later joins the key)."""
    return stable_id("teacher", model, prompt, *(f"{f.name}={getattr(params, f.name)!r}" for f in fields(params)))


def retry_seed(seed: int, rejected: int) -> int:
    """The seed after `rejected` rejected texts: a fixed seed would only repeat the rejected text."""
    return derive_seed(seed, rejected)


class Teacher:
    """Asks any Engine one request per prompt, `max_concurrency` at a time, through a RequestCache.

    A failed request (HTTP error, timeout, an empty text, a text `validate` rejects) is tried again, up to
    `attempts` times, then returned as ok=False and not cached, so a rerun tries it anew. A rejected text is
    retried with a new seed; a transport failure with the same one. A cached answer is returned as stored:
    it passed `validate` when it was bought, and `validate` is not part of the key.

    `usage.retries` counts the teacher's own attempts; the engine's HTTP retries (429, 5xx) are in its usage.
    """

    def __init__(
        self,
        engine: Engine,
        cache: RequestCache,
        model: str,
        attempts: int = 3,
        validate: Callable[[str], str | None] | None = None,
        max_concurrency: int = 8,
    ) -> None:
        if attempts < 1 or max_concurrency < 1:
            raise ValueError("attempts and max_concurrency must be >= 1")
        self.engine, self.cache, self.model = engine, cache, model  # model names the teacher in every key
        self.attempts, self.validate, self.max_concurrency = attempts, validate, max_concurrency
        self._usage = TeacherUsage()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Teacher({self.engine!r}, {self.cache!r}, model={self.model!r})"

    @property
    def usage(self) -> TeacherUsage:
        with self._lock:
            return self._usage

    def _count(self, **deltas: int) -> None:
        with self._lock:
            self._usage = replace(self._usage, **{k: getattr(self._usage, k) + v for k, v in deltas.items()})

    def ask(self, prompts: Sequence[str], params: SamplingParams) -> list[Answer]:
        """One Answer per prompt, in order. Never raises for a bad request; does raise for a bug or a cache
        that cannot be written (answers that cannot be kept should not be bought)."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not one string")
        if params.n != 1:
            raise ValueError(f"a teacher request has one completion, got n={params.n}")
        if not prompts:
            return []
        # Each prompt's seed depends on the prompt alone (and its repeats), not on the batch around it.
        requests = [(p, s, request_key(self.model, p, replace(params, seed=s)))
                    for p, s in zip(prompts, request_seeds(prompts, params.seed), strict=True)]
        with ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="teacher") as pool:
            futures: list[Future[Answer]] = [
                pool.submit(self._ask_one, prompt, replace(params, seed=seed), key)
                for prompt, seed, key in requests
            ]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
            finally:
                for future in futures:  # after a bug, send nothing more; in-flight requests still finish
                    future.cancel()
        for future in futures:
            error = None if future.cancelled() else future.exception()
            if error is not None:
                raise error
        return [future.result() for future in futures]

    def _ask_one(self, prompt: str, params: SamplingParams, key: str) -> Answer:
        # One read per prompt, in the pool with the requests: linear in the batch, whatever the cache holds
        # (listing a million-entry cache per batch is not).
        hit = self.cache.get(key)
        if hit is not None:
            self._count(cached=1)
            return Answer(key, hit["completion"], True, "ok", hit["attempts"], True, hit["prompt_tokens"],
                          hit["completion_tokens"])
        reason, rejected, prompt_tokens, completion_tokens = "", 0, 0, 0
        for attempt in range(1, self.attempts + 1):
            seed = params.seed if rejected == 0 else retry_seed(params.seed, rejected)
            self._count(requests=1, retries=int(attempt > 1))
            try:
                [[completion]] = self.engine.generate([prompt], replace(params, seed=seed))
            except REQUEST_ERRORS as e:
                reason = getattr(e, "reason", None) or f"{type(e).__name__}: {e}"
                log.warning("teacher request %s attempt %d/%d failed: %s", key, attempt, self.attempts, reason)
                continue
            prompt_tokens += completion.prompt_tokens
            completion_tokens += completion.n_tokens
            self._count(prompt_tokens=completion.prompt_tokens, completion_tokens=completion.n_tokens)
            text = completion.text
            reason = "empty" if not text.strip() else (self.validate(text) if self.validate else None)
            if reason is None:
                self.cache.put(key, {
                    "request_id": key, "model": self.model, "prompt": prompt, "params": asdict(params),
                    "seed": seed, "completion": text, "finish_reason": completion.finish_reason,
                    "attempts": attempt, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                })
                return Answer(key, text, True, "ok", attempt, False, prompt_tokens, completion_tokens)
            rejected += 1
            log.warning("teacher request %s attempt %d/%d rejected: %s", key, attempt, self.attempts, reason)
        self._count(failed=1)
        return Answer(key, None, False, reason, self.attempts, False, prompt_tokens, completion_tokens)
