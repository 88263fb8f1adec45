"""The pipeline flow: FactoryConfig -> (synthesis ->) problems -> policy (pi_sft) -> rollouts -> verdicts -> credit ->
training sets -> a model per training method -> every model evaluated the same way. Composition only: each stage is
a spec (tasks/*.py) the executor runs."""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from mathfactory.flows.config import FactoryConfig
from mathfactory.flows.executor import execute
from mathfactory.flows.report import publish
from mathfactory.flows.synthesis import synthesis
from mathfactory.tasks.credit import CREDIT
from mathfactory.tasks.evaluate import SPECS as EVALUATIONS
from mathfactory.tasks.evaluate import eval_stage
from mathfactory.tasks.pairs import SETS
from mathfactory.tasks.policy import POLICY
from mathfactory.tasks.problems import PROBLEMS
from mathfactory.tasks.sample import ROLLOUTS
from mathfactory.tasks.stage import Run, logger
from mathfactory.tasks.train import SPECS as TRAININGS
from mathfactory.tasks.train import stage_name
from mathfactory.tasks.verify import VERDICTS


# One task at a time: on the embedded default every stage already uses both cores. Sharded stages run their
# shards, and model stages their trainings, where config.runner says (flows/fanout.py).
@flow(name="mathfactory-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=1))
def pipeline(config: FactoryConfig | None = None, date: str | None = None) -> dict[str, str]:
    """Run every stage for `config` (and `date`, for dated runs); finished stages are skipped."""
    config = config or FactoryConfig()
    run = Run(lake=config.lake, run_id=config.run_id(date), seed=config.seed_for(date), grading=config.verify)
    log = logger()
    log.info("run %s in %s", run.run_id, run.lake)
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

    # One method failing (e.g. a training set smaller than a batch) still leaves the others trained and compared.
    failed, trained = {}, ["sft"]
    for method in config.train.methods:
        try:
            uris[stage_name(method)] = execute(TRAININGS[stage_name(method)], config.train, run, config.runner)
            trained.append(method)
        except Exception as e:  # noqa: BLE001 - reported below, and the run ends Failed naming it
            failed[method] = f"{type(e).__name__}: {e}"
            log.error("training %s failed: %s", method, failed[method])
    for method in trained:
        uris[eval_stage(method)] = execute(EVALUATIONS[eval_stage(method)], config.evaluate, run, config.runner)
    publish(run.store, run.run_id)
    if failed:
        raise RuntimeError(f"run {run.run_id}: training failed for {', '.join(failed)} (the rest finished): "
                           + "; ".join(f"{m}: {msg}" for m, msg in failed.items()))
    return {"run_id": run.run_id, **uris}
