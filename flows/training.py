"""(model stage spec, its config, a Run) -> the stage's model directory in the lake and its metrics: the task a
training runs as away from the pipeline's own flow run (a Ray task), and the flow a `train` deployment runs (on the
gpu pool, its job asking for the stage's GPUs). The directory travels through the lake, so where it ran needs no
disk shared with the pipeline; the pipeline commits the stage (flows/executor.py)."""

from __future__ import annotations

import os
import socket
from typing import Any

from prefect import flow, tags, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from mathfactory.flows.shard import resolve
from mathfactory.tasks.stage import Run, logger, write_model


@task(name="train", task_run_name="{stage}", cache_policy=NO_CACHE)
def train_task(module: str, stage: str, config: Any, run: Run) -> dict:
    """Train stage `stage` into the lake (kept if it landed earlier) and return its metrics."""
    spec = resolve(module, stage)
    cfg = spec.config_type.model_validate(config)
    # Where it trained, for the run's logs: Ray names the GPUs it gave a task in CUDA_VISIBLE_DEVICES.
    logger().info("%s: training on %s, %d trainer process(es), CUDA_VISIBLE_DEVICES=%s", stage,
                  socket.gethostname(), spec.gpus_for(cfg), os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"))
    return write_model(spec, cfg, run)


def _name() -> str:
    return f"{flow_run.parameters['run']['run_id']}-{flow_run.parameters['stage']}"


# The caller reads the metrics from this run's result, so it is persisted.
@flow(name="mathfactory-train", flow_run_name=_name, persist_result=True)
def run_training(module: str, stage: str, config: dict[str, Any], run: dict[str, Any]) -> dict:
    """Train one model stage (policy, train_{method}, synthesizer_round1, synthesizer, or any model stage a module
    declares in its SPECS) of `run` into the lake; a model that landed is kept."""
    spec = resolve(module, stage)
    # Flow-run tags do not reach task runs by themselves; carried over, the deployment's `gpu` tag makes Prefect's
    # `gpu` tag concurrency limit count this training.
    with tags(*(flow_run.tags or [])):
        return train_task.with_options(retries=spec.retries)(module, stage, config, Run.model_validate(run))
