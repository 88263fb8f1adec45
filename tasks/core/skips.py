"""What an optional stage needs (a full batch of rows, a split to evaluate on) -> why it is skipped. Pure.

A skip is not a failure: the stage's inputs cannot make it, the run says so (with the counts) and goes on. A
trainer that fails on a set it could train on is still a failure.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Skip:
    """Why a stage was not run; `rows` and `minimum` when it was for want of rows."""

    reason: str
    rows: int | None = None
    minimum: int | None = None


def too_few_rows(dataset: str, rows: int, minimum: int) -> Skip | None:
    """A training set smaller than one batch cannot make a single optimizer step."""
    if rows < minimum:
        return Skip(f"{dataset} has {rows} rows, fewer than one batch of {minimum}", rows, minimum)
    return None


def no_split(split: str, sizes: dict[str, int]) -> Skip | None:
    """Evaluation needs problems in its split (seed files, e.g. a night's, have no test split)."""
    if sizes.get(split, 0) == 0:
        has = ", ".join(f"{n} {s}" for s, n in sorted(sizes.items()) if n) or "none"
        return Skip(f"no {split} problems to evaluate on (the run's problems: {has})", 0, 1)
    return None


def switched_off(what: str, switch: str) -> Skip:
    """An opt-in step its run did not opt into."""
    return Skip(f"{what} is opt-in and off for this run ({switch})")
