"""The generation protocol every model backend implements: prompts -> n completions each."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # completions per prompt
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()  # generation ends at the first of these; the text is cut before it
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Completion:
    text: str
    n_tokens: int  # generated tokens, including a stop string's tokens but not padding
    finish_reason: str  # "stop" (EOS or a stop string) | "length" (max_new_tokens reached)
    prompt_tokens: int = 0  # the prompt's tokens when the backend reports them (per request: every choice repeats it)


@runtime_checkable
class Engine(Protocol):
    """A model backend. `generate` returns, for each prompt, `params.n` completions in a stable order."""

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]: ...


class RequestCache(Protocol):
    """Where a paid request's answer is kept once it arrives (the lake's, tasks/storage.py, or any get/put store):
    the same request is never paid for twice."""

    def get(self, key: str) -> dict | None: ...

    def put(self, key: str, value: dict) -> None: ...


def request_seeds(prompts: Sequence[str], seed: int) -> list[int]:
    """One seed per prompt from (seed, prompt, how often that prompt came before in the batch).

    A prompt then samples the same wherever it sits in a batch (resharding keeps data reproducible), while a
    prompt repeated in one batch gets different samples instead of copies (servers seed each request alone).
    """
    seen: dict[str, int] = {}
    seeds = []
    for prompt in prompts:
        k = seen[prompt] = seen.get(prompt, -1) + 1
        digest = hashlib.blake2b(f"{seed}\0{k}\0{prompt}".encode(), digest_size=8).digest()
        seeds.append(int.from_bytes(digest, "big") % 2**31)  # 31 bits: some servers seed numpy with it
    return seeds
