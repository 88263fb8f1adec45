"""Stage `rollouts`: Problem + policy model -> Rollout, n sampled completions per problem, in shards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from mathfactory.tasks.core import formatting
from mathfactory.tasks.core.records import Problem, Rollout, stable_id
from mathfactory.tasks.engines import EngineOptions, TransformersOptions, load_engine, local_model, model_name
from mathfactory.tasks.engines.base import SamplingParams
from mathfactory.tasks.policy import POLICY, policy_dir, policy_ref
from mathfactory.tasks.problems import PROBLEMS
from mathfactory.tasks.stage import Meter, Run, StageSpec


class SampleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: EngineOptions = Field(default_factory=TransformersOptions, description="Model backend that samples.")
    n: int = Field(4, ge=1, description="Completions sampled per problem.")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(320, ge=1, description="Generation budget per completion.")
    splits: list[Literal["train", "test"]] = Field(["train", "test"], description="Problem splits to sample on.")
    problems_per_split: int | None = Field(150, ge=1, description="First N problems of each split (None: all).")
    shards: int = Field(2, ge=1, description="Independent tasks the stage is split into (the fan-out unit).")


def selected(problems: Iterator[Problem], cfg: SampleConfig, shard: int) -> Iterator[Problem]:
    """The problems of `shard`: the first `problems_per_split` of each split, dealt round-robin to shards."""
    taken = dict.fromkeys(cfg.splits, 0)
    for p in problems:
        if p.split not in taken or (cfg.problems_per_split is not None and taken[p.split] >= cfg.problems_per_split):
            continue
        taken[p.split] += 1
        if (sum(taken.values()) - 1) % cfg.shards == shard:
            yield p


def rollouts(cfg: SampleConfig, run: Run, shard: int, meter: Meter) -> Iterator[Rollout]:
    """Shard `shard`: n sampled completions of each of its problems."""
    problems = list(selected(run.read(PROBLEMS), cfg, shard))
    # HTTP engines sample the served model; in-process ones the run's policy from the lake.
    model_dir = local_model(cfg.engine, lambda: policy_dir(run))
    policy = model_name(cfg.engine, policy_ref(run) if model_dir else None)  # part of rollout ids
    engine = load_engine(cfg.engine, model_dir, run.seed)
    params = SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p,
                            max_new_tokens=cfg.max_new_tokens, stop=formatting.STOP, seed=run.seed_for(shard))
    chunk = max(1, 512 // cfg.n)  # prompts per engine call: engines sort by length within a call
    bar = tqdm(total=len(problems), desc=f"sample shard {shard}", unit="problem", disable=None)
    for i in range(0, len(problems), chunk):
        batch = problems[i : i + chunk]
        outs = engine.generate([formatting.prompt(p.question) for p in batch], params)
        for p, completions in zip(batch, outs, strict=True):
            for k, c in enumerate(completions):
                meter.add(tokens=c.n_tokens)
                yield Rollout(
                    rollout_id=stable_id(p.problem_id, policy, params.seed, params.temperature, k),
                    problem_id=p.problem_id, split=p.split, level=p.level, policy=policy, sample_index=k,
                    prompt=formatting.prompt(p.question), completion=c.text, n_tokens=c.n_tokens,
                    finish_reason=c.finish_reason, temperature=params.temperature, seed=params.seed,
                )
        bar.update(len(batch))
    bar.close()


ROLLOUTS = StageSpec("rollouts", Rollout, SampleConfig, rollouts, reads=(PROBLEMS.name, POLICY.name),
                     shards=lambda cfg, run: cfg.shards, retries=2, needs="gpu")
SPECS = {ROLLOUTS.name: ROLLOUTS}
