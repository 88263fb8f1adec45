"""Stage `credit`: verified train rollouts + the policy -> StepCredit rows (Monte-Carlo Q per step, the first pit).

The pure part (strategies, Q arithmetic, batching rounds) is tasks/core/credit.py; this module binds it to the lake,
the generation engine and the judge. Every round of every rollout's labeler becomes one engine call, so the
continuations of many prefixes of many rollouts are sampled together and each prefix is prefilled once.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from mathfactory.tasks.core import credit as mc
from mathfactory.tasks.core import formatting
from mathfactory.tasks.core.records import Problem, ProblemKey, Rollout, StepCredit, Verdict, stable_id
from mathfactory.tasks.core.steps import split_steps, style_for
from mathfactory.tasks.core.strategies import Continuation
from mathfactory.tasks.engines import EngineOptions, TransformersOptions, load_engine, local_model
from mathfactory.tasks.engines.base import Engine, SamplingParams
from mathfactory.tasks.judge import Judge
from mathfactory.tasks.policy import POLICY, policy_dir
from mathfactory.tasks.problems import PROBLEMS
from mathfactory.tasks.sample import ROLLOUTS
from mathfactory.tasks.stage import Meter, Run, StageSpec, summed
from mathfactory.tasks.verify import VERDICTS

P = TypeVar("P", Problem, ProblemKey)


class CreditConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Literal["linear", "scan", "binary"] = Field(
        "binary", description="Which steps of an incorrect rollout get continuations: linear = every step "
        "(Math-Shepherd), scan = until the first Q=0 step (Self-Explore), binary = binary search for it (OmegaPRM).")
    positives: bool = Field(True, description="Also credit correct rollouts, every step (linear): "
                            "advantage-filtered RFT needs their per-step advantages.")
    m: int = Field(4, ge=1, description="Continuations per step prefix (M): 4 keeps the embedded default's credit "
                   "near two minutes on 2 cores; the gsm8k and math presets use 8.")
    k: int = Field(1, ge=1, description="Best-of-K: Q is the chance that the best of K continuations verifies, "
                   "estimated without bias from the M draws (needs K <= M). K = 1: the plain chance that the policy "
                   "itself finishes correctly from the prefix. Setlur et al. use K = 5.")
    pit: Literal["first_zero", "max_drop"] = Field(
        "first_zero", description="Which step of a wrong rollout is its pit: first_zero = the first step none of "
        "whose continuations verified, or the last step (Self-Explore; Setlur et al.'s first step with the lowest "
        "Q); max_drop = the step with the most negative advantage Q_i - Q_{i-1} (needs strategy=linear).")
    round_size: int = Field(2, ge=1, description="scan/binary: continuations per probe of a step; a probe stops "
                            "at the first verified one, so smaller rounds save continuations but take more rounds.")
    max_steps: int = Field(16, ge=1, description="Rollouts with more steps are not credited (counted).")
    unsolved: bool = Field(True, description="Also credit the wrong rollouts of questions none of the policy's "
                           "samples solved (Q_0 = 0). Their Q is mostly 0 from step 1, so their pit is step 1 by "
                           "construction; False keeps per-step credit to the questions with near-misses, where a "
                           "pit is a step the policy could have avoided (counted as not credited: `unsolved`).")
    problems: int | None = Field(64, ge=1, description="Credit the rollouts of the first N train problems only "
                                 "(None: all): credit costs ~M continuations per step and rollout. Every training "
                                 "set built from the policy's samples is restricted to these same problems.")
    style: Literal["auto", "lines", "math"] = Field(
        "auto", description="Step splitting: lines (GSM8K/toy), math (LaTeX prose), auto = by problem source.")
    engine: EngineOptions = Field(default_factory=TransformersOptions, description="Backend for continuations.")
    temperature: float = Field(0.8, gt=0, description="Continuation sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(320, ge=1, description="Generation budget per continuation.")
    shards: int = Field(2, ge=1, description="Independent tasks the stage is split into (by problem).")

    @model_validator(mode="after")
    def _defined(self) -> CreditConfig:
        mc.check(self.strategy, self.pit, self.m, self.k)
        return self


def shard_of(problem_id: str, shards: int) -> int:
    return int(stable_id("credit-shard", problem_id), 16) % shards


def targets(rollouts: list[Rollout], verdicts: dict[str, Verdict], sources: dict[str, str],
            cfg: CreditConfig) -> list[mc.Target]:
    """Verified train rollouts as credit targets; Q_0 from all rollouts of the same question."""
    solved, sampled = Counter(), Counter()
    for r in rollouts:
        sampled[r.problem_id] += 1
        solved[r.problem_id] += verdicts[r.rollout_id].correct
    return [mc.Target(r.rollout_id, r.problem_id, tuple(split_steps(r.completion, style_for(cfg.style,
                                                                                              sources[r.problem_id]))),
                      verdicts[r.rollout_id].correct, solved[r.problem_id], sampled[r.problem_id])
            for r in rollouts]


def covered(problems: Iterable[P], limit: int | None) -> Iterator[P]:
    """The train problems credit covers: the first `limit` of the run's (all for None). Every training set built
    from the policy's samples comes from these same problems."""
    return itertools.islice((p for p in problems if p.split == "train"), limit)


