"""Problems, Rollouts + Verdicts (+ StepCredit) -> training sets: SFT / RFT rows and preference pairs.

Every builder returns `Built(rows, skipped)`: `skipped` counts the input records that became no row, each under
the first reason that kept it out. Shared reasons, counted by every rollout builder:

- `no_verdict`, `not_train` (rollouts of test problems never enter a training set),
- `truncated`: a correct rollout that hit the length limit (finish_reason "length"); its text is not a whole
  solution, so it is never a chosen side,
- `no_answer`, `unparseable`, `timeout`: only `wrong` rollouts are rejected sides. A missing or unparseable answer
  is mostly a format or length failure, not the reasoning error per-step credit is about, and `timeout` means the
  grader could not decide, so the rollout may even be right.

The chosen side of a pair comes from `chosen` (CHOSEN): `policy`, the problem's own correct rollouts; `reference`,
its reference solution (D_syn, written by the capable model that pi_sft learned from: Setlur et al.'s per-step DPO
pairs the learner's negatives with these positives, so a problem the learner never solves still yields pairs);
`both`, either. Every pair records its chosen side's source: rollout, reference, or continuation (sampled from the
prefix before the pit during credit, Self-Explore's form).

Rollouts are grouped by (problem_id, prompt), so the two sides of a pair always share their prompt (caps "per
problem" are per group; the sample stage writes one prompt per problem), and sorted by rollout_id, so the order
the lake returns them in never matters. Random choices draw from a `random.Random` seeded by the builder, `seed`
and the group: one problem's draws never depend on another's.
"""

from __future__ import annotations

import random
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from mathfactory.tasks.core import formatting
from mathfactory.tasks.core.edits import edit_distance
from mathfactory.tasks.core.records import (
    PreferencePair,
    Problem,
    Rollout,
    SFTExample,
    StepCredit,
    Verdict,
    stable_id,
)

T = TypeVar("T")
DEDUPS = ("equations", "edit_distance")
CHOSEN = ("policy", "reference", "both")


@dataclass(frozen=True)
class Built(Generic[T]):
    rows: list[T]
    skipped: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)  # what a builder notes of its rows (e.g. pit_final)


@dataclass(frozen=True)
class Side:
    """A chosen side: its text, the rollout it is if it is a whole rollout of the policy, and its source."""

    text: str
    rollout_id: str | None
    source: str  # rollout | reference | continuation


@dataclass
class _Group:
    correct: list[Rollout] = field(default_factory=list)  # the policy's verified solutions
    wrong: list[Rollout] = field(default_factory=list)  # rejected sides
    reference: str | None = None  # the problem's reference completion (D_syn), if given

    def chosen(self, chosen: str) -> list[Side]:
        """The group's chosen sides under `chosen` (CHOSEN), the policy's rollouts first."""
        if chosen not in CHOSEN:
            raise ValueError(f"chosen must be one of {CHOSEN}, got {chosen!r}")
        sides = [Side(r.completion, r.rollout_id, "rollout") for r in self.correct] if chosen != "reference" else []
        if chosen != "policy" and self.reference:
            sides.append(Side(self.reference, None, "reference"))
        return sides


def references(problems: Iterable[Problem]) -> dict[str, str]:
    """problem_id -> its reference solution as a completion (the D_syn text pi_sft learned), for chosen sides."""
    return {p.problem_id: formatting.completion(p.solution) for p in problems if p.solution.strip()}


def _groups(rollouts: Iterable[Rollout], verdicts: Iterable[Verdict], skipped: Counter[str],
            refs: Mapping[str, str] | None = None):
    """(problem_id, prompt) -> usable rollouts (and the reference), in key order; the others are counted in
    `skipped`."""
    reason_of = {v.rollout_id: v.reason for v in verdicts}
    groups: dict[tuple[str, str], _Group] = defaultdict(_Group)
    for r in rollouts:
        reason = reason_of.get(r.rollout_id, "no_verdict")
        if r.split != "train":
            reason = "not_train"
        elif reason == "correct" and r.finish_reason == "length":
            reason = "truncated"
        if reason == "correct":
            groups[r.problem_id, r.prompt].correct.append(r)
        elif reason == "wrong":
            groups[r.problem_id, r.prompt].wrong.append(r)
        else:
            skipped[reason] += 1
    for (problem_id, _), g in groups.items():
        g.correct.sort(key=lambda r: r.rollout_id)
        g.wrong.sort(key=lambda r: r.rollout_id)
        g.reference = (refs or {}).get(problem_id)
    return sorted(groups.items())


