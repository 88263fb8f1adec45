"""Stage `rollouts`: Problem + policy model -> Rollout, n sampled completions per problem, in shards."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from mathfactory.tasks.core import format
from mathfactory.tasks.core.records import Problem, Rollout, stable_id
from mathfactory.tasks.engines import (
    EngineOptions,
    OpenAIOptions,
    TransformersOptions,
    load_engine,
    model_name,
)
from mathfactory.tasks.engines.base import SamplingParams
from mathfactory.tasks.policy import policy_dir, policy_ref
from mathfactory.tasks.stage import Stage, token_rate

STAGE = "rollouts"


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


@task(name="sample-shard", cache_policy=NO_CACHE, retries=2)
def sample_shard(cfg: SampleConfig, lake: str, run_id: str, shard: int, seed: int) -> dict:
    st = Stage(lake, run_id, STAGE, Rollout, config=cfg)
    if st.done:
        return {"shard": shard, "skipped": True}
    if st.has_shard(shard):  # a retry after this shard landed: count it, don't sample it again
        landed = [r.n_tokens for r in st.lake.read_part(run_id, STAGE, shard, Rollout)]
        return {"shard": shard, "rows": len(landed), "tokens": sum(landed), "seconds": 0.0}
    problems = list(selected(st.lake.read(run_id, "problems", Problem), cfg, shard))
    # HTTP engines sample the served model; in-process ones the run's policy from the lake.
    model_dir = None if isinstance(cfg.engine, OpenAIOptions) else policy_dir(lake, run_id)
    policy = model_name(cfg.engine, policy_ref(lake, run_id) if model_dir else None)  # part of rollout ids
    engine = load_engine(cfg.engine, model_dir, seed)
    params = SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p,
                            max_new_tokens=cfg.max_new_tokens, stop=format.STOP,
                            seed=int(stable_id(seed, shard), 16) % 2**31)
    chunk = max(1, 512 // cfg.n)  # prompts per engine call: engines sort by length within a call
    tokens, t0 = 0, time.perf_counter()

    def rows() -> Iterator[Rollout]:
        nonlocal tokens
        bar = tqdm(total=len(problems), desc=f"sample shard {shard}", unit="problem", disable=None)
        for i in range(0, len(problems), chunk):
            batch = problems[i : i + chunk]
            outs = engine.generate([format.prompt(p.question) for p in batch], params)
            for p, completions in zip(batch, outs, strict=True):
                for k, c in enumerate(completions):
                    tokens += c.n_tokens
                    yield Rollout(
                        rollout_id=stable_id(p.problem_id, policy, params.seed, params.temperature, k),
                        problem_id=p.problem_id, split=p.split, stage=p.stage, policy=policy, sample_index=k,
                        prompt=format.prompt(p.question), completion=c.text, n_tokens=c.n_tokens,
                        finish_reason=c.finish_reason, temperature=params.temperature, seed=params.seed,
                    )
            bar.update(len(batch))
        bar.close()

    n = st.write(shard, rows())
    return {"shard": shard, "rows": n, "tokens": tokens, "seconds": round(time.perf_counter() - t0, 2)}


@task(name="rollouts", cache_policy=NO_CACHE)
def commit_rollouts(cfg: SampleConfig, lake: str, run_id: str, shards: list[dict], started: float) -> str:
    st = Stage(lake, run_id, STAGE, Rollout, config=cfg)
    if st.done:
        return st.uri
    return st.commit(started, **token_rate([s for s in shards if not s.get("skipped")]))