def shard_problems(run: Run, cfg: CreditConfig, shard: int) -> list[str]:
    """The ids of the covered problems that fall in `shard`, from two columns of the problems."""
    keys = (ProblemKey(*t) for t in run.read_columns(PROBLEMS, "problem_id", "split"))
    return [k.problem_id for k in covered(keys, cfg.problems) if shard_of(k.problem_id, cfg.shards) == shard]


def shard_inputs(cfg: CreditConfig, run: Run, shard: int
                 ) -> tuple[dict[str, Problem], dict[str, Verdict], list[Rollout]]:
    """The problems, verdicts and rollouts of shard `shard`, and nothing else: each read keeps only the shard's
    problems as it is decoded, so S shards over N rollouts read N rollouts in all, not S x N."""
    mine = ("problem_id", shard_problems(run, cfg, shard))
    problems = {p.problem_id: p for p in run.read(PROBLEMS, where=mine)}
    verdicts = {v.rollout_id: v for v in run.read(VERDICTS, where=mine)}
    return problems, verdicts, [r for r in run.read(ROLLOUTS, where=mine) if r.rollout_id in verdicts]


def step_credit(cfg: CreditConfig, run: Run, shard: int, meter: Meter) -> list[StepCredit]:
    """Shard `shard`: the rollouts of its problems, credited; a rollout that cannot be is refused with why."""
    problems, verdicts, rollouts = shard_inputs(cfg, run, shard)
    by_id = {r.rollout_id: r for r in rollouts}
    wrong, right, unsolved = [], [], 0
    for t in targets(rollouts, verdicts, {p: problems[p].source for p in problems}, cfg):
        if t.correct and not cfg.positives:
            continue
        if not (t.correct or t.n_solved or cfg.unsolved):  # a choice, not a fault: counted, not quarantined
            unsolved += 1
            continue
        if why := mc.uncreditable(t, cfg.max_steps):
            meter.refuse(t.rollout_id, why, by_id[t.rollout_id].completion)
        else:
            (right if t.correct else wrong).append(t)
    engine = load_engine(cfg.engine, local_model(cfg.engine, lambda: policy_dir(run)), run.seed)
    solutions = {r.rollout_id: Solution(r.prompt, r.completion, problems[r.problem_id].answer) for r in rollouts}
    with run.grading.judge() as judge:
        rows, counts = monte_carlo(cfg, engine, judge, wrong, right, solutions,
                                   lambda *round_k: run.seed_for(shard, *round_k), f"credit shard {shard}")
    meter.add(**counts, skipped={"unsolved": unsolved} if unsolved else {})
    return rows


