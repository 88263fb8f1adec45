"""Verified rollouts split into steps + sampled continuations -> StepCredit rows (Monte-Carlo Q-values).

Q_i = the fraction of continuations from (question, y_1..y_i) that verify (Setlur et al. 2024, eq. 1). Q_0 is the
question's success rate over the rollouts already sampled for it, and Q_n is the rollout's own verdict, so only
steps 1..n-1 are sampled. Three strategies choose which steps to sample:

- linear (Math-Shepherd): every step, M continuations each.
- scan (Self-Explore): steps 1, 2, ... until the first one with Q = 0.
- binary (OmegaPRM): binary search for the first Q = 0 step between lo (Q > 0) and hi (Q = 0).

scan and binary only need to know whether Q > 0, so they probe a step in rounds and stop at the first verified
continuation; their Q on a Q > 0 step is that early-stopped estimate, while a Q = 0 step always gets all M. A
correct rollout has no pit (pits are defined on incorrect ones), so scan and binary sample nothing for it and
it keeps only its Q_0 and Q_n rows; linear labels it in full (its advantages feed advantage-filtered RFT).

Each strategy is a generator (a labeler) that yields requests [(step_index, k)] and receives the continuations
for each; `label_all` advances every rollout's labeler in rounds with ONE `sample` call per round, so the
stage can batch the prefixes of many rollouts into one engine call.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Generator, Hashable, Mapping, Sequence
from dataclasses import dataclass

from mathfactory.tasks.core.records import StepCredit, StepwiseExample
from mathfactory.tasks.core.steps import Step

STRATEGIES = ("linear", "scan", "binary")
REASONS = ("no_steps", "too_many_steps", "unsolved_question")  # why a rollout was not credited


@dataclass(frozen=True)
class Continuation:
    correct: bool  # the verifier's verdict on the prefix + this text
    text: str


@dataclass(frozen=True)
class Target:
    """A verified rollout to credit, with its question's success rate (Q_0 = n_solved / n_sampled)."""

    rollout_id: str
    problem_id: str
    steps: tuple[Step, ...]
    correct: bool  # the verdict: Q_n
    n_solved: int  # rollouts of the question that verified
    n_sampled: int  # rollouts of the question


Request = tuple[
    int, int
]  # (step_index, k): k more continuations from the prefix ending after step step_index
Labeler = Generator[list[Request], list[list[Continuation]], dict[int, list[Continuation]]]
Sampler = Callable[[list[tuple[Hashable, int, int]]], list[list[Continuation]]]


# --- arithmetic ------------------------------------------------------------------------------------------


def best_of_k(q: float, k: int = 1) -> float:
    """Q^BoK = 1 - (1 - Q)^K: the chance that the best of K continuations verifies (K = 1 is Q itself)."""
    if k < 1:
        raise ValueError(f"K must be >= 1, got {k}")
    return 1.0 - (1.0 - q) ** k


def advantages(q_values: Mapping[int, float]) -> dict[int, float | None]:
    """A_i = Q_i - Q_{i-1}, None where step i-1 was not labelled."""
    return {i: (q - q_values[i - 1] if i - 1 in q_values else None) for i, q in q_values.items()}


def first_pit(q_values: Mapping[int, float]) -> int | None:
    """The first step (i >= 1) with the lowest Q among labelled steps (Setlur et al.)."""
    steps = sorted(i for i in q_values if i >= 1)
    return min(steps, key=lambda i: q_values[i]) if steps else None  # min keeps the first of equals


def first_zero(q_values: Mapping[int, float]) -> int | None:
    """The first step (i >= 1) with Q = 0 (Self-Explore's pit)."""
    return next((i for i in sorted(q_values) if i >= 1 and q_values[i] == 0), None)


# --- labelers --------------------------------------------------------------------------------------------


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
    lo, hi = 0, n  # Q_lo > 0 (Q_0, checked by the caller), Q_hi = 0 (the incorrect verdict)
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


# --- rows ------------------------------------------------------------------------------------------------


def uncreditable(target: Target, max_steps: int) -> str | None:
    """Why the rollout cannot be credited (one of REASONS), or None."""
    if not target.steps:
        return "no_steps"
    if len(target.steps) > max_steps:
        return "too_many_steps"
    if target.n_solved == 0:  # no correct continuation is to be had, and binary search needs Q_0 > 0
        return "unsolved_question"
    return None


def credit_rows(
    target: Target, seen: Mapping[int, list[Continuation]], strategy: str, k: int = 1
) -> list[StepCredit]:
    """Rows for step 0, every visited step and step n, with Best-of-K Q-values, advantages and the pit."""
    n = len(target.steps)
    raw = {
        0: target.n_solved / target.n_sampled,
        **{i: sum(c.correct for c in cs) / len(cs) for i, cs in seen.items()},
    }
    raw[n] = float(target.correct)
    q = {i: best_of_k(raw[i], k) for i in sorted(raw)}
    adv = advantages(q)
    pit = None if target.correct else first_pit(q)
    rows = []
    for i in q:
        step = target.steps[i - 1] if i else None
        cs = seen.get(i, [])
        rows.append(
            StepCredit(
                rollout_id=target.rollout_id,
                problem_id=target.problem_id,
                step_index=i,
                step_text=step.text if step else "",
                end=step.end if step else 0,
                q=q[i],
                advantage=adv[i],
                n_continuations=target.n_sampled if i == 0 else len(cs),
                strategy=strategy,
                is_pit=i == pit,
                correct_continuation=next((c.text for c in cs if c.correct), None),
            )
        )
    return rows


def credit(
    targets: Sequence[Target],
    sample: Sampler,
    *,
    strategy: str = "binary",
    m: int = 8,
    k: int = 1,
    round_size: int = 2,
    max_steps: int = 16,
) -> tuple[list[StepCredit], Counter]:
    """StepCredit rows for every creditable target (sampling through `sample`, keyed by rollout_id) and a count
    of the reasons the others were skipped."""
    reasons: Counter = Counter()
    labelers = {}
    for t in targets:
        why = uncreditable(t, max_steps)
        if why:
            reasons[why] += 1
        elif t.rollout_id in labelers:
            raise ValueError(f"rollout {t.rollout_id} given twice")
        else:
            labelers[t.rollout_id] = labeler(strategy, len(t.steps), t.correct, m=m, round_size=round_size)
    seen = label_all(labelers, sample)
    rows = [
        r for t in targets if t.rollout_id in seen for r in credit_rows(t, seen[t.rollout_id], strategy, k)
    ]
    return rows, reasons


def stepwise_example(prompt: str, steps: Sequence[Step], rows: Sequence[StepCredit]) -> StepwiseExample:
    """The rollout as a TRL stepwise-supervision row: a step is good (True) iff it comes before the pit.

    Steps from the pit on are all False, as in PRM800K: once the solution has fallen in, later steps are not
    trusted even if they look right; and binary/scan never see them. A rollout without a pit is all True."""
    if not rows:
        raise ValueError("no StepCredit rows for this rollout")
    pit = next((r.step_index for r in rows if r.is_pit), len(steps) + 1)
    return StepwiseExample(
        rollout_id=rows[0].rollout_id,
        problem_id=rows[0].problem_id,
        prompt=prompt,
        completions=[s.text for s in steps],
        labels=[i < pit for i in range(1, len(steps) + 1)],
    )
