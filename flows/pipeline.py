"""The pipeline flow: FactoryConfig -> (synthesis ->) problems -> policy (pi_sft) -> rollouts -> verdicts -> credit -> pairs ->
a model per training method -> every model evaluated the same way. Composition only."""

from __future__ import annotations

import time

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from mathfactory.flows.config import FactoryConfig
from mathfactory.flows.fanout import run_sharded
from mathfactory.flows.report import publish
from mathfactory.flows.synthesis import synthesis
from mathfactory.tasks.credit import STAGE as CREDIT
from mathfactory.tasks.credit import commit_credit
from mathfactory.tasks.evaluate import commit_eval, eval_stage
from mathfactory.tasks.pairs import make_pairs
from mathfactory.tasks.policy import fit_policy
from mathfactory.tasks.problems import make_problems
from mathfactory.tasks.sample import STAGE as ROLLOUTS
from mathfactory.tasks.sample import commit_rollouts
from mathfactory.tasks.stage import logger
from mathfactory.tasks.storage import Lake
from mathfactory.tasks.train import stage_name, train_model
from mathfactory.tasks.verify import STAGE as VERDICTS
from mathfactory.tasks.verify import commit_verdicts


# One task at a time: on the embedded default every stage already uses both cores. Sharded stages run their
# shards where config.runner says (flows/fanout.py).
@flow(name="mathfactory-pipeline", task_runner=ThreadPoolTaskRunner(max_workers=1))
def pipeline(config: FactoryConfig | None = None, date: str | None = None) -> dict[str, str]:
    """Run every stage for `config` (and `date`, for dated runs); finished stages are skipped."""
    config = config or FactoryConfig()
    run_id, seed, lake = config.run_id(date), config.seed_for(date), config.lake
    log = logger()
    log.info("run %s in %s", run_id, lake)
    uris: dict[str, str] = {}

    if config.problems.source == "synthesizer":
        uris.update(synthesis(config.synthesis, lake, run_id, seed, config.runner, config.verify))
    uris["problems"] = make_problems(config.problems, lake, run_id, seed)
    uris["policy"] = fit_policy(config.policy, lake, run_id)

    started = time.time()
    shards = run_sharded(config.runner, ROLLOUTS, config.sample, lake, run_id, config.sample.shards, seed)
    uris["rollouts"] = commit_rollouts(config.sample, lake, run_id, shards, started)

    started = time.time()
    shards = run_sharded(config.runner, VERDICTS, config.verify, lake, run_id, config.sample.shards, seed)
    uris["verdicts"] = commit_verdicts(config.verify, lake, run_id, shards, started)

    started = time.time()
    shards = run_sharded(config.runner, CREDIT, config.credit, lake, run_id, config.credit.shards, seed,
                         config.verify)
    uris["credit"] = commit_credit(config.credit, lake, run_id, shards, started)
    uris.update(make_pairs(config.pairs, config.credit.style, lake, run_id, seed))

    # One method failing (e.g. a training set smaller than a batch) still leaves the others trained and compared.
    failed, trained = {}, ["sft"]
    for method in config.train.methods:
        state = train_model(config.train, method, lake, run_id, seed, return_state=True)
        if state.is_completed():
            uris[stage_name(method)] = state.result()
            trained.append(method)
        else:
            failed[method] = state.message
            log.error("training %s failed: %s", method, state.message)
    for method in trained:
        stage, started = eval_stage(method), time.time()
        shards = run_sharded(config.runner, stage, config.evaluate, lake, run_id, config.evaluate.shards, seed,
                             config.verify)
        uris[stage] = commit_eval(config.evaluate, lake, run_id, stage, shards, started)
    publish(Lake(lake), run_id)
    if failed:
        raise RuntimeError(f"run {run_id}: training failed for {', '.join(failed)} (the rest finished): "
                           + "; ".join(f"{m}: {msg}" for m, msg in failed.items()))
    return {"run_id": run_id, **uris}
