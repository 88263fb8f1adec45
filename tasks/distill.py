"""Stages `kd_round1`, `kd_round2`: seed texts x education-stage prompts -> the teacher's problems and solutions
(TeacherCall rows), the knowledge-distillation data the synthesizer learns from (JiuZhang3.0 §2.2).

Round 1 distils from seed texts sampled at random; round 2 from the texts gradient influence selected
(tasks/influence.py), `samples` outputs each. Every finished request lands in the lake's request cache as it
arrives, so a crashed round resumes without paying twice; a request that still fails after retries is kept as a
row with its reason.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from mathfactory.tasks.core import synthesis
from mathfactory.tasks.core.records import SeedText, TeacherCall, derive_seed, stable_id
from mathfactory.tasks.engines import (
    OpenAIOptions,
    TransformersOptions,
    VLLMOptions,
    load_engine,
    local_model,
    model_name,
)
from mathfactory.tasks.engines.base import SamplingParams
from mathfactory.tasks.engines.teacher import Teacher
from mathfactory.tasks.seeds import SEEDS
from mathfactory.tasks.stage import Meter, Run, StageSpec, logger, summed
from mathfactory.tasks.storage import Lake

if TYPE_CHECKING:
    from mathfactory.tasks.synthesis import SynthesisConfig

PROMPTS = Path(__file__).parent / "prompts"
TOY_TEACHER = "toy-teacher"


def stage_name(round: int) -> str:
    return f"kd_round{round}"


class ToyTeacherOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["toy"] = "toy"


TeacherEngine = Annotated[ToyTeacherOptions | OpenAIOptions | TransformersOptions | VLLMOptions,
                          Field(discriminator="kind")]


class TeacherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: TeacherEngine = Field(default_factory=ToyTeacherOptions, description="toy: the built-in toy teacher; "
                                  "openai: a served model (GPT-4, `vllm serve`, SGLang); transformers/vllm: local.")
    model_dir: str | None = Field(None, description="transformers/vllm: the teacher's model directory.")
    templates: str = Field("compact", description="Prompt templates: a name in tasks/prompts (synthesis: the full "
                           "education-stage set; compact: the same sections, terse, which the embedded default's "
                           "tiny synthesizer learns faster) or a YAML path.")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature of teacher requests.")
    max_new_tokens: int = Field(512, ge=1, description="Budget per teacher output.")
    attempts: int = Field(3, ge=1, description="Tries per request (errors and unparseable outputs) before it is "
                                               "recorded as failed.")
    max_concurrency: int = Field(8, ge=1, description="Requests in flight at once.")


class DistillConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stages: list[str] | None = Field(None, description="Education stages to prompt (None: every template stage).")
    round1_seeds: int = Field(200, ge=1, description="Round 1: seed texts sampled at random, each under every stage.")
    round2_samples: int = Field(2, ge=1, description="Round 2: teacher outputs per (selected text, stage).")


def load_templates(name: str) -> synthesis.Templates:
    path = Path(name) if name.endswith((".yaml", ".yml")) else PROMPTS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROMPTS.glob("*.yaml")))
        raise ValueError(f"templates: no {path}; known: {known} (or a .yaml path)")
    return synthesis.Templates.from_dict(yaml.safe_load(path.read_text()), origin=str(path))


def teacher_model(cfg: TeacherConfig) -> str:
    """The teacher's name in request keys and rows: the same request to another teacher is another request."""
    if isinstance(cfg.engine, ToyTeacherOptions):
        return TOY_TEACHER
    return model_name(cfg.engine, local_model(cfg.engine, lambda: cfg.model_dir))


def teacher(cfg: TeacherConfig, lake: str, validate=None) -> Teacher:
    """A Teacher client over the configured engine, caching in the lake's `teacher` request cache."""
    if isinstance(cfg.engine, ToyTeacherOptions):
        from mathfactory.tasks.engines.toy_teacher import ToyTeacher

        engine = ToyTeacher(load_templates(cfg.templates))
    else:
        engine = load_engine(cfg.engine, cfg.model_dir)
    return Teacher(engine, Lake(lake).request_cache("teacher"), teacher_model(cfg), attempts=cfg.attempts,
                   validate=validate, max_concurrency=cfg.max_concurrency)


