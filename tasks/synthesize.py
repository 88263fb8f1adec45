"""Stage `synth_outputs`: seed texts x education stages -> what the trained synthesizer writes (SynthOutput), in
shards, through any engine (transformers here, vLLM on a GPU, or the synthesizer served over HTTP)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from mathfactory.tasks.core import synthesis
from mathfactory.tasks.core.records import SeedText, SynthOutput, stable_id
from mathfactory.tasks.distill import load_templates
from mathfactory.tasks.engines import EngineOptions, OpenAIOptions, TransformersOptions, load_engine
from mathfactory.tasks.engines.base import SamplingParams
from mathfactory.tasks.stage import Stage, token_rate
from mathfactory.tasks.synthesizer import synthesizer_dir

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


def outputs_stage(cfg: GenerateConfig, templates: str, lake: str, run_id: str) -> Stage:
    return Stage(lake, run_id, STAGE, SynthOutput, config={"generate": cfg.model_dump(mode="json"),
                                                           "templates": templates})


@task(name="synthesize-shard", cache_policy=NO_CACHE, retries=2)
def synthesize_shard(cfg: GenerateConfig, templates: str, lake: str, run_id: str, shard: int, seed: int) -> dict:
    st = outputs_stage(cfg, templates, lake, run_id)
    if st.done:
        return {"shard": shard, "skipped": True}
    if st.has_shard(shard):
        landed = [r.n_tokens for r in st.lake.read_part(run_id, STAGE, shard, SynthOutput)]
        return {"shard": shard, "rows": len(landed), "tokens": sum(landed), "seconds": 0.0}
    tmpl = load_templates(templates)
    work = list(prompts(cfg, cfg.stages or list(tmpl.stages), st.lake.read(run_id, "seeds", SeedText)))
    mine = work[shard::cfg.shards]
    model_dir = None if isinstance(cfg.engine, OpenAIOptions) else synthesizer_dir(lake, run_id)
    engine = load_engine(cfg.engine, model_dir, seed)
    # A synthesizer that runs on past its answer starts another problem: cut there.
    params = SamplingParams(n=cfg.n, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                            stop=("\n" + synthesis.CUE,),
                            seed=int(stable_id("synthesize", seed, shard), 16) % 2**31)
    chunk = max(1, 256 // cfg.n)
    tokens, t0 = 0, time.perf_counter()

    def rows() -> Iterator[SynthOutput]:
        nonlocal tokens
        for i in tqdm(range(0, len(mine), chunk), desc=f"synthesize shard {shard}", disable=None):
            batch = mine[i:i + chunk]
            outs = engine.generate([tmpl.render(stage, s.text) for s, stage in batch], params)
            for (s, stage), completions in zip(batch, outs, strict=True):
                for k, c in enumerate(completions):
                    tokens += c.n_tokens
                    yield SynthOutput(stable_id(s.seed_id, stage, params.seed, k), s.seed_id, stage, c.text,
                                      c.n_tokens, c.finish_reason)

    n = st.write(shard, rows())
    return {"shard": shard, "rows": n, "tokens": tokens, "seconds": round(time.perf_counter() - t0, 2)}


@task(name="synth-outputs", cache_policy=NO_CACHE)
def commit_outputs(cfg: GenerateConfig, templates: str, lake: str, run_id: str, shards: list[dict],
                   started: float) -> str:
    st = outputs_stage(cfg, templates, lake, run_id)
    if st.done:
        return st.uri
    return st.commit(started, **token_rate([s for s in shards if not s.get("skipped")]))