@dataclass(frozen=True)
class Solution:
    """What continuing a rollout's prefixes needs: its prompt and completion, and the gold answer to grade by."""

    prompt: str
    completion: str
    gold: str


def monte_carlo(cfg: CreditConfig, engine: Engine, judge: Judge, wrong: list[mc.Target], right: list[mc.Target],
                solutions: Mapping[str, Solution], seed: Callable[[int, int], int],
                desc: str = "credit") -> tuple[list[StepCredit], dict[str, int]]:
    """StepCredit rows of the wrong targets (by cfg.strategy) and of the right ones (linear), and what it took
    (tokens, rounds). Continuations are drawn from `engine`, graded by `judge` against the solution's gold;
    round r's k-continuation requests are seeded `seed(r, k)`."""
    steps_of = {t.rollout_id: t.steps for t in [*wrong, *right]}
    rounds = tokens = 0
    bar = tqdm(desc=desc, unit="continuation", disable=None)

    def sample(requests: list[tuple[Hashable, int, int]]) -> list[list[Continuation]]:
        """One labelling round: every requested prefix continued k times, grouped by k into engine calls."""
        nonlocal rounds, tokens
        rounds += 1
        out: list[list[Continuation] | None] = [None] * len(requests)
        by_k: dict[int, list[int]] = defaultdict(list)
        for j, (_, _, k) in enumerate(requests):
            by_k[k].append(j)
        for k, js in sorted(by_k.items()):
            # A fresh seed per round, or a prefix probed twice would get the same continuations twice.
            params = SamplingParams(n=k, temperature=cfg.temperature, top_p=cfg.top_p,
                                    max_new_tokens=cfg.max_new_tokens, stop=formatting.STOP, seed=seed(rounds, k))
            asked = [(solutions[requests[j][0]], steps_of[requests[j][0]], requests[j][1]) for j in js]
            prefixes = [s.completion[: steps[i - 1].end] for s, steps, i in asked]
            outs = engine.generate([s.prompt + prefix for (s, _, _), prefix in zip(asked, prefixes, strict=True)],
                                   params)
            grades = iter(judge.grade_many((s.gold, prefix + c.text) for (s, _, _), prefix, cs
                                           in zip(asked, prefixes, outs, strict=True) for c in cs))
            for j, cs in zip(js, outs, strict=True):
                out[j] = [Continuation(next(grades).correct, c.text) for c in cs]
                tokens += sum(c.n_tokens for c in cs)
            bar.update(k * len(js))
        return out

    kw = dict(m=cfg.m, k=cfg.k, round_size=cfg.round_size, max_steps=cfg.max_steps)
    rows = mc.credit(wrong, sample, strategy=cfg.strategy, pit=cfg.pit, **kw)[0]
    rows += mc.credit(right, sample, strategy="linear", **kw)[0]
    bar.close()
    return rows, {"tokens": tokens, "rounds": rounds}


def _summarize(cfg: CreditConfig, run: Run, shards: list[dict]) -> dict:
    """How the rows were made (so pairs and show read it from the marker), what they hold, what was left out."""
    total = summed(cfg, run, shards)
    return {"style": cfg.style, "strategy": cfg.strategy, "pit": cfg.pit, "m": cfg.m, "k": cfg.k,
            "problems_limit": cfg.problems, **{k: total.get(k, 0) for k in mc.TALLY},
            "not_credited": {**total.get("refused", {}), **total.get("skipped", {})}, "rounds": total.get("rounds", 0),
            "tokens": total.get("tokens", 0), "tokens_per_s": total.get("tokens_per_s")}


CREDIT = StageSpec("credit", StepCredit, CreditConfig, step_credit,
                   reads=(PROBLEMS.name, ROLLOUTS.name, VERDICTS.name, POLICY.name),
                   shards=lambda cfg, run: cfg.shards, tally=mc.tally, summarize=_summarize, retries=2,
                   needs="gpu")
SPECS = {CREDIT.name: CREDIT}
