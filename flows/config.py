"""Preset YAML + overrides -> FactoryConfig, the pipeline flow's one parameter (a form in the Prefect UI)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mathfactory.flows.fanout import RunnerConfig
from mathfactory.tasks.core.records import derive_seed
from mathfactory.tasks.credit import CreditConfig
from mathfactory.tasks.evaluate import EvalConfig
from mathfactory.tasks.pairs import PairsConfig
from mathfactory.tasks.policy import PolicyConfig
from mathfactory.tasks.problems import ProblemsConfig
from mathfactory.tasks.sample import SampleConfig
from mathfactory.tasks.synthesis import SynthesisConfig
from mathfactory.tasks.train import TrainConfig
from mathfactory.tasks.verify import VerifyConfig

PRESETS = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A bad preset, override or date; the message names it."""


class FactoryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("toy", pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Preset name; begins every run id.")
    lake: str = Field("./lake", description="Where datasets land: a path or fsspec URL. Not part of a run's identity.")
    seed: int = Field(0, description="Root seed; dated runs derive theirs from it and the date.")
    problems: ProblemsConfig = Field(default_factory=ProblemsConfig)
    synthesis: SynthesisConfig = Field(default_factory=SynthesisConfig, description="How problems are written "
                                       "when problems.source=synthesizer.")
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    credit: CreditConfig = Field(default_factory=CreditConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig, description="Where shards of sharded stages run; "
                                 "like the lake, not part of a run's identity.")

    @model_validator(mode="after")
    def _train_split_or_a_model(self) -> FactoryConfig:
        if self.problems.source == "math500" and not self.policy.pretrained:
            raise ValueError("MATH500 is a test set with no train split, so no policy can be trained on it: set "
                             "policy.pretrained to evaluate an existing model on it, or use problems.test_source="
                             "math500 with source=synthesizer")
        return self

    def config_hash(self) -> str:
        """Hash of everything that decides the data (the lake's location, where shards run, and the synthesis
        settings of a run that does not synthesize do not)."""
        unused = {"synthesis"} if self.problems.source != "synthesizer" else set()
        identity = self.model_dump(mode="json", exclude={"lake", "runner", *unused})
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]

    def run_id(self, date: str | None = None) -> str:
        """Same config (and date) -> same run id -> same place in the lake, so reruns find finished stages."""
        return f"{self.name}-{check_date(date)}-{self.config_hash()}" if date else f"{self.name}-{self.config_hash()}"

    def seed_for(self, date: str | None = None) -> int:
        return self.seed if date is None else derive_seed(self.seed, check_date(date))


def check_date(date: str) -> str:
    try:
        return dt.date.fromisoformat(date).isoformat()
    except (TypeError, ValueError):
        raise ConfigError(f"date: expected YYYY-MM-DD, got {date!r}") from None


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def preset_file(folder: Path, name: str, what: str = "preset") -> Path:
    """A preset by name in `folder`, or a YAML file path; an unknown name is refused with the valid ones."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else folder / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise ConfigError(f"{what}: unknown preset {name!r}; valid: {known} or a .yaml path")
    return path


def field_errors(e: ValidationError) -> str:
    """`section.field: why` for each field pydantic refused."""
    # A whole-model check has no field; pydantic prefixes its message with "Value error, ".
    return "; ".join((f"{'.'.join(map(str, err['loc']))}: " if err["loc"] else "")
                     + err["msg"].removeprefix("Value error, ") for err in e.errors())


def load_preset(name: str, overrides: list[str] = ()) -> FactoryConfig:
    """A preset by name (or a YAML file path), with `section.field=value` overrides applied on top."""
    path = preset_file(PRESETS, name)
    data = yaml.safe_load(path.read_text()) or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected section.field=value")
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[leaf] = yaml.safe_load(raw) if raw.strip() else None
    try:
        return FactoryConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"config from {path.name}: {field_errors(e)}") from None
