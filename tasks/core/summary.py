"""Verdicts -> tallies: counts by reason, accuracy by split/stage, and problems with both right and wrong samples."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

from mathfactory.tasks.core.records import VERDICT_REASONS, Verdict


def tally(verdicts: Iterable[Verdict]) -> dict:
    """Counts for one shard. All samples of a problem are in one shard, so `mixed` adds up across shards."""
    reasons: Counter[str] = Counter()
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_problem: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for v in verdicts:
        reasons[v.reason] += 1
        for counts in (groups[f"{v.split}/{v.level}"], per_problem[v.problem_id]):
            counts[0] += v.correct
            counts[1] += 1
    return {
        "reasons": {r: reasons[r] for r in VERDICT_REASONS},
        "groups": dict(groups),
        "problems": len(per_problem),
        "mixed": sum(0 < c < n for c, n in per_problem.values()),  # credit assignment needs these
    }


def merge(tallies: Iterable[dict]) -> dict:
    out = {"reasons": dict.fromkeys(VERDICT_REASONS, 0), "groups": {}, "problems": 0, "mixed": 0}
    for t in tallies:
        for r, n in t["reasons"].items():
            out["reasons"][r] += n
        for g, (c, n) in t["groups"].items():
            prev = out["groups"].get(g, [0, 0])
            out["groups"][g] = [prev[0] + c, prev[1] + n]
        out["problems"] += t["problems"]
        out["mixed"] += t["mixed"]
    out["groups"] = dict(sorted(out["groups"].items()))
    return out


def accuracy(groups: dict[str, list[int]]) -> dict[str, float]:
    return {g: round(c / n, 4) for g, (c, n) in groups.items() if n}