def check_output(text: str) -> str | None:
    """None for a usable teacher output, else why not (the Teacher client retries, then records it)."""
    parsed = synthesis.parse(text)
    if isinstance(parsed, str):
        return f"unparseable: {parsed}"
    return None if parsed.answer else "unparseable: no final answer"


def _requests(cfg: DistillConfig, templates: synthesis.Templates, round: int, seeds: list[SeedText],
              seed: int) -> list[tuple[SeedText, str]]:
    stages = cfg.stages or list(templates.stages)
    if round == 1:
        seeds = random.Random(stable_id("kd-round1", seed)).sample(seeds, min(cfg.round1_seeds, len(seeds)))
        samples = 1
    else:
        samples = cfg.round2_samples
    return [(s, stage) for s in seeds for stage in stages for _ in range(samples)]


def _round(round: int):
    def calls(cfg: SynthesisConfig, run: Run, shard: int, meter: Meter) -> list[TeacherCall]:
        """Round `round` of distillation: one TeacherCall per request, answered or failed with its reason."""
        templates = load_templates(cfg.teacher.templates)
        seeds = list(run.read(SEEDS))
        if round == 2:
            from mathfactory.tasks.influence import (
                SCORES,  # influence reads round 1: imported here, not on top
            )

            chosen = {s.seed_id for s in run.read(SCORES) if s.selected}
            seeds = [s for s in seeds if s.seed_id in chosen]
        requests = _requests(cfg.distill, templates, round, seeds, run.seed)
        params = SamplingParams(temperature=cfg.teacher.temperature, max_new_tokens=cfg.teacher.max_new_tokens,
                                seed=derive_seed("kd", round, run.seed))
        prompts = [templates.render(stage, s.text) for s, stage in requests]
        answers = teacher(cfg.teacher, run.lake, validate=check_output).ask(prompts, params)
        return [TeacherCall(**asdict(a), round=round, seed_id=s.seed_id, level=stage, prompt=prompt)
                for (s, stage), prompt, a in zip(requests, prompts, answers, strict=True)]

    return calls


def tally_calls(rows) -> dict:
    rows = list(rows)
    failed = next((r.reason for r in rows if not r.ok), None)
    return {"rows": len(rows), **cost(rows), **({"failure": failed} if failed else {})}


def _summarize(cfg: SynthesisConfig, run: Run, shards: list[dict]) -> dict:
    """The round's cost; a round whose every request failed fails the stage, naming one reason."""
    total = summed(cfg, run, shards)
    if total["failed"]:
        logger().warning("distillation: %d of %d teacher requests failed, e.g. %s", total["failed"],
                         total["requests"], total["failure"])
    if total["failed"] == total["requests"]:
        raise RuntimeError(f"distillation: all {total['requests']} teacher requests failed, e.g. {total['failure']}")
    return {**total, "teacher": teacher_model(cfg.teacher)}


SPECS = {stage_name(r): StageSpec(stage_name(r), TeacherCall, "mathfactory.tasks.synthesis:SynthesisConfig",
                                  _round(r), reads=("seeds", "influence") if r == 2 else ("seeds",),
                                  tally=tally_calls, summarize=_summarize,
                                  identity=lambda c: {"distill": c.distill.model_dump(mode="json"),
                                                      "teacher": c.teacher.model_dump(mode="json")})
         for r in (1, 2)}


def cost(rows: list[TeacherCall]) -> dict[str, int]:
    """What a round paid: calls answered by the teacher (cached ones are free), failures, tokens billed."""
    paid = [r for r in rows if not r.cached]
    return {"requests": len(rows), "teacher_calls": sum(r.attempts for r in paid), "cached": len(rows) - len(paid),
            "failed": sum(not r.ok for r in rows), "prompt_tokens": sum(r.prompt_tokens for r in paid),
            "completion_tokens": sum(r.completion_tokens for r in paid)}
