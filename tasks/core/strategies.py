"""Which step prefixes of a rollout get continuations, and how many: the three credit strategies as labelers.

Each strategy is a generator (a labeler) that yields requests [(step_index, k)] and receives the continuations
for each; `label_all` advances every rollout's labeler in rounds with ONE `sample` call per round, so the
credit stage can batch the prefixes of many rollouts into one engine call.

- linear (Math-Shepherd): every step, M continuations each.
- scan (Self-Explore): steps 1, 2, ... until the first one none of whose M continuations verifies.
- binary (OmegaPRM): binary search for such a step between lo (Q > 0) and hi (Q = 0, the wrong verdict).
scan and binary only need to know whether Q > 0, so they probe a step in rounds and stop at its first verified
continuation. A correct rollout has no pit: scan and binary sample nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Hashable, Mapping
from dataclasses import dataclass

STRATEGIES = ("linear", "scan", "binary")


@dataclass(frozen=True)
class Continuation:
    correct: bool  # the verifier's verdict on the prefix + this text
    text: str


Request = tuple[int, int]  # (step_index, k): k more continuations from the prefix ending after step step_index
Labeler = Generator[list[Request], list[list[Continuation]], dict[int, list[Continuation]]]
Sampler = Callable[[list[tuple[Hashable, int, int]]], list[list[Continuation]]]


def labeler(strategy: str, n_steps: int, correct: bool, *, m: int = 8, round_size: int = 2) -> Labeler:
    """The strategy's generator for a rollout of `n_steps` steps; it returns the continuations per visited step."""
    if m < 1 or round_size < 1:
        raise ValueError(f"m and round_size must be >= 1, got {m} and {round_size}")
    if strategy == "linear":
        return _linear(n_steps, m)
    if strategy == "scan":
        return _scan(n_steps, correct, m, round_size)
    if strategy == "binary":
        return _binary(n_steps, correct, m, round_size)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def _linear(n: int, m: int) -> Labeler:
    if n < 2:
        return {}
    results = yield [(i, m) for i in range(1, n)]
    return dict(zip(range(1, n), results, strict=True))


def _probe(
    step: int, m: int, round_size: int
) -> Generator[list[Request], list[list[Continuation]], list[Continuation]]:
    """Continuations from one prefix, in rounds, until one verifies (Q > 0 is then known) or m were drawn."""
    got: list[Continuation] = []
    while len(got) < m and not any(c.correct for c in got):
        (batch,) = yield [(step, min(round_size, m - len(got)))]
        got.extend(batch)
    return got


def _scan(n: int, correct: bool, m: int, round_size: int) -> Labeler:
    seen: dict[int, list[Continuation]] = {}
    if correct:
        return seen
    for i in range(1, n):
        seen[i] = yield from _probe(i, m, round_size)
        if not any(c.correct for c in seen[i]):
            break
    return seen


def _binary(n: int, correct: bool, m: int, round_size: int) -> Labeler:
    seen: dict[int, list[Continuation]] = {}
    lo, hi = 0, n  # Q_lo > 0 (assumed for Q_0: the question is solvable), Q_hi = 0 (the incorrect verdict)
    while not correct and hi - lo > 1:
        mid = (lo + hi) // 2
        seen[mid] = yield from _probe(mid, m, round_size)
        if any(c.correct for c in seen[mid]):
            lo = mid
        else:
            hi = mid
    return seen


def label_all(
    labelers: Mapping[Hashable, Labeler], sample: Sampler
) -> dict[Hashable, dict[int, list[Continuation]]]:
    """Run every labeler to its end, one `sample` call per round with all pending (key, step_index, k) requests.

    `sample` must return, in request order, exactly k continuations per request."""
    results: dict[Hashable, dict[int, list[Continuation]]] = {}
    pending: dict[Hashable, list[Request]] = {}

    def advance(key: Hashable, sent: list[list[Continuation]] | None) -> None:
        try:
            pending[key] = labelers[key].send(sent)
        except StopIteration as stop:
            results[key] = stop.value
            pending.pop(key, None)

    for key in labelers:
        advance(key, None)
    while pending:
        requests = [(key, i, k) for key, reqs in pending.items() for i, k in reqs]
        answers = sample(requests) if requests else []
        if len(answers) != len(requests) or any(
            len(a) != k for a, (_, _, k) in zip(answers, requests, strict=False)
        ):
            raise ValueError("sample must return exactly k continuations for each request, in order")
        it = iter(answers)
        for key, reqs in list(pending.items()):
            advance(key, [next(it) for _ in reqs])
    return results
