"""The scaling experiment (Setlur et al. 2024, Figures 2 and 5): the factory on the first N problems of one fixed
pool for several N (|D_syn|) and seeds, every method evaluated on one held-out set shared by all cells; then
power-law fits, data multipliers with bootstrap intervals, and a self-contained HTML report in the lake.

Each cell is a pipeline run whose id is its config's hash, so a rerun of a partly finished sweep finds the finished
stages and redoes only what is missing. With `base` set, a base model is trained first (a run on its own problem
pool) and every cell's pi_sft and RFT start from it, as the paper fine-tunes a pretrained base."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from prefect import flow
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mathfactory.flows.config import ConfigError, FactoryConfig, field_errors, load_preset, preset_file
from mathfactory.flows.executor import execute
from mathfactory.flows.pipeline import pipeline
from mathfactory.tasks.core import scaling
from mathfactory.tasks.core.methods import display_order
from mathfactory.tasks.evaluate import SPECS as EVALUATIONS
from mathfactory.tasks.evaluate import method_of
from mathfactory.tasks.pairs import SETS
from mathfactory.tasks.policy import POLICY, policy_dir
from mathfactory.tasks.problems import PROBLEMS
from mathfactory.tasks.stage import Run, logger
from mathfactory.tasks.storage import Lake

EXPERIMENTS = Path(__file__).parent / "presets" / "experiments"


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("sweep", pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Names the experiment's folder "
                      "(`experiments/{name}` in the lake) and begins every cell's run id.")
    lake: str = Field("./lake", description="Where the cells' runs and the report land.")
    preset: str = Field("toy", description="The pipeline preset every cell starts from.")
    overrides: list[str] = Field([], description="`section.field=value` overrides applied to every cell.")
    base: list[str] | None = Field(None, description="Overrides (of the preset alone) of the run whose pi_sft is "
                                   "the base model, on its own problem pool; None: every cell's pi_sft starts from "
                                   "a random init, or from what `overrides` set as policy.base.")
    axis: Literal["size", "sft_steps"] = Field("size", description="What varies between cells: |D_syn| (the "
                                               "scaling experiment), or pi_sft's optimizer steps at one |D_syn| "
                                               "(the star-graph didactic: per-step DPO from under- and "
                                               "over-trained SFT checkpoints).")
    sizes: list[int] = Field([64, 128, 256], min_length=1, description="|D_syn|: each cell's first N train "
                             "problems of the pool; its rollouts, credit and sets come from the same N. One "
                             "size when the axis is sft_steps.")
    sft_steps: list[int] = Field([], description="axis sft_steps: pi_sft's optimizer steps, one cell each.")
    seeds: list[int] = Field([0, 1], min_length=1, description="Cell seeds (training and sampling); the problem "
                             "pool and the held-out set stay fixed.")
    pool_seed: int = Field(0, description="Seed of the problem pool every cell draws from.")
    multiplier_at: list[int] | None = Field(None, description="|D_syn| sizes at which data multipliers are "
                                            "reported (None: every size).")
    bootstrap: int = Field(1000, ge=50, description="Bootstrap replicates (over held-out problems and seeds).")
    q_problems: int = Field(50, ge=0, description="Figure 7: held-out problems along whose reference solutions "
                            "every model of the largest cell is probed for Q (0: skip).")
    q_m: int = Field(4, ge=1, description="Figure 7: continuations per reference prefix.")

    @model_validator(mode="after")
    def _axis(self) -> ExperimentConfig:
        if self.axis == "size" and len(set(self.sizes)) < 2:
            raise ValueError("a size sweep needs at least 2 distinct sizes to fit a power law")
        if self.axis == "sft_steps" and (len(self.sizes) != 1 or len(set(self.sft_steps)) < 2):
            raise ValueError("axis sft_steps: give one size and at least 2 distinct sft_steps")
        return self

    @property
    def values(self) -> list[int]:
        """The axis's value per cell (seeds aside)."""
        return self.sizes if self.axis == "size" else self.sft_steps


def load_experiment(name: str, overrides: list[str] = ()) -> ExperimentConfig:
    """An experiment preset by name (flows/presets/experiments) or .yaml path, with `field=value` overrides."""
    path = preset_file(EXPERIMENTS, name, "experiment")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"experiment {path}: not valid YAML: {e}") from None
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected field=value")
        data[key.strip()] = yaml.safe_load(raw)
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"experiment {path.name}: {field_errors(e)}") from None


def _factory(cfg: ExperimentConfig, overrides: list[str]) -> FactoryConfig:
    return load_preset(cfg.preset, overrides).model_copy(update={"lake": cfg.lake})


def base_config(cfg: ExperimentConfig) -> FactoryConfig:
    """The base's run: the preset with `base` overrides only, so changing how cells train or sample never
    retrains it."""
    return _factory(cfg, [f"name={cfg.name}-base", f"problems.seed={cfg.pool_seed}", *cfg.base])