def _rng(kind: str, seed: int, key: tuple[str, str]) -> random.Random:
    return random.Random(stable_id(kind, seed, *key))


# --- SFT and RFT ------------------------------------------------------------------------------------------


def sft_examples(problems: Iterable[Problem]) -> Built[SFTExample]:
    """Reference solutions as prompt/completion rows (D_syn); skips `not_train`, `no_solution`."""
    rows, skipped = [], Counter()
    for p in problems:
        if p.split != "train":
            skipped["not_train"] += 1
        elif not p.solution.strip():
            skipped["no_solution"] += 1
        else:
            rows.append(
                SFTExample(
                    stable_id("sft", p.problem_id),
                    "sft",
                    p.problem_id,
                    None,
                    formatting.prompt(p.question),
                    formatting.completion(p.solution),
                )
            )
    return Built(rows, skipped)


# An equation is arithmetic = number: the inside of a calculator annotation `<<48/2=24>>` or a bare `48 / 2 = 24`.
# In `48/2=<<48/2=24>>24` only the annotation matches (a number must follow `=`), so each step counts once.
_NUM = r"\(*\s*\d[\d,]*(?:\.\d+)?\s*\)*"
_EQUATION = re.compile(
    rf"({_NUM}(?:\s*(?:\*\*|//|[-+*/×÷^])\s*{_NUM})+)\s*=\s*(-?\s*\d[\d,]*(?:\.\d+)?(?:/\d+)?)"
)
_SPACE_OR_COMMA = re.compile(r"[\s,]")


def equations(text: str) -> tuple[str, ...]:
    """The solution's equations in order, spaces and thousands separators removed: `("5+3=8", "8-2=6")`."""
    return tuple(_SPACE_OR_COMMA.sub("", f"{lhs}={rhs}") for lhs, rhs in _EQUATION.findall(text))


def _equation_key(text: str) -> tuple[str, ...]:
    # A solution without equations (prose, LaTeX) is keyed by its whitespace-normalised text instead: keyed by
    # its empty equation list, every such solution of a problem would count as one.
    return equations(text) or ("", " ".join(text.split()))


def _same(a: str, b: str, dedup: str, threshold: float) -> bool:
    if dedup == "equations":
        return _equation_key(a) == _equation_key(b)
    return edit_distance(a, b) < threshold


def rft(
    rollouts: Iterable[Rollout],
    verdicts: Iterable[Verdict],
    k: int,
    dedup: str = "equations",
    threshold: float = 0.1,
    seed: int = 0,
) -> Built[SFTExample]:
    """RFT positives: up to `k` distinct correct rollouts per problem, drawn in a seeded random order.

    `dedup="equations"` drops a solution whose equation sequence equals a kept one's (Yuan et al. 2023);
    `"edit_distance"` drops one whose normalized character edit distance to a kept one is below `threshold`.
    Skips: the shared reasons, `duplicate`, `over_k`."""
    if dedup not in DEDUPS:
        raise ValueError(f"dedup must be one of {DEDUPS}, got {dedup!r}")
    rows, skipped = [], Counter()
    for key, g in _groups(rollouts, verdicts, skipped):
        positives = list(g.correct)
        _rng("rft", seed, key).shuffle(positives)
        kept: list[Rollout] = []
        for r in positives:
            if len(kept) == k:
                skipped["over_k"] += 1
            elif any(_same(r.completion, o.completion, dedup, threshold) for o in kept):
                skipped["duplicate"] += 1
            else:
                kept.append(r)
        rows += [
            SFTExample(
                stable_id("rft", r.rollout_id), "rft", r.problem_id, r.rollout_id, r.prompt, r.completion
            )
            for r in kept
        ]
    return Built(rows, skipped)


def _min_advantages(credits: Iterable[StepCredit]) -> dict[str, float]:
    """rollout_id -> min_i A_i over the steps whose advantage is known."""
    low: dict[str, float] = {}
    for c in credits:
        if c.step_index >= 1 and c.advantage is not None:
            low[c.rollout_id] = min(c.advantage, low.get(c.rollout_id, c.advantage))
    return low


