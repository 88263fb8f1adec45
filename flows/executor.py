"""A stage spec + its config + a Run -> the stage in the lake. The one executor: it skips a committed stage, fans a
sharded stage's shards out where the runner says (flows/fanout.py), trains a model stage there too (a Ray task, a
run on the gpu pool) or in a task of its own, writes a one-shard stage, and commits the marker (tasks/stage.py says
what happens to one shard or one training). An optional stage whose inputs cannot make it is skipped with its
reason. The task that commits a stage materializes it as a Prefect asset (flows/assets.py)."""

from __future__ import annotations

import time
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from mathfactory.flows.assets import describe, materializing
from mathfactory.flows.fanout import RunnerConfig, dispatch, trains_away
from mathfactory.flows.shard import ref, resolve
from mathfactory.tasks.stage import Run, StageSpec, commit, logger, made, skipped, write_model, write_shard


def execute(spec: StageSpec, config: BaseModel, run: Run, runner: RunnerConfig | None = None) -> str | None:
    """Run stage `spec` of `run` unless it is committed; its URI, or None when an optional stage's inputs cannot
    make it (the reason is recorded: tasks/core/skips.py). Raises if the stage fails."""
    marker = run.marker(spec.name)
    if marker is not None:
        logger().info("%s: already done (%s), skipping", spec.name, made(marker))
        return run.uri(spec.name)
    if skipped(spec, config, run):
        return None
    started, runner = time.time(), runner or RunnerConfig()
    args = (ref(spec), spec.name, config, run)
    if spec.record is None and not trains_away(runner, spec, config):
        return materializing(model_task, spec, config, run, spec.retries)(*args, started)
    if spec.record is not None and not spec.sharded:
        return materializing(record_task, spec, config, run, spec.retries)(*args, started)
    summaries = dispatch(runner, spec, config, run)
    return materializing(commit_task, spec, config, run, 0)(*args, summaries, started)


@task(name="stage", task_run_name="{stage}", cache_policy=NO_CACHE)
def record_task(module: str, stage: str, config: Any, run: Run, started: float) -> str:
    """A one-shard stage: written and committed in one task."""
    spec = resolve(module, stage)
    return committed(spec, config, run, [write_shard(spec, config, run, 0)], started)


@task(name="commit", task_run_name="{stage}", cache_policy=NO_CACHE)
def commit_task(module: str, stage: str, config: Any, run: Run, shards: list[dict], started: float) -> str:
    """A stage's marker, once every shard (or its model) has landed."""
    return committed(resolve(module, stage), config, run, shards, started)


@task(name="model", task_run_name="{stage}", cache_policy=NO_CACHE)
def model_task(module: str, stage: str, config: Any, run: Run, started: float) -> str:
    """A model stage, trained in this task (tasks/trainer.py runs each trainer in a process of its own)."""
    spec = resolve(module, stage)
    return committed(spec, config, run, [write_model(spec, config, run)], started)


def committed(spec: StageSpec, config: Any, run: Run, shards: list[dict], started: float) -> str:
    """The marker written, then the asset's metadata from it (inside the materializing task)."""
    uri = commit(spec, config, run, shards, started)
    describe(spec, run)
    return uri