def cell_config(cfg: ExperimentConfig, value: int, seed: int, base: str | None) -> FactoryConfig:
    """One cell (`value` on the axis): the first |D_syn| train problems of the pool are D_syn; a size sweep samples,
    credits and pairs them whole, a sft_steps sweep as much of them as the preset says."""
    # The seed is the run's (sampling, DPO, RFT) and pi_sft's own (its data order; its init too without a base).
    cell = [f"name={cfg.name}", f"seed={seed}", f"policy.seed={seed}", "sample.splits=[train]"]
    if cfg.axis == "size":
        cell += [f"problems.n_train={value}", f"sample.problems_per_split={value}", f"credit.problems={value}"]
    else:  # one D_syn; how many of its problems are sampled and credited is the preset's to say
        cell += [f"problems.n_train={cfg.sizes[0]}", f"policy.max_steps={value}"]
    if base:
        cell += [f"policy.base={base}", f"train.base={base}"]
    return _factory(cfg, [*cfg.overrides, f"problems.seed={cfg.pool_seed}", *cell])


def train_base(config: FactoryConfig) -> str:
    """The base model's run (problems, then its pi_sft); returns its lake reference."""
    run = Run(lake=config.lake, run_id=config.run_id(), seed=config.seed, grading=config.verify)
    execute(PROBLEMS, config.problems, run)
    execute(POLICY, config.policy, run, config.runner)
    return f"runs/{run.run_id}/{POLICY.name}"


def collect(lake: Lake, cells: dict[tuple[int, int], str]) -> tuple[dict, dict]:
    """Per method, per (size, seed): greedy correctness on the held-out problems every cell evaluated, in one
    order; and each cell's cost (seconds and tokens per stage kind, credit continuations)."""
    correct: dict[str, dict[tuple[int, int], dict[str, bool]]] = {}
    cost = {}
    for key, run_id in cells.items():
        stages = lake.stages(run_id)
        for stage in stages:
            if stage.startswith("eval_"):
                rows = lake.read(run_id, stage, EVALUATIONS[stage].record)
                correct.setdefault(method_of(stage), {})[key] = {r.problem_id: r.greedy_correct for r in rows}
        metrics = {s: m.get("metrics", {}) for s, m in stages.items()}
        cost[f"{key[0]}/{key[1]}"] = {
            **{s: {"seconds": m.get("seconds", 0.0), "tokens": metrics[s].get("tokens", 0)} for s, m in stages.items()},
            "continuations": metrics.get("credit", {}).get("continuations", 0)}
    shared = set.intersection(*(set(v) for per in correct.values() for v in per.values())) if correct else set()
    order = sorted(shared)
    results = {m: {k: np.array([v[p] for p in order], dtype=bool) for k, v in per.items()}
               for m, per in correct.items()}
    return results, {"problems": len(order), "cells": cost}


def diagnostics(lake: Lake, run_id: str, base: str | None) -> dict:
    """On one cell: Figure 3, the NLL per token of D_syn's solutions and of the policy's own correct ones (the RFT
    set) for the problems that have both, under the model RFT starts from; and three credited rollouts with their
    pit marked."""
    from mathfactory.flows.report import credit_examples
    from mathfactory.tasks.models.likelihood import completion_nll

    run = Run(lake=lake.url, run_id=run_id)
    own = list(run.read(SETS["rft"]))
    solved = {r.problem_id for r in own}
    d_syn = [r for r in run.read(SETS["sft"]) if r.problem_id in solved]
    model = lake.model(base) if base else policy_dir(run)
    rows = lambda examples: [{"prompt": r.prompt, "completion": r.completion} for r in examples]  # noqa: E731
    return {"run": run_id, "model": base or f"runs/{run_id}/{POLICY.name}", "problems": len(solved),
            "nll_d_syn": completion_nll(model, rows(d_syn)), "nll_self": completion_nll(model, rows(own)),
            "credit_examples": credit_examples(lake, run_id, 3)}


def checkpoints(lake: Lake, cells: dict[tuple[int, int], str]) -> dict:
    """Figure 8a's ingredients per cell: pi_sft's logged SFT losses, and what credit says of step 1, the critical
    step on star graphs: mean Q_1 over the wrong rollouts where it was estimated, and the share of pits there."""
    from mathfactory.tasks.credit import CREDIT

    out = {}
    for (value, seed), run_id in cells.items():
        run = Run(lake=lake.url, run_id=run_id)
        if run.marker(CREDIT.name) is None:
            continue
        rows = list(run.read(CREDIT))
        q1 = [r.q for r in rows if r.step_index == 1 and r.q is not None]
        pits = [r.step_index for r in rows if r.is_pit]
        out[f"{value}/{seed}"] = {"steps": value, "losses": run.metrics(POLICY.name).get("losses", []),
                                  "q1": sum(q1) / len(q1) if q1 else None, "q1_n": len(q1),
                                  "pits": len(pits), "pit_at_1": sum(p == 1 for p in pits)}
    return out