def rft_advantage(positives: Iterable[SFTExample], credits: Iterable[StepCredit]) -> Built[SFTExample]:
    """Advantage-filtered RFT (Setlur et al.): `rft(...)` rows minus those whose minimum step advantage is below
    the median of the positives that have one, i.e. the bottom half, whose spurious steps luck carried through.

    Ties at the median are kept, so at least half of the judged positives stay. A positive without any step
    advantage (no credit rows, or only steps a `binary`/`scan` search visited without their predecessor) cannot
    be judged and is dropped as `no_credit`: the set must hold only positives judged clean, and the count shows how
    much credit covered. Skips: `no_credit`, `low_advantage`."""
    positives = list(positives)
    low = _min_advantages(credits)
    judged = [low[p.rollout_id] for p in positives if p.rollout_id in low]
    median = statistics.median(judged) if judged else 0.0
    rows, skipped = [], Counter()
    for p in positives:
        if p.rollout_id not in low:
            skipped["no_credit"] += 1
        elif low[p.rollout_id] < median:
            skipped["low_advantage"] += 1
        else:
            rows.append(replace(p, example_id=stable_id("rft_advantage", p.rollout_id), kind="rft_advantage"))
    return Built(rows, skipped)


# --- preference pairs -------------------------------------------------------------------------------------


def _both_sides(rollouts: Iterable[Rollout], verdicts: Iterable[Verdict], skipped: Counter[str], chosen: str,
                refs: Mapping[str, str] | None):
    """(key, chosen sides, wrong rollouts) of the groups that have both; the others' rollouts are counted as
    `no_rejected` / `no_chosen`."""
    for key, g in _groups(rollouts, verdicts, skipped, refs):
        sides = g.chosen(chosen)
        if sides and g.wrong:
            yield key, sides, g.wrong
        else:
            skipped["no_rejected" if sides else "no_chosen"] += len(g.correct) + len(g.wrong)


def outcome_pairs(rollouts: Iterable[Rollout], verdicts: Iterable[Verdict], n: int, seed: int = 0,
                  chosen: str = "policy", refs: Mapping[str, str] | None = None) -> Built[PreferencePair]:
    """Naive outcome DPO (the control): up to `n` random (chosen side, wrong) pairs per problem, without repeats.

    Skips: the shared reasons; `no_chosen` / `no_rejected` count the rollouts of problems lacking the other side."""
    rows, skipped = [], Counter()
    for key, sides, wrong in _both_sides(rollouts, verdicts, skipped, chosen, refs):
        candidates = [(c, w) for c in sides for w in wrong]
        rows += [
            _pair("outcome", c, w)
            for c, w in _rng("outcome", seed, key).sample(candidates, min(n, len(candidates)))
        ]
    return Built(rows, skipped)


def _pair(kind: str, chosen: Side, rejected: Rollout, pit: StepCredit | None = None) -> PreferencePair:
    pit_index = None if pit is None else pit.step_index
    text = rejected.completion if pit is None else rejected.completion[: pit.end]
    return PreferencePair(
        stable_id(kind, chosen.rollout_id or chosen.source, rejected.rollout_id, pit_index),
        kind,
        rejected.problem_id,
        rejected.prompt,
        chosen.text,
        text,
        chosen.rollout_id,
        rejected.rollout_id,
        pit_index,
        chosen.source,
    )


def edit_distance_pairs(rollouts: Iterable[Rollout], verdicts: Iterable[Verdict], unit: str = "char",
                        chosen: str = "policy", refs: Mapping[str, str] | None = None) -> Built[PreferencePair]:
    """Each chosen side paired with the wrong rollout of its problem most distant from it (ties: lowest id).

    Skips: the shared reasons; `no_rejected` / `no_chosen` count the rollouts of problems lacking the other side."""
    rows, skipped = [], Counter()
    for _, sides, wrong in _both_sides(rollouts, verdicts, skipped, chosen, refs):
        for c in sides:
            w = max(wrong, key=lambda r, c=c: edit_distance(c.text, r.completion, unit))
            rows.append(_pair("edit_distance", c, w))
    return Built(rows, skipped)


