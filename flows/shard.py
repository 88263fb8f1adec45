"""(stage, its config, lake, run id, shard) -> that one shard in the lake: the flow a `shard` deployment runs."""

from __future__ import annotations

from typing import Any

from prefect import Task, flow, tags
from prefect.runtime import flow_run

from mathfactory.tasks.credit import STAGE as CREDIT
from mathfactory.tasks.credit import CreditConfig, credit_shard
from mathfactory.tasks.evaluate import METHODS, EvalConfig, eval_shard, method_of
from mathfactory.tasks.evaluate import STAGE_PREFIX as EVAL_PREFIX
from mathfactory.tasks.influence import FEATURES, features_shard
from mathfactory.tasks.sample import STAGE as ROLLOUTS
from mathfactory.tasks.sample import SampleConfig, sample_shard
from mathfactory.tasks.synthesis import SynthesisConfig
from mathfactory.tasks.synthesize import STAGE as OUTPUTS
from mathfactory.tasks.synthesize import synthesize_shard
from mathfactory.tasks.verify import STAGE as VERDICTS
from mathfactory.tasks.verify import VerifyConfig, verify_shard

SHARDED = (ROLLOUTS, VERDICTS, CREDIT, FEATURES, OUTPUTS)  # plus one `eval_{method}` stage per evaluated method


def is_sharded(stage: str) -> bool:
    return stage in SHARDED or (stage.startswith(EVAL_PREFIX) and stage.removeprefix(EVAL_PREFIX) in METHODS)


def shard_call(stage: str, config: dict, lake: str, run_id: str, shard: int, seed: int,
               grading: dict | None = None) -> tuple[Task, tuple]:
    """The task that writes shard `shard` of `stage`, and its arguments; `config` is the stage's config as JSON,
    `grading` the run's VerifyConfig as JSON, for the stages that grade."""
    judged = VerifyConfig.model_validate(grading or {})
    if stage.startswith(EVAL_PREFIX):
        method_of(stage)  # an unknown method fails here, before any shard starts
        return eval_shard, (EvalConfig.model_validate(config), lake, run_id, stage, shard, seed, judged)
    if stage == ROLLOUTS:
        return sample_shard, (SampleConfig.model_validate(config), lake, run_id, shard, seed)
    if stage == VERDICTS:  # grading is seedless
        return verify_shard, (VerifyConfig.model_validate(config), lake, run_id, shard)
    if stage == CREDIT:
        return credit_shard, (CreditConfig.model_validate(config), lake, run_id, shard, seed, judged)
    if stage in (FEATURES, OUTPUTS):  # the synthesis stages take the synthesis config whole
        cfg = SynthesisConfig.model_validate(config)
        if stage == FEATURES:
            return features_shard, (cfg.influence, cfg.teacher.templates, lake, run_id, shard, seed)
        return synthesize_shard, (cfg.generate, cfg.teacher.templates, lake, run_id, shard, seed)
    raise ValueError(f"stage {stage!r} is not sharded; sharded stages: {', '.join(SHARDED)}, {EVAL_PREFIX}{{method}}")


# The caller reads the shard's summary (rows, tokens, tallies) from this run's result, so it is persisted.
@flow(name="mathfactory-shard", persist_result=True)
def run_shard(stage: str, config: dict[str, Any], lake: str, run_id: str, shard: int, seed: int = 0,
              grading: dict[str, Any] | None = None) -> dict:
    """Write one shard of a sharded stage (rollouts, verdicts, credit, eval_*, grad_features, synth_outputs) of
    run `run_id`; a written shard is kept. `grading`: the run's verify settings, for credit and eval_*."""
    task, args = shard_call(stage, config, lake, run_id, shard, seed, grading)
    # Flow-run tags do not reach task runs by themselves; carried over, the deployment's `gpu` tag makes Prefect's
    # `gpu` tag concurrency limit count this shard.
    with tags(*(flow_run.tags or [])):
        return task(*args)
