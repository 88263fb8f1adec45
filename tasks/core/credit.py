"""Verified rollouts split into steps + sampled continuations -> StepCredit rows (Monte-Carlo Q-values).

Q_i = P(a continuation from (question, y_1..y_i) verifies) (Setlur et al. 2024, eq. 1), estimated from M sampled
continuations; under a Best-of-K policy, the chance that the best of K verifies, estimated without bias from c
successes in M draws as 1 - C(M - c, K) / C(M, K). Q_0 comes from the question's own n rollouts and Q_n is the
rollout's verdict, so only steps 1..n-1 are sampled. Three strategies choose which steps to sample:

- linear (Math-Shepherd): every step, M continuations each: a Q at every step.
- scan (Self-Explore): steps 1, 2, ... until the first one none of whose M continuations verifies.
- binary (OmegaPRM): binary search for such a step between lo (Q > 0) and hi (Q = 0, the wrong verdict).

scan and binary only need to know whether Q > 0, so they probe a step in rounds and stop at the first verified
continuation. A probe stopped early is not an estimate of Q: its row has q = None and keeps what it learned,
"Q > 0, known from j draws", as n_correct >= 1 of n_continuations = j. Only a step that got all M draws has a q,
and an advantage A_i = Q_i - Q_{i-1} is taken only between two steps that have one.

Every wrong rollout with steps is credited, those of questions the policy never solved included (unless the
stage's `unsolved` option leaves them out): their Q_0 = 0 is an estimate, not an error. linear and scan do not
need Q_0 > 0; binary search assumes it (every question has a reference solution, so it is solvable) and ends at
step 1 when no probed step succeeds.

The pit of a wrong rollout, by rule (`PIT_RULES`):
- first_zero: the first step none of whose continuations verified (Self-Explore's first pit; Setlur et al.'s
  "first step with the lowest Q", since Q_n = 0). When every sampled step kept some chance, it is step n, the
  whole solution: such pairs are naive outcome pairs in disguise, so the stage counts them (`pit_final`).
- max_drop: the step with the most negative advantage (the first of equals): the step that lost the most
  chance, the advantage view of Setlur et al. It needs Q at consecutive steps, so linear credit only.
A correct rollout has no pit; scan and binary sample nothing for it, linear labels it in full (its advantages
feed advantage-filtered RFT).

The strategies themselves, as labelers batched by `label_all`, are tasks/core/strategies.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from math import comb

from mathfactory.tasks.core.records import StepCredit, StepwiseExample
from mathfactory.tasks.core.steps import Step
from mathfactory.tasks.core.strategies import STRATEGIES, Continuation, Sampler, label_all, labeler

PIT_RULES = ("first_zero", "max_drop")
NOT_CREDITED = ("no_steps", "too_many_steps")  # why a rollout was not credited


@dataclass(frozen=True)
class Target:
    """A verified rollout to credit, with its question's success rate (Q_0 = n_solved / n_sampled)."""

    rollout_id: str
    problem_id: str
    steps: tuple[Step, ...]
    correct: bool  # the verdict: Q_n
    n_solved: int  # rollouts of the question that verified
    n_sampled: int  # rollouts of the question


# --- arithmetic ------------------------------------------------------------------------------------------


def best_of_k(c: int, m: int, k: int = 1) -> float:
    """The unbiased estimate of P(the best of K continuations verifies) from c verified of m drawn:
    1 - C(m - c, K) / C(m, K) (Chen et al. 2021's pass@k). K = 1 is the plain Monte-Carlo Q, c / m."""
    if k < 1 or m < k or not 0 <= c <= m:
        raise ValueError(f"best of K needs 1 <= K <= m and 0 <= c <= m, got K={k}, m={m}, c={c}")
    return 1.0 - comb(m - c, k) / comb(m, k)


@dataclass(frozen=True)
class Draws:
    """What one prefix's continuations showed: `correct` of `n` verified; `full` when n is the whole budget."""

    n: int
    correct: int
    full: bool

    def q(self, k: int) -> float | None:
        """The Best-of-K Q estimate, or None where the draws are no estimate (a probe stopped early, or fewer
        draws than K)."""
        return best_of_k(self.correct, self.n, k) if self.full and self.n >= k else None


def advantages(q_values: Mapping[int, float | None]) -> dict[int, float | None]:
    """A_i = Q_i - Q_{i-1}, None unless both steps have an estimate."""
    return {i: q - q_values[i - 1] if q is not None and q_values.get(i - 1) is not None else None
            for i, q in q_values.items()}


def first_zero(correct: Mapping[int, int]) -> int | None:
    """The first step (i >= 1) none of whose draws verified, from step -> verified draws."""
    return next((i for i in sorted(correct) if i >= 1 and correct[i] == 0), None)


def max_drop(adv: Mapping[int, float | None]) -> int | None:
    """The step (i >= 1) with the most negative advantage, the first of equals; None if no advantage is known."""
    known = sorted(i for i, a in adv.items() if i >= 1 and a is not None)
    return min(known, key=lambda i: adv[i]) if known else None  # min keeps the first of equals


