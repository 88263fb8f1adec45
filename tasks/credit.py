"""Stage `credit`: verified train rollouts + the policy -> StepCredit rows (Monte-Carlo Q per step, the first pit).

The pure part (strategies, Q arithmetic, batching rounds) is tasks/core/credit.py; this module binds it to the lake,
the generation engine and the judge. Every round of every rollout's labeler becomes one engine call, so the
continuations of many prefixes of many rollouts are sampled together and each prefix is prefilled once.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Iterator
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from mathfactory.tasks.core import credit as mc
from mathfactory.tasks.core import format
from mathfactory.tasks.core.records import Problem, Rollout, StepCredit, Verdict, stable_id
from mathfactory.tasks.core.steps import split_steps
from mathfactory.tasks.core.strategies import Continuation
from mathfactory.tasks.engines import EngineOptions, OpenAIOptions, TransformersOptions, load_engine
from mathfactory.tasks.engines.base import SamplingParams
from mathfactory.tasks.policy import policy_dir
from mathfactory.tasks.stage import Stage, logger, token_rate
from mathfactory.tasks.verify import VerifyConfig, judge

STAGE = "credit"
LATEX_SOURCES = ("math500",)  # their solutions are prose + LaTeX: split into sentence steps, not lines


class CreditConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Literal["linear", "scan", "binary"] = Field(
        "binary", description="Which steps of an incorrect rollout get continuations: linear = every step "
        "(Math-Shepherd), scan = until the first Q=0 step (Self-Explore), binary = binary search for it (OmegaPRM).")
    positives: bool = Field(True, description="Also credit correct rollouts, every step (linear): "
                            "advantage-filtered RFT needs their per-step advantages.")
    m: int = Field(8, ge=1, description="Continuations per step prefix (M).")
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


def style_for(style: str, source: str) -> str:
    return style if style != "auto" else "math" if source in LATEX_SOURCES else "lines"


def targets(rollouts: list[Rollout], verdicts: dict[str, Verdict], sources: dict[str, str],
            cfg: CreditConfig) -> tuple[list[mc.Target], list[mc.Target]]:
    """(incorrect, correct) train rollouts as credit targets; Q_0 from all rollouts of the same question."""
    solved, sampled = Counter(), Counter()
    for r in rollouts:
        sampled[r.problem_id] += 1
        solved[r.problem_id] += verdicts[r.rollout_id].correct
    wrong, right = [], []
    for r in rollouts:
        steps = split_steps(r.completion, style_for(cfg.style, sources[r.problem_id]))
        t = mc.Target(r.rollout_id, r.problem_id, tuple(steps),
                      verdicts[r.rollout_id].correct, solved[r.problem_id], sampled[r.problem_id])
        (right if t.correct else wrong).append(t)
    return wrong, right


def covered(problems: Iterable[Problem], limit: int | None) -> Iterator[Problem]:
    """The train problems credit covers: the first `limit` of the run's (all for None). Every training set built
    from the policy's samples comes from these same problems."""
    return itertools.islice((p for p in problems if p.split == "train"), limit)


