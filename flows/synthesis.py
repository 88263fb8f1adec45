"""The synthesis flow: seed texts -> teacher (round 1) -> synthesizer -> gradient influence -> teacher on the
selected texts (round 2) -> synthesizer -> problems written at scale -> quality gates. Composition only."""

from __future__ import annotations

import time

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from mathfactory.flows.fanout import RunnerConfig, run_sharded
from mathfactory.tasks.distill import distill
from mathfactory.tasks.distill import stage_name as kd_stage
from mathfactory.tasks.gate import STAGE as PROBLEMS
from mathfactory.tasks.gate import gate_problems
from mathfactory.tasks.influence import FEATURES, commit_features, score_seeds
from mathfactory.tasks.influence import STAGE as INFLUENCE
from mathfactory.tasks.seeds import STAGE as SEEDS
from mathfactory.tasks.seeds import make_seeds
from mathfactory.tasks.synthesis import SynthesisConfig
from mathfactory.tasks.synthesize import STAGE as OUTPUTS
from mathfactory.tasks.synthesize import commit_outputs
from mathfactory.tasks.synthesizer import STAGES as SYNTHESIZER
from mathfactory.tasks.synthesizer import fit_synthesizer
from mathfactory.tasks.verify import VerifyConfig


@flow(name="mathfactory-synthesis", task_runner=ThreadPoolTaskRunner(max_workers=1))
def synthesis(config: SynthesisConfig, lake: str, run_id: str, seed: int,
              runner: RunnerConfig | None = None, grading: VerifyConfig | None = None) -> dict[str, str]:
    """Every synthesis stage of run `run_id`; finished stages are skipped. Ends with `synth_problems`."""
    runner = runner or RunnerConfig()
    templates = config.teacher.templates
    uris = {SEEDS: make_seeds(config.seeds, lake, run_id, seed)}
    uris[kd_stage(1)] = distill(config.distill, config.teacher, lake, run_id, 1, seed)
    uris[SYNTHESIZER[1]] = fit_synthesizer(config.synthesizer, lake, run_id, 1, seed)

    started = time.time()
    shards = run_sharded(runner, FEATURES, config, lake, run_id, config.influence.shards, seed)
    uris[FEATURES] = commit_features(config.influence, templates, lake, run_id, shards, started)
    uris[INFLUENCE] = score_seeds(config.influence, lake, run_id)

    uris[kd_stage(2)] = distill(config.distill, config.teacher, lake, run_id, 2, seed)
    uris[SYNTHESIZER[2]] = fit_synthesizer(config.synthesizer, lake, run_id, 2, seed)

    started = time.time()
    shards = run_sharded(runner, OUTPUTS, config, lake, run_id, config.generate.shards, seed)
    uris[OUTPUTS] = commit_outputs(config.generate, templates, lake, run_id, shards, started)
    uris[PROBLEMS] = gate_problems(config.gates, config.teacher, lake, run_id, seed, grading)
    return uris
