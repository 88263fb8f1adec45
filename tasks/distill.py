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
from typing import Annotated, Literal

import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from mathfactory.tasks.core import synthesis
from mathfactory.tasks.core.records import SeedScore, SeedText, TeacherCall, stable_id
from mathfactory.tasks.engines import OpenAIOptions, TransformersOptions, VLLMOptions, load_engine, model_name
from mathfactory.tasks.engines.base import SamplingParams
from mathfactory.tasks.engines.teacher import Teacher
from mathfactory.tasks.stage import Stage, logger
from mathfactory.tasks.storage import Lake

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
    return model_name(cfg.engine, None if isinstance(cfg.engine, OpenAIOptions) else cfg.model_dir)


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


@task(name="distill", cache_policy=NO_CACHE, retries=1)
def distill(cfg: DistillConfig, teacher_cfg: TeacherConfig, lake: str, run_id: str, round: int, seed: int) -> str:
    """Round `round` of distillation: TeacherCall rows, one per request, and the round's cost in the marker."""
    if round not in (1, 2):
        raise ValueError(f"distillation round must be 1 or 2, got {round}")
    st = Stage(lake, run_id, stage_name(round), TeacherCall, config={"distill": cfg.model_dump(mode="json"),
                                                                     "teacher": teacher_cfg.model_dump(mode="json")})
    if st.done:
        return st.uri
    templates = load_templates(teacher_cfg.templates)
    seeds = list(st.lake.read(run_id, "seeds", SeedText))
    if round == 2:
        chosen = {s.seed_id for s in st.lake.read(run_id, "influence", SeedScore) if s.selected}
        seeds = [s for s in seeds if s.seed_id in chosen]
    requests = _requests(cfg, templates, round, seeds, seed)
    client = teacher(teacher_cfg, lake, validate=check_output)
    params = SamplingParams(temperature=teacher_cfg.temperature, max_new_tokens=teacher_cfg.max_new_tokens,
                            seed=int(stable_id("kd", round, seed), 16) % 2**31)
    prompts = [templates.render(stage, s.text) for s, stage in requests]
    answers = client.ask(prompts, params)
    rows = [TeacherCall(**asdict(a), round=round, seed_id=s.seed_id, stage=stage, prompt=prompt)
            for (s, stage), prompt, a in zip(requests, prompts, answers, strict=True)]
    st.write(0, rows)
    failed = [r for r in rows if not r.ok]
    if failed:
        logger().warning("%s: %d of %d teacher requests failed, e.g. %s", st.name, len(failed), len(rows),
                         failed[0].reason)
    if len(failed) == len(rows):
        raise RuntimeError(f"{st.name}: all {len(rows)} teacher requests failed, e.g. {failed[0].reason}")
    return st.commit(**cost(rows), teacher=teacher_model(teacher_cfg))


def cost(rows: list[TeacherCall]) -> dict[str, int]:
    """What a round paid: calls answered by the teacher (cached ones are free), failures, tokens billed."""
    paid = [r for r in rows if not r.cached]
    return {"requests": len(rows), "teacher_calls": sum(r.attempts for r in paid), "cached": len(rows) - len(paid),
            "failed": sum(not r.ok for r in rows), "prompt_tokens": sum(r.prompt_tokens for r in paid),
            "completion_tokens": sum(r.completion_tokens for r in paid)}
