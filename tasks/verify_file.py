"""A user's JSONL/Parquet file of model outputs -> graded rows (`mathfactory verify`).

Imports only what grading needs (no prefect, torch or Ray), so `mathfactory verify` starts in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mathfactory.tasks.core.grading import grade_answer
from mathfactory.tasks.judge import Grading
from mathfactory.tasks.storage import iter_file_rows

SCALAR = (str, int, float)  # what a gold or predicted cell may hold


def grade_file(file: str, gold: str, pred: str, grading: Grading) -> Iterator[tuple[str, dict[str, Any], str | None]]:
    """Every row of a user's JSONL/Parquet file with `correct`, `reason` and `predicted` added, as (origin, row,
    problem): a row that cannot be graded (bad line, no usable column) gets reason `unparseable` and its problem.

    Plain numbers are graded here (about a microsecond a row: reading the file costs more); the rest goes to the
    judge's math-verify workers, each comparison under `grading.timeout_s`."""
    graded: list[tuple[str, dict | None, str | None]] = []
    pairs: list[tuple[str, str]] = []
    for origin, row, error in iter_file_rows(file):
        if error is None and (missing := [c for c in (gold, pred) if not isinstance(row.get(c), SCALAR)]):
            error = f"no usable {' or '.join(missing)} column"
        graded.append((origin, row, error))
        if error is None:
            pairs.append((str(row[gold]), str(row[pred])))
    # No calculator check (its errors are not reported here): it would cost several times the grading itself.
    fast = [grade_answer(g, p) for g, p in pairs]
    if latex := [i for i, g in enumerate(fast) if g is None]:
        with grading.judge() as judge:
            for i, g in zip(latex, judge.grade_many(pairs[i] for i in latex), strict=True):
                fast[i] = (g.correct, g.reason, g.predicted)
    grades = iter(fast)
    for origin, row, error in graded:
        if error is not None:
            yield origin, {**(row or {}), "correct": False, "reason": "unparseable", "predicted": None}, error
        else:
            correct, reason, predicted = next(grades)
            yield origin, {**row, "correct": correct, "reason": reason, "predicted": predicted}, None
