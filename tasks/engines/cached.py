"""Any Engine + a RequestCache -> an Engine that never asks the same request twice: the policy's answers are kept
the way the teacher's are (tasks/engines/teacher.py), so a rerun of a stopped command pays only for the rest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

from mathfactory.tasks.engines.base import Completion, Engine, RequestCache, SamplingParams, request_seeds
from mathfactory.tasks.engines.openai_engine import EngineHTTPError
from mathfactory.tasks.engines.teacher import request_key

CHUNK = 64  # prompts per call to the wrapped engine: a kill loses at most one chunk's answers


class RequestsRefused(Exception):
    """Prompts the server refused as bad requests (EngineHTTPError.bad_request), prompt -> why. The fault is theirs,
    not the server's: every other prompt of the call was answered and cached before this was raised."""

    def __init__(self, refused: dict[str, str]) -> None:
        super().__init__(f"{len(refused)} prompts refused: {next(iter(refused.values()))}")
        self.refused = refused


@dataclass
class CacheUsage:
    cached: int = 0  # prompts answered from the cache
    asked: int = 0  # prompts sent to the wrapped engine


class CachedEngine:
    """`engine` behind `cache`: one document per prompt (its n completions), keyed by the model, the prompt and
    the sampling parameters with the prompt's own seed (`request_seeds`), so a request is the same request
    wherever it sits in a batch. Answers are stored a chunk at a time, as they arrive."""

    def __init__(self, engine: Engine, cache: RequestCache, model: str, chunk: int = CHUNK) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.engine, self.cache, self.model, self.chunk = engine, cache, model, chunk
        self.usage = CacheUsage()

    def __repr__(self) -> str:
        return f"CachedEngine({self.engine!r}, {self.cache!r}, model={self.model!r})"

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not one string")
        keys = [request_key(self.model, p, replace(params, seed=s))
                for p, s in zip(prompts, request_seeds(prompts, params.seed), strict=True)]
        out: list[list[Completion] | None] = []
        for key in keys:
            hit = self.cache.get(key)
            out.append(None if hit is None else [Completion(**c) for c in hit["completions"]])
        self.usage.cached += sum(o is not None for o in out)
        missing = [i for i, o in enumerate(out) if o is None]
        refused: dict[str, str] = {}
        for a in range(0, len(missing), self.chunk):
            chunk = missing[a : a + self.chunk]
            answers = self._bisect([prompts[i] for i in chunk], params, refused)
            self.usage.asked += len(chunk)
            for i, completions in zip(chunk, answers, strict=True):
                if completions is not None:
                    self.cache.put(keys[i], {"model": self.model, "prompt": prompts[i], "params": asdict(params),
                                             "completions": [asdict(c) for c in completions]})
                    out[i] = completions
        if refused:
            raise RequestsRefused(refused)
        return out  # type: ignore[return-value]  # every slot is filled above

    def _bisect(self, prompts: list[str], params: SamplingParams,
                refused: dict[str, str]) -> list[list[Completion] | None]:
        """The engine's answers, None for a prompt refused as a bad request (noted in `refused`): a refused call
        is split in halves until the bad prompts stand alone, so the good ones are still asked in batches."""
        try:
            return list(self.engine.generate(prompts, params))
        except EngineHTTPError as e:
            if not e.bad_request:
                raise
            if len(prompts) == 1:
                refused[prompts[0]] = e.reason
                return [None]
            half = len(prompts) // 2
            return self._bisect(prompts[:half], params, refused) + self._bisect(prompts[half:], params, refused)
