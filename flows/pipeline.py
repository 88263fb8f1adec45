"""The pipeline flow: FactoryConfig -> (synthesis ->) problems -> policy (pi_sft) -> rollouts -> verdicts -> credit ->
training sets -> a model per training method -> every model evaluated the same way. Composition only: each stage is
a spec (tasks/*.py) the executor runs; an optional stage its inputs cannot make is skipped with its reason."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from mathfactory.flows.config import FactoryConfig
from mathfactory.flows.executor import execute
from mathfactory.flows.report import publish
from mathfactory.flows.synthesis import synthesis
from mathfactory.tasks.core.skips import switched_off
from mathfactory.tasks.credit import CREDIT
from mathfactory.tasks.evaluate import SPECS as EVALUATIONS
from mathfactory.tasks.evaluate import eval_stage
from mathfactory.tasks.pairs import SETS
from mathfactory.tasks.policy import POLICY
from mathfactory.tasks.problems import PROBLEMS
from mathfactory.tasks.sample import ROLLOUTS
from mathfactory.tasks.scratch import sweep
from mathfactory.tasks.stage import Run, logger, skipped
from mathfactory.tasks.train import SPECS as TRAININGS
from mathfactory.tasks.train import stage_name
from mathfactory.tasks.verify import VERDICTS


def run_name() -> str:
    """The flow run's name: its run id, so a run is found by it in the UI (a backfill names its runs the same)."""
    params = flow_run.parameters
    return FactoryConfig.model_validate(params.get("config") or {}).run_id(params.get("date"))


# One task at a time: on the embedded default every stage already uses both cores. Sharded stages run their
# shards, and model stages their trainings, where config.runner says (flows/fanout.py).
@flow(name="mathfactory-pipeline", flow_run_name=run_name, task_runner=ThreadPoolTaskRunner(max_workers=1))
def pipeline(config: FactoryConfig | None = None, date: str | None = None, train: bool = True) -> dict[str, Any]:
    """Run every stage for `config` (and `date`, for dated runs); finished stages are skipped. `train`: also train
    `config.train.methods` and evaluate every model; False stops at the training sets (the nightly refresh's
    default). Returns the stages' URIs, and `skipped`: why each stage not run was skipped."""
    config = config or FactoryConfig()
    run = Run(lake=config.lake, run_id=config.run_id(date), seed=config.seed_for(date), grading=config.verify)
    log = logger()
    log.info("run %s in %s", run.run_id, run.lake)
    # A resumed run first removes what killed runs on this host left: scratch folders (a model being trained),
    # half-written files in a local lake.
    if swept := len(sweep()) + run.store.sweep(run.run_id):
        log.info("removed %d temporary files and folders of killed runs", swept)
    uris: dict[str, str] = {}

    if config.problems.source == "synthesizer":
        uris.update(synthesis(config.synthesis, run, config.runner))
    uris["problems"] = execute(PROBLEMS, config.problems, run)
    uris["policy"] = execute(POLICY, config.policy, run, config.runner)
    uris["rollouts"] = execute(ROLLOUTS, config.sample, run, config.runner)
    uris["verdicts"] = execute(VERDICTS, config.verify, run, config.runner)
    uris["credit"] = execute(CREDIT, config.credit, run, config.runner)
    for name, spec in SETS.items():
        uris[name] = execute(spec, config.pairs, run)

    failed: dict[str, str] = {}
    if train:
        failed = models(config, run, uris)
    else:
        models_off(config, run)
    publish(run.store, run.run_id)
    if failed:
        raise RuntimeError(f"run {run.run_id}: training failed for {', '.join(failed)} (the rest finished): "
                           + "; ".join(f"{m}: {msg}" for m, msg in failed.items()))
    skipped = {stage: why["reason"] for stage, why in run.store.skipped(run.run_id).items()}
    return {"run_id": run.run_id, **uris, "skipped": skipped}


def models(config: FactoryConfig, run: Run, uris: dict[str, str]) -> dict[str, str]:
    """A model per training method, then every model evaluated; the methods whose trainer failed, with why. A
    method whose set is smaller than a batch is skipped (recorded with its rows and the minimum), as is evaluation
    without problems in its split; one method failing still leaves the others trained and compared."""
    failed, trained = {}, ["sft"]
    for method in config.train.methods:
        try:
            uri = execute(TRAININGS[stage_name(method)], config.train, run, config.runner)
        except Exception as e:  # noqa: BLE001 - reported below, and the run ends Failed naming it
            failed[method] = f"{type(e).__name__}: {e}"
            logger().error("training %s failed: %s", method, failed[method])
            continue
        if uri is not None:
            uris[stage_name(method)] = uri
            trained.append(method)
    for method in trained:
        if (uri := execute(EVALUATIONS[eval_stage(method)], config.evaluate, run, config.runner)) is not None:
            uris[eval_stage(method)] = uri
    return failed


def models_off(config: FactoryConfig, run: Run) -> None:
    """Training and evaluation not asked for: each model stage that would have run is recorded as skipped."""
    for what, spec in [*(("training", TRAININGS[stage_name(m)]) for m in config.train.methods),
                       ("evaluation", EVALUATIONS[eval_stage("sft")])]:
        if run.marker(spec.name) is None:
            skipped(spec, None, run, switched_off(what, "train=false"))