@task(name="credit-shard", cache_policy=NO_CACHE, retries=2)
def credit_shard(cfg: CreditConfig, lake: str, run_id: str, shard: int, seed: int,
                 grading: VerifyConfig | None = None) -> dict:
    st = Stage(lake, run_id, STAGE, StepCredit, config=cfg)
    if st.done:
        return {"shard": shard, "skipped": True}
    problems = {p.problem_id: p for p in covered(st.lake.read(run_id, "problems", Problem), cfg.problems)
                if shard_of(p.problem_id, cfg.shards) == shard}
    rollouts = [r for r in st.lake.read(run_id, "rollouts", Rollout) if r.problem_id in problems]
    verdicts = {v.rollout_id: v for v in st.lake.read(run_id, "verdicts", Verdict) if v.problem_id in problems}
    rollouts = [r for r in rollouts if r.rollout_id in verdicts]
    by_id = {r.rollout_id: r for r in rollouts}
    wrong, right = targets(rollouts, verdicts, {p: problems[p].source for p in problems}, cfg)
    skipped = Counter(why for t in wrong + right * cfg.positives if (why := mc.uncreditable(t, cfg.max_steps)))
    if st.has_shard(shard):  # a retry after this shard landed: count it, don't sample it again
        landed = mc.tally(st.lake.read_part(run_id, STAGE, shard, StepCredit))
        return {"shard": shard, **landed, "not_credited": dict(skipped), "seconds": 0.0}

    model_dir = None if isinstance(cfg.engine, OpenAIOptions) else policy_dir(lake, run_id)
    engine = load_engine(cfg.engine, model_dir, seed)
    steps_of = {t.rollout_id: t.steps for t in wrong + right}
    counts = Counter()
    bar = tqdm(desc=f"credit shard {shard}", unit="continuation", disable=None)
    t0 = time.perf_counter()

    with judge(grading or VerifyConfig()) as grader:
        def sample(requests: list[tuple[Hashable, int, int]]) -> list[list[Continuation]]:
            """One labelling round: every requested prefix continued k times, grouped by k into engine calls."""
            counts["rounds"] += 1
            out: list[list[Continuation] | None] = [None] * len(requests)
            by_k: dict[int, list[int]] = defaultdict(list)
            for j, (_, _, k) in enumerate(requests):
                by_k[k].append(j)
            for k, js in sorted(by_k.items()):
                # A fresh seed per round, or a prefix probed twice would get the same continuations twice.
                params = SamplingParams(n=k, temperature=cfg.temperature, top_p=cfg.top_p,
                                        max_new_tokens=cfg.max_new_tokens, stop=format.STOP,
                                        seed=int(stable_id(seed, shard, counts["rounds"], k), 16) % 2**31)
                prefixes = []
                for j in js:
                    rid, i, _ = requests[j]
                    prefixes.append(by_id[rid].completion[: steps_of[rid][i - 1].end])
                prompts = [by_id[requests[j][0]].prompt + prefix for j, prefix in zip(js, prefixes, strict=True)]
                outs = engine.generate(prompts, params)
                gold = [problems[by_id[requests[j][0]].problem_id].answer for j in js]
                grades = grader.grade_many((g, prefix + c.text) for g, prefix, cs in zip(gold, prefixes, outs,
                                                                                       strict=True) for c in cs)
                grades_it = iter(grades)
                for j, cs in zip(js, outs, strict=True):
                    out[j] = [Continuation(next(grades_it).correct, c.text) for c in cs]
                    counts["tokens"] += sum(c.n_tokens for c in cs)
                counts["continuations"] += k * len(js)
                bar.update(k * len(js))
            return out

        kw = dict(m=cfg.m, k=cfg.k, round_size=cfg.round_size, max_steps=cfg.max_steps)
        rows, _ = mc.credit(wrong, sample, strategy=cfg.strategy, pit=cfg.pit, **kw)
        if cfg.positives:
            rows += mc.credit(right, sample, strategy="linear", **kw)[0]
    bar.close()
    st.write(shard, rows)
    seconds = round(time.perf_counter() - t0, 2)
    done = mc.tally(rows)
    logger().info("credit shard %d: %d rollouts credited (%d wrong), not credited %s, %d continuations in %d "
                  "rounds", shard, done["rollouts"], done["wrong"], dict(skipped) or "none", counts["continuations"],
                  counts["rounds"])
    return {"shard": shard, **done, "not_credited": dict(skipped), "tokens": counts["tokens"],
            "rounds": counts["rounds"], "seconds": seconds}


@task(name="credit", cache_policy=NO_CACHE)
def commit_credit(cfg: CreditConfig, lake: str, run_id: str, shards: list[dict], started: float) -> str:
    st = Stage(lake, run_id, STAGE, StepCredit, config=cfg)
    if st.done:
        return st.uri
    done = [s for s in shards if not s.get("skipped")]
    skipped = sum((Counter(s.get("not_credited", {})) for s in done), Counter())
    totals = {k: sum(s.get(k, 0) for s in done) for k in mc.TALLY}
    # The marker says how the rows were made, so readers (pairs, show) need not be told.
    return st.commit(started, style=cfg.style, strategy=cfg.strategy, pit=cfg.pit, m=cfg.m, k=cfg.k,
                     problems_limit=cfg.problems, **totals, not_credited=dict(skipped), **token_rate(done))
