"""(stage spec, its config, a Run, shard) -> that one shard in the lake: the task every sharded stage's shards
run as, and the flow a `shard` deployment runs. A spec is found by its module and stage name: no list of stages."""

from __future__ import annotations

import importlib
from typing import Any

from prefect import flow, tags, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from mathfactory.tasks.stage import Run, StageSpec, write_shard


def ref(spec: StageSpec) -> str:
    """Where a spec is declared: the module whose SPECS holds it."""
    return spec.compute.__module__


def resolve(module: str, stage: str) -> StageSpec:
    """The spec of `stage`, declared in `module` (its SPECS); a stage the module does not declare fails here."""
    if not module.startswith("mathfactory.tasks."):
        raise ValueError(f"{module!r} is not a stage module of mathfactory.tasks")
    specs = getattr(importlib.import_module(module), "SPECS", {})
    if stage not in specs:
        raise ValueError(f"{module} declares no stage {stage!r}; it declares: {', '.join(specs) or 'none'}")
    return specs[stage]


@task(name="shard", task_run_name="{stage}-shard-{shard}", cache_policy=NO_CACHE)
def shard_task(module: str, stage: str, config: Any, run: Run, shard: int) -> dict:
    """Write shard `shard` of `stage` (kept if it landed earlier) and return its summary."""
    spec = resolve(module, stage)
    return write_shard(spec, spec.config_type.model_validate(config), run, shard)


# The caller reads the shard's summary from this run's result, so it is persisted.
@flow(name="mathfactory-shard", flow_run_name="{run[run_id]}-{stage}-shard-{shard}", persist_result=True)
def run_shard(module: str, stage: str, config: dict[str, Any], run: dict[str, Any], shard: int) -> dict:
    """Write one shard of a sharded stage (rollouts, verdicts, credit, eval_*, grad_features, synth_outputs, or any
    stage a module declares in its SPECS) of `run`; a written shard is kept."""
    spec = resolve(module, stage)
    # Flow-run tags do not reach task runs by themselves; carried over, the deployment's `gpu` tag makes Prefect's
    # `gpu` tag concurrency limit count this shard.
    with tags(*(flow_run.tags or [])):
        return shard_task.with_options(retries=spec.retries)(module, stage, config, Run.model_validate(run), shard)
