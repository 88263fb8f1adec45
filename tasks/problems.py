"""Stage `problems`: a problem source (toy teacher, star graphs, GSM8K, MATH500, files, the synthesizer) -> Problem
dataset with train/test splits."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from mathfactory.tasks.core.records import Problem, Quarantined
from mathfactory.tasks.domains import stargraph, toy
from mathfactory.tasks.gate import SYNTHESIZED
from mathfactory.tasks.screen import ProblemGatesConfig, screened
from mathfactory.tasks.stage import Meter, Run, StageSpec


class ProblemsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["toy", "stargraph", "gsm8k", "math500", "files", "synthesizer"] = Field(
        "toy", description="Where problems come from: the toy teacher directly, path-star graphs (the first-move "
        "didactic), GSM8K, MATH500, your files, or the synthesis path (train problems written by the trained "
        "synthesizer; see `synthesis`).")
    test_source: Literal["toy", "gsm8k", "math500"] = Field("toy", description="source=synthesizer: where the "
                                                            "held-out test problems come from.")
    n_train: int | None = Field(4000, ge=0, description="Train problems (None: all the source has).")
    n_test: int | None = Field(250, ge=0, description="Held-out test problems (None: all the source has).")
    levels: list[str] = Field(list(toy.LEVELS), validation_alias=AliasChoices("levels", "stages"),
                              description="Levels, cycled evenly: toy education levels (`stages` before schema "
                              "4), or for source=stargraph graph shapes d{degree}-l{length} such as d2-l5.")
    seed: int | None = Field(None, description="Seed of the toy problem pool (None: the run's seed). An experiment "
                             "fixes it, so cells that differ in seed share their problems and held-out set.")
    path: str | None = Field(None, description="GSM8K/MATH500 folder or file (path or fsspec URL); None: ../shared/data.")
    files: list[str] = Field([], description="source=files: JSONL/Parquet files of GSM8K-format rows "
                                             "(question, answer with `#### N`), all taken as train problems.")
    gates: ProblemGatesConfig = Field(default_factory=ProblemGatesConfig, description="Decontamination and "
                                      "deduplication of the train problems, on every source, before sampling.")

    @model_validator(mode="after")
    def _star_graph_levels(self) -> ProblemsConfig:
        # Here, not at generation: `levels` defaults to the toy's, and a forgotten override should fail at once.
        if self.source == "stargraph":
            for name in self.levels:
                stargraph.parse_level(name)
        return self


def _source(cfg: ProblemsConfig, split: str, run: Run):
    n, seed = {"train": cfg.n_train, "test": cfg.n_test}[split], run.seed if cfg.seed is None else cfg.seed
    if cfg.source == "synthesizer":
        if split == "train":
            return itertools.islice(run.read(SYNTHESIZED), n)
        return _source(cfg.model_copy(update={"source": cfg.test_source}), split, run)
    if cfg.source == "toy":
        return toy.generate(n or 0, split, seed, cfg.levels)
    if cfg.source == "stargraph":
        return stargraph.generate(n or 0, split, seed, cfg.levels)
    if cfg.source == "files":
        from mathfactory.tasks.domains import gsm8k

        # Seed data a user (or the nightly refresh) drops in: there is no held-out split in it.
        rows = itertools.chain.from_iterable(gsm8k.load("train", f) for f in cfg.files) if split == "train" else []
        return itertools.islice(rows, n)
    if cfg.source == "gsm8k":
        from mathfactory.tasks.domains import gsm8k

        return itertools.islice(gsm8k.load(split, cfg.path), n)
    from mathfactory.tasks.domains import math500

    # MATH500 is a test set only: it has no train split to fine-tune on.
    return itertools.islice(math500.load("test", cfg.path), n) if split == "test" else []


def problems(cfg: ProblemsConfig, run: Run, shard: int, meter: Meter) -> Iterator[Problem]:
    """Both splits as one dataset (column `split`): the train problems that pass the gates (tasks/screen.py), then
    the test split; bad source rows and dropped problems go to quarantine with where they came from and why."""
    splits: dict[str, list[Problem]] = {"train": [], "test": []}
    for split, rows in splits.items():
        for item in _source(cfg, split, run):
            if isinstance(item, Quarantined):
                meter.refuse(item.origin, item.reason, item.excerpt)
            else:
                rows.append(item)
    yield from screened(cfg.gates, run, splits["train"], splits["test"], meter)
    yield from splits["test"]


def split_sizes(rows: Iterable[Problem]) -> dict[str, Any]:
    """A shard's figures: its rows, and how many are in each split (evaluation is skipped without its split)."""
    splits = Counter(p.split for p in rows)
    return {"rows": splits.total(), "splits": dict(splits)}


FILES = {"gsm8k": ("train", "test"), "math500": ("test",)}  # the splits each real data set has a file of


def sources(cfg: ProblemsConfig) -> list[str]:
    """The files problems are read from (none for the toy teacher)."""
    if cfg.source == "files":
        return list(cfg.files)
    from mathfactory.tasks.domains import gsm8k, math500

    domains = {"gsm8k": gsm8k, "math500": math500}
    read = [(cfg.test_source, "test")] if cfg.source == "synthesizer" else [(cfg.source, s) for s in ("train", "test")]
    return [domains[name].resolve(cfg.path, name, domains[name].DEFAULT_DIR, split) for name, split in read
            if split in FILES.get(name, ())]


PROBLEMS = StageSpec("problems", Problem, ProblemsConfig, problems, tally=split_sizes, sources=sources,
                     reads=lambda cfg: (SYNTHESIZED.name,) if cfg.source == "synthesizer" else ())
SPECS = {PROBLEMS.name: PROBLEMS}
