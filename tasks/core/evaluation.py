"""EvalResult rows -> majority votes, Wilson intervals and one model's pass@1 / maj@k summary."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

from mathfactory.tasks.core.grading import answer_key
from mathfactory.tasks.core.records import EvalResult

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile
DIGITS = 6  # kept in markers: enough that a report's "44.4%" is not 0.44448 rounded twice


def majority(answers: Sequence[str | None]) -> str | None:
    """The most common answer, compared as the grader compares numbers (`answer_key`), returned as first written;
    None answers do not vote, and a tie goes to the answer seen first."""
    keys = [None if a is None else answer_key(a) for a in answers]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(a for a, k in zip(answers, keys, strict=True) if k is not None and counts[k] == top)


def vote(answers: Sequence[str | None], correct: Sequence[bool]) -> tuple[str | None, bool]:
    """The majority answer and whether it is right. It is one of the samples, so it is right iff a sample with
    that answer was graded correct: the judge's verdict (LaTeX included) is reused, never re-derived."""
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} grades")
    top = majority(answers)
    if top is None:
        return None, False
    key = answer_key(top)
    return top, any(c for a, c in zip(answers, correct, strict=True) if a is not None and answer_key(a) == key)


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default). Unlike p +- z*se it stays in [0, 1] and
    is not empty at 0/n or n/n, which evaluation sets of a few dozen problems hit."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need n >= 1 and 0 <= successes <= n, got {successes}/{n}")
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0/n and n/n the bound is exactly 0 or 1; floating point would leave 1e-17 off it.
    return (0.0 if successes == 0 else center - half), (1.0 if successes == n else center + half)


def _rate(successes: int, n: int) -> float | None:
    return round(successes / n, DIGITS) if n else None


def _ci(successes: int, n: int) -> list[float] | None:
    return [round(b, DIGITS) for b in wilson(successes, n)] if n else None


def summarize(rows: Iterable[EvalResult]) -> dict:
    """n, k, pass@1 (greedy) and maj@k with their 95 % Wilson intervals, the mean accuracy of single samples,
    and n / pass@1 / maj@k per education level (in order of first appearance). Rates are None with no rows."""
    rows = list(rows)
    greedy, major = sum(r.greedy_correct for r in rows), sum(r.majority_correct for r in rows)
    samples = sum(len(r.sampled_predicted) for r in rows)
    levels: dict[str, list[EvalResult]] = {}
    for r in rows:
        levels.setdefault(r.level, []).append(r)
    return {
        "n": len(rows),
        "k": rows[0].k if rows else None,
        "pass@1": _rate(greedy, len(rows)),
        "pass@1_ci": _ci(greedy, len(rows)),
        # k = 0 (greedy only): there was no vote, so maj@k is unknown, not 0.
        "maj@k": _rate(major, len(rows)) if samples else None,
        "maj@k_ci": _ci(major, len(rows)) if samples else None,
        "sampled_accuracy": _rate(sum(r.n_sampled_correct for r in rows), samples),
        "by_level": {
            level: {"n": len(group), "pass@1": _rate(sum(r.greedy_correct for r in group), len(group)),
                    "maj@k": _rate(sum(r.majority_correct for r in group), len(group)) if samples else None}
            for level, group in levels.items()
        },
    }