def _credit_by_step(credits: Iterable[StepCredit]) -> dict[str, dict[int, StepCredit]]:
    table: dict[str, dict[int, StepCredit]] = defaultdict(dict)
    for c in credits:
        table[c.rollout_id][c.step_index] = c
    return table


def _pit(steps: dict[int, StepCredit]) -> StepCredit | None:
    pits = [c for c in steps.values() if c.is_pit and c.step_index >= 1]
    return min(pits, key=lambda c: c.step_index, default=None)


def step_cut(rollouts: Iterable[Rollout], verdicts: Iterable[Verdict], credits: Iterable[StepCredit], seed: int = 0,
             chosen: str = "policy", refs: Mapping[str, str] | None = None) -> Built[PreferencePair]:
    """Per-step DPO pairs in Setlur et al.'s form: (question, a random chosen side of the problem, the wrong
    rollout cut after its pit, steps 1..pit). One pair per wrong rollout; `counts["pit_final"]`: pairs whose pit
    is the last step, so their rejected side is the whole wrong solution (a naive pair in disguise).

    Skips: the shared reasons; for wrong rollouts `no_credit`, `no_pit`, `no_chosen` (the problem has no chosen
    side under `chosen`)."""
    table = _credit_by_step(credits)
    rows, skipped, counts = [], Counter(), Counter()
    for key, g in _groups(rollouts, verdicts, skipped, refs):
        rng, sides = _rng("step_cut", seed, key), g.chosen(chosen)
        for w in g.wrong:
            steps = table.get(w.rollout_id, {})
            pit = _pit(steps)
            if not steps:
                skipped["no_credit"] += 1
            elif pit is None:
                skipped["no_pit"] += 1
            elif not sides:
                skipped["no_chosen"] += 1
            else:
                rows.append(_pair("step_cut", rng.choice(sides), w, pit))
                counts["pit_final"] += pit.end >= len(w.completion)
    return Built(rows, skipped, counts)


def step_prefix(rollouts: Iterable[Rollout], verdicts: Iterable[Verdict], credits: Iterable[StepCredit],
                chosen: str = "policy", refs: Mapping[str, str] | None = None) -> Built[PreferencePair]:
    """Per-step DPO pairs in Self-Explore's form: prompt = question + the steps before the pit, chosen = a
    verified continuation sampled from that prefix during credit, rejected = the pit step. One per wrong rollout.

    From the empty prefix (pit at step 1) a whole solution is a continuation too, so where none was sampled the
    problem's first chosen side under `chosen` stands in. A longer prefix is the rollout's own: neither the
    reference nor another rollout continues it, so without a verified continuation there is no pair.

    Skips: the shared reasons; for wrong rollouts `no_credit`, `no_pit`, `no_prefix_row` (credit never visited
    the step before the pit), `no_correct_continuation` (none of its continuations verified)."""
    table = _credit_by_step(credits)
    rows, skipped, counts = [], Counter(), Counter()
    for _, g in _groups(rollouts, verdicts, skipped, refs):
        sides = g.chosen(chosen)
        for w in g.wrong:
            steps = table.get(w.rollout_id, {})
            pit = _pit(steps)
            before = steps.get(pit.step_index - 1) if pit else None
            if not steps:
                skipped["no_credit"] += 1
            elif pit is None:
                skipped["no_pit"] += 1
            elif before is None:
                skipped["no_prefix_row"] += 1
            elif (side := _prefix_side(before, sides)) is None:
                skipped["no_correct_continuation"] += 1
            else:
                rows.append(_prefix_pair(w, before, pit, side))
                counts["pit_final"] += pit.end >= len(w.completion)
    return Built(rows, skipped, counts)


def _prefix_side(before: StepCredit, sides: list[Side]) -> Side | None:
    if before.correct_continuation is not None:
        return Side(before.correct_continuation, None, "continuation")
    return sides[0] if before.step_index == 0 and sides else None


def _prefix_pair(w: Rollout, before: StepCredit, pit: StepCredit, chosen: Side) -> PreferencePair:
    return PreferencePair(
        stable_id("step_prefix", w.rollout_id, pit.step_index),
        "step_prefix",
        w.problem_id,
        w.prompt + w.completion[: before.end],
        chosen.text,
        w.completion[before.end : pit.end],
        chosen.rollout_id,
        w.rollout_id,
        pit.step_index,
        chosen.source,
    )