def q_values(lake: Lake, cfg: ExperimentConfig, cell: FactoryConfig, run_id: str, methods: list[str]) -> dict:
    """Figure 7 on one cell: each method's model's mean Q per step along the reference solutions of the first
    `q_problems` held-out problems, continued as credit continues (its temperature and budget). Kept in the lake
    beside the report, so a rerun of a finished sweep does not sample it again."""
    from mathfactory.tasks.evaluate import model_dir
    from mathfactory.tasks.qvalues import q_along_reference

    key = {"run": run_id, "problems": cfg.q_problems, "m": cfg.q_m, "methods": methods}
    path = f"experiments/{cfg.name}/q_values.json"
    if (old := lake.read_file(path)) and (done := json.loads(old))["key"] == key:
        return done
    run = Run(lake=lake.url, run_id=run_id, seed=cell.seed, grading=cell.verify)
    held_out = [p for p in run.read(PROBLEMS) if p.split == "test"][: cfg.q_problems]
    curves = {m: q_along_reference(model_dir(run, m), held_out, cfg.q_m, temperature=cell.credit.temperature,
                                   max_new_tokens=cell.credit.max_new_tokens, seed=cell.seed, grading=run.grading)
              for m in methods}
    done = {"key": key, **key, "curves": curves}
    lake.write_file(path, json.dumps(done).encode())
    return done


def fitted_cells(cells: dict, seeds: list[int]) -> dict | None:
    """A method's cells at the sizes where it was evaluated for every seed (the bootstrap pairs problems and seeds
    across cells), if there are two sizes to fit: per-step DPO has no pairs where a memorizing pi_sft samples no
    wrong answers (the smallest cells), and is fitted and read where it has them. None: too few to fit."""
    sizes = {size for size, _ in cells if all((size, seed) in cells for seed in seeds)}
    return {k: c for k, c in cells.items() if k[0] in sizes} if len(sizes) >= 2 else None


def experiment_name() -> str:
    """The flow run's name: `experiment-{name}`; each cell's pipeline run carries its run id."""
    return f"experiment-{ExperimentConfig.model_validate(flow_run.parameters.get('config') or {}).name}"


@flow(name="mathfactory-experiment", flow_run_name=experiment_name, task_runner=ThreadPoolTaskRunner(max_workers=1))
def experiment(config: ExperimentConfig | None = None) -> dict:
    """Every cell of the sweep (finished stages skipped), then fits, multipliers and the report."""
    from mathfactory.flows import experiment_report

    config = config or ExperimentConfig()
    log, lake = logger(), Lake(config.lake)
    base = train_base(base_config(config)) if config.base is not None else None
    cells, failed = {}, {}
    for value in config.values:
        for seed in config.seeds:
            cell = cell_config(config, value, seed, base)
            cells[(value, seed)] = cell.run_id()
            try:
                pipeline(cell)
            except Exception as e:  # noqa: BLE001 - one cell (or one method in it) failing leaves the rest
                failed[f"{value}/{seed}"] = f"{type(e).__name__}: {e}"
                log.error("cell %s=%d seed=%d (%s) failed: %s", config.axis, value, seed, cells[(value, seed)], e)
    results, cost = collect(lake, cells)
    fitted = {m: v for m in results if (v := fitted_cells(results[m], config.seeds))}
    fit = scaling.bootstrap(fitted, config.multiplier_at or config.values, n_boot=config.bootstrap) \
        if "sft" in fitted and set(fitted["sft"]) == set(cells) else None
    summary = {"name": config.name, "config": config.model_dump(mode="json"), "base": base, "failed": failed,
               "runs": {f"{s}/{seed}": r for (s, seed), r in cells.items()}, **cost,
               "methods": display_order(set(fitted)), "partial": sorted(set(results) - set(fitted)),
               "partial_pass": {m: {f"{v}/{s}": float(c.mean()) for (v, s), c in results[m].items()}
                                for m in set(results) - set(fitted)},
               "fit": fit}
    if config.axis == "sft_steps":
        summary["checkpoints"] = checkpoints(lake, cells)
    largest_key = (max(config.values), config.seeds[0])
    largest = cells[largest_key]
    # Figure 7 on the largest cell: every method trained there, also one skipped in a smaller cell for want of
    # pairs (at small |D_syn| a memorizing pi_sft has no wrong samples to pair).
    in_largest = display_order({m for m, per in results.items() if largest_key in per})
    if config.q_problems and in_largest:
        summary["q_values"] = q_values(lake, config, cell_config(config, *largest_key, base), largest, in_largest)
    try:
        summary["diagnostics"] = diagnostics(lake, largest, base)
    except Exception as e:  # noqa: BLE001 - a cell without an RFT set still gets its report
        log.warning("diagnostics on %s skipped: %s", largest, e)
        summary["diagnostics"] = None
    summary = json.loads(json.dumps(summary))  # as the file has it: sizes become string keys
    url = experiment_report.write(lake, summary)
    log.info("experiment %s: report at %s", config.name, url)
    experiment_report.publish(summary, url)
    return {"report": url, "failed": failed, "runs": summary["runs"], "summary": summary}
