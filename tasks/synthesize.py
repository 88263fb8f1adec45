"""Stage `synth_outputs`: seed texts x education stages -> what the trained synthesizer writes (SynthOutput), in
shards, through any engine (transformers here, vLLM on a GPU, or the synthesizer served over HTTP)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from mathfactory.tasks.core import synthesis
from mathfactory.tasks.core.records import SeedText, SynthOutput, derive_seed, stable_id
from mathfactory.tasks.distill import load_templates
from mathfactory.tasks.engines import EngineOptions, TransformersOptions, load_engine, local_model
from mathfactory.tasks.engines.base import SamplingParams
from mathfactory.tasks.seeds import SEEDS
from mathfactory.tasks.stage import Meter, Run, StageSpec
from mathfactory.tasks.synthesizer import synthesizer_dir

if TYPE_CHECKING:
    from mathfactory.tasks.synthesis import SynthesisConfig

STAGE = "synth_outputs"


class GenerateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: EngineOptions = Field(default_factory=TransformersOptions, description="Backend the synthesizer "
                                  "runs on (openai: the synthesizer served by `vllm serve`).")
    stages: list[str] | None = Field(None, description="Education stages to prompt (None: every template stage).")
    max_prompts: int | None = Field(2000, ge=1, description="Seed text x stage prompts, taken in order (None: all).")
    n: int = Field(1, ge=1, description="Outputs per prompt.")
    temperature: float = Field(0.6, ge=0, description="Sampling temperature.")
    max_new_tokens: int = Field(384, ge=1, description="Budget per output.")
    shards: int = Field(2, ge=1, description="Independent tasks the stage is split into.")


def prompts(cfg: GenerateConfig, stages: list[str], seeds: Iterator[SeedText]) -> Iterator[tuple[SeedText, str]]:
    """(seed text, stage) pairs: every stage of one text before the next text, at most `max_prompts`."""
    k = 0
    for s in seeds:
        for stage in stages:
            if cfg.max_prompts is not None and k >= cfg.max_prompts:
                return
            k += 1
            yield s, stage


def outputs(cfg: SynthesisConfig, run: Run, shard: int, meter: Meter) -> Iterator[SynthOutput]:
    """Shard `shard` of the (seed text, stage) prompts, written by the trained synthesizer."""
    gen, tmpl = cfg.generate, load_templates(cfg.teacher.templates)
    work = list(prompts(gen, gen.stages or list(tmpl.stages), run.read(SEEDS)))
    mine = work[shard::gen.shards]
    engine = load_engine(gen.engine, local_model(gen.engine, lambda: synthesizer_dir(run)), run.seed)
    # A synthesizer that runs on past its answer starts another problem: cut there.
    params = SamplingParams(n=gen.n, temperature=gen.temperature, max_new_tokens=gen.max_new_tokens,
                            stop=("\n" + synthesis.CUE,), seed=derive_seed("synthesize", run.seed, shard))
    chunk = max(1, 256 // gen.n)
    for i in tqdm(range(0, len(mine), chunk), desc=f"synthesize shard {shard}", disable=None):
        batch = mine[i:i + chunk]
        outs = engine.generate([tmpl.render(stage, s.text) for s, stage in batch], params)
        for (s, stage), completions in zip(batch, outs, strict=True):
            for k, c in enumerate(completions):
                meter.add(tokens=c.n_tokens)
                yield SynthOutput(stable_id(s.seed_id, stage, params.seed, k), s.seed_id, stage, c.text,
                                  c.n_tokens, c.finish_reason)


OUTPUTS = StageSpec(STAGE, SynthOutput, "mathfactory.tasks.synthesis:SynthesisConfig", outputs,
                    reads=("seeds", "synthesizer"), shards=lambda cfg, run: cfg.generate.shards, retries=2, needs="gpu",
                    identity=lambda c: {"generate": c.generate.model_dump(mode="json"),
                                        "templates": c.teacher.templates})
SPECS = {STAGE: OUTPUTS}
