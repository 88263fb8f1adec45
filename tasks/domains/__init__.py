"""Problem domains: generators of Problem records (toy arithmetic, path-star graphs) and readers of datasets."""

from __future__ import annotations

from collections.abc import Callable

from mathfactory.tasks.core.records import Problem


def distinct(n: int, split: str, candidate: Callable[[int], Problem], what: str) -> list[Problem]:
    """The first `n` candidates that belong to `split` with a question not seen before; `candidate(i)` draws one
    for the i-th place (a generator cycles its levels with i). A source too small for `n` fails, not loops."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    problems: list[Problem] = []
    seen: set[str] = set()
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 200 * n + 1000:
            raise ValueError(f"could not find {n} distinct {split} {what}")
        problem = candidate(len(problems))
        if problem.question in seen or problem.split != split:
            continue
        seen.add(problem.question)
        problems.append(problem)
    return problems