def repit(rows: Iterable[StepCredit], rule: str) -> list[StepCredit]:
    """The same credit with each wrong rollout's pit chosen by `rule` instead: the rows keep every step's verified
    draws (first_zero) and advantages (max_drop), so a second rule costs no sampling. Only linear credit has Q at
    consecutive steps, so max_drop of scan or binary rows is refused as `check` refuses it."""
    rows = list(rows)
    if rule == "max_drop" and any(r.strategy != "linear" for r in rows):
        raise ValueError("pit=max_drop needs linear credit (Q at consecutive steps)")
    by_rollout: dict[str, list[StepCredit]] = {}
    for r in rows:
        by_rollout.setdefault(r.rollout_id, []).append(r)
    out = []
    for steps in by_rollout.values():
        last = max(steps, key=lambda r: r.step_index)
        if last.q == 1.0:  # Q_n is the verdict: a correct rollout has no pit
            pit = None
        elif rule == "first_zero":
            pit = first_zero({r.step_index: r.n_correct for r in steps})
        else:
            pit = max_drop({r.step_index: r.advantage for r in steps})
        out += [replace(r, is_pit=r.step_index == pit) for r in steps]
    return out


# --- rows ------------------------------------------------------------------------------------------------


def uncreditable(target: Target, max_steps: int) -> str | None:
    """Why the rollout cannot be credited (one of NOT_CREDITED), or None."""
    if not target.steps:
        return "no_steps"
    if len(target.steps) > max_steps:
        return "too_many_steps"
    return None


def credit_rows(target: Target, seen: Mapping[int, list[Continuation]], strategy: str, *, m: int, k: int = 1,
                pit: str = "first_zero") -> list[StepCredit]:
    """Rows for step 0, every visited step and step n: Q where the draws are an estimate, advantages between two
    estimates, and the pit by rule `pit`."""
    n = len(target.steps)
    draws = {0: Draws(target.n_sampled, target.n_solved, True),
             **{i: Draws(len(cs), sum(c.correct for c in cs), len(cs) >= m) for i, cs in seen.items()},
             n: Draws(0, int(target.correct), True)}  # step n: the verdict, no continuations
    q = {i: draws[i].q(k) for i in sorted(draws)}
    q[n] = float(target.correct)  # the verdict is exact: the best of K copies of one answer is that answer
    adv = advantages(q)
    if target.correct:
        pit_index = None
    elif pit == "first_zero":
        pit_index = first_zero({i: d.correct for i, d in draws.items()})
    else:
        pit_index = max_drop(adv)
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
                n_continuations=draws[i].n,
                strategy=strategy,
                is_pit=i == pit_index,
                correct_continuation=next((c.text for c in cs if c.correct), None),
                n_correct=draws[i].correct,
            )
        )
    return rows


def check(strategy: str, pit: str, m: int, k: int) -> None:
    """Refuse settings under which Q or the pit is undefined."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if pit not in PIT_RULES:
        raise ValueError(f"pit must be one of {PIT_RULES}, got {pit!r}")
    if pit == "max_drop" and strategy != "linear":
        raise ValueError("pit=max_drop needs Q at consecutive steps, which only strategy=linear estimates "
                         f"(scan and binary stop probing a step at its first success); got strategy={strategy!r}")
    if k > m:
        raise ValueError(f"Best-of-K needs at least K continuations per step: k={k} > m={m}")


def credit(
    targets: Sequence[Target],
    sample: Sampler,
    *,
    strategy: str = "binary",
    m: int = 8,
    k: int = 1,
    round_size: int = 2,
    max_steps: int = 16,
    pit: str = "first_zero",
) -> tuple[list[StepCredit], Counter]:
    """StepCredit rows for every creditable target (sampling through `sample`, keyed by rollout_id) and a count
    of the reasons the others were skipped."""
    check(strategy, pit, m, k)
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
    rows = [r for t in targets if t.rollout_id in seen
            for r in credit_rows(t, seen[t.rollout_id], strategy, m=m, k=k, pit=pit)]
    return rows, reasons


TALLY = ("rollouts", "wrong", "unsolved", "pits", "pit_final", "continuations")


def tally(rows: Iterable[StepCredit]) -> dict[str, int]:
    """What a set of credit rows holds (TALLY): rollouts, the wrong ones (of which `unsolved`: of questions no
    rollout solved), pits, pits on the last step (`pit_final`: the whole solution), continuations drawn."""
    by_rollout: dict[str, dict[int, StepCredit]] = {}
    for r in rows:
        by_rollout.setdefault(r.rollout_id, {})[r.step_index] = r
    out = Counter(rollouts=len(by_rollout))
    for steps in by_rollout.values():
        last = steps[max(steps)]
        pits = [i for i, r in steps.items() if r.is_pit]
        out["continuations"] += sum(r.n_continuations for i, r in steps.items() if i)
        if last.q == 0:
            out["wrong"] += 1
            out["unsolved"] += 0 in steps and steps[0].n_correct == 0
        out["pits"] += len(pits)
        out["pit_final"] += pits == [max(steps)]
    return {k: out[k] for k in TALLY}


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
