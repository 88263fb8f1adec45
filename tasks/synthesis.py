"""The synthesis path's configuration: one small config per stage, composed (flows/synthesis.py runs them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from mathfactory.tasks.distill import DistillConfig, TeacherConfig
from mathfactory.tasks.gate import GatesConfig
from mathfactory.tasks.influence import InfluenceConfig
from mathfactory.tasks.seeds import SeedsConfig
from mathfactory.tasks.synthesize import GenerateConfig
from mathfactory.tasks.synthesizer import SynthesizerConfig


class SynthesisConfig(BaseModel):
    """Seed texts -> teacher distillation -> synthesizer -> gradient-influence selection -> second distillation
    -> the synthesizer writing problems at scale -> quality gates (JiuZhang3.0)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seeds: SeedsConfig = Field(default_factory=SeedsConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    synthesizer: SynthesizerConfig = Field(default_factory=SynthesizerConfig)
    influence: InfluenceConfig = Field(default_factory=InfluenceConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    gates: GatesConfig = Field(default_factory=GatesConfig)
