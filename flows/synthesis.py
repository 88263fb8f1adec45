"""The synthesis flow: seed texts -> teacher (round 1) -> synthesizer -> gradient influence -> teacher on the
selected texts (round 2) -> synthesizer -> problems written at scale -> quality gates. Composition only."""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from mathfactory.flows.executor import execute
from mathfactory.flows.fanout import RunnerConfig
from mathfactory.tasks.distill import SPECS as DISTILLED
from mathfactory.tasks.distill import stage_name as kd_stage
from mathfactory.tasks.gate import SYNTHESIZED
from mathfactory.tasks.influence import FEATURES_SPEC, SCORES
from mathfactory.tasks.seeds import SEEDS
from mathfactory.tasks.stage import Run
from mathfactory.tasks.synthesis import SynthesisConfig
from mathfactory.tasks.synthesize import OUTPUTS
from mathfactory.tasks.synthesizer import SPECS as SYNTHESIZERS
from mathfactory.tasks.synthesizer import STAGES as SYNTHESIZER


@flow(name="mathfactory-synthesis", flow_run_name="{run.run_id}-synthesis",
      task_runner=ThreadPoolTaskRunner(max_workers=1))
def synthesis(config: SynthesisConfig, run: Run, runner: RunnerConfig | None = None) -> dict[str, str]:
    """Every synthesis stage of `run`; finished stages are skipped. Ends with `synth_problems`."""
    uris = {SEEDS.name: execute(SEEDS, config.seeds, run)}
    uris[kd_stage(1)] = execute(DISTILLED[kd_stage(1)], config, run)
    uris[SYNTHESIZER[1]] = execute(SYNTHESIZERS[SYNTHESIZER[1]], config.synthesizer, run, runner)

    uris[FEATURES_SPEC.name] = execute(FEATURES_SPEC, config, run, runner)
    uris[SCORES.name] = execute(SCORES, config.influence, run)

    uris[kd_stage(2)] = execute(DISTILLED[kd_stage(2)], config, run)
    uris[SYNTHESIZER[2]] = execute(SYNTHESIZERS[SYNTHESIZER[2]], config.synthesizer, run, runner)

    uris[OUTPUTS.name] = execute(OUTPUTS, config, run, runner)
    uris[SYNTHESIZED.name] = execute(SYNTHESIZED, config, run)
    return uris
