"""The experiment report from summaries built on synthetic results: which tables a size sweep and a checkpoint
sweep get, and that their numbers are the fit's."""

import json

import numpy as np
import pydantic
import pytest
from markdown_it import MarkdownIt

from mathfactory.flows.experiment import ExperimentConfig, cell_config, fitted_cells
from mathfactory.flows.experiment_report import (
    from_checkpoints_png,
    markdown,
    q_png,
    render,
    scaling_png,
    tables,
)
from mathfactory.tasks.core.scaling import bootstrap


def _summary(axis: str, values: list[int]) -> dict:
    rng = np.random.default_rng(0)
    hard = rng.random(200)
    results = {m: {(v, s): hard < 0.2 + 0.1 * i + lift for i, v in enumerate(values) for s in (0, 1)}
               for m, lift in (("sft", 0.0), ("step_dpo", 0.1))}
    cfg = {"sizes": values, "seeds": [0, 1], "axis": axis, "sft_steps": values, "multiplier_at": None}
    summary = {"name": "t", "config": cfg, "base": None, "failed": {}, "problems": 200, "partial": [],
               "runs": {f"{v}/{s}": f"r{v}{s}" for v in values for s in (0, 1)}, "methods": ["sft", "step_dpo"],
               "cells": {f"{v}/{s}": {"policy": {"seconds": 60.0, "tokens": 0}, "rollouts": {"seconds": 30.0,
                                                                                        "tokens": 1500},
                                     "eval_sft": {"seconds": 6.0, "tokens": 700}, "continuations": 10}
                         for v in values for s in (0, 1)},
               "fit": bootstrap(results, values, n_boot=100)}
    return json.loads(json.dumps(summary))


def test_a_size_sweep_reports_exponents_multipliers_and_paired_gains():
    summary = _summary("size", [64, 128, 256])
    t = tables(summary)
    assert any("exponent" in title for title in t) and any("multipliers" in title for title in t)
    gains = next(rows for title, (_, rows) in t.items() if title.startswith("Paired gain"))
    # step_dpo solves every problem sft solves plus those in a band of difficulty: its gain is that band's share
    hard = np.random.default_rng(0).random(200)
    expected = [100 * np.mean((hard >= 0.2 + 0.1 * i) & (hard < 0.3 + 0.1 * i)) for i in range(3)]
    assert [g[0] for g in gains] == ["step_dpo"]
    assert [float(c.split()[0]) for c in gains[0][1:]] == pytest.approx(expected)
    assert scaling_png(summary).startswith(b"\x89PNG")
    (headers, cost), = (v for title, v in t.items() if title.startswith("Cost per cell"))
    assert cost[0] == ["64/0", "1.6", "60", "30", "0", "0", "6", "10", "2,200"]


def test_the_prefect_artifact_renders_every_table_as_a_table_with_its_columns():
    summary = _summary("size", [64, 128, 256])
    t = tables(summary)  # their headers say |D_syn|: a pipe that must not split a cell
    assert any("|" in h for headers, _ in t.values() for h in headers)
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown(summary, "file:///r.html"))
    rendered, row = [], None
    for tok in tokens:
        if tok.type == "table_open":
            rendered.append([])
        elif tok.type == "tr_open":
            row = []
        elif tok.type == "inline" and row is not None:
            row.append(tok.content)
        elif tok.type == "tr_close":
            rendered[-1].append(row)
            row = None
    assert rendered == [[headers, *rows] for headers, rows in t.values()]


def test_a_checkpoint_sweep_reports_the_critical_step_not_a_power_law():
    summary = _summary("sft_steps", [100, 400])
    summary["checkpoints"] = {"100/0": {"steps": 100, "losses": [2.0, 1.5], "q1": 0.25, "q1_n": 40, "pits": 30,
                                        "pit_at_1": 27}}
    t = tables(summary)
    assert not any("exponent" in title or "multipliers" in title for title in t)
    crit = next(rows for title, (_, rows) in t.items() if "critical step" in title)
    assert crit == [["100/0", "1.500", "0.25", "40", "30", "27"]]
    assert "SFT steps 100" in render(summary, {})
    assert from_checkpoints_png(summary).startswith(b"\x89PNG")


def test_a_method_missing_from_a_cell_is_reported_where_it_was_trained():
    summary = _summary("sft_steps", [100, 400])
    summary["partial"] = ["rft"]
    summary["partial_pass"] = {"rft": {"400/0": 0.25, "400/1": 0.5, "100/1": 0.125}}
    (headers, rows), = (v for title, v in tables(summary).items() if title.startswith("Methods missing"))
    assert headers == ["method", "SFT steps/seed 100/0", "SFT steps/seed 100/1", "SFT steps/seed 400/0",
                       "SFT steps/seed 400/1"]
    assert rows == [["rft", "-", "12.5%", "25.0%", "50.0%"]]


def test_a_method_without_the_smallest_cells_is_fitted_and_read_where_it_was_trained():
    # The toy sweep's per-step DPO: no pairs at the smallest |D_syn| (pi_sft got every sample right there).
    rng = np.random.default_rng(0)
    hard = rng.random(200)
    results = {m: {(v, s): hard < 0.2 + 0.1 * i + lift for i, v in enumerate((64, 256, 1024)) for s in (0,)
                   if m == "sft" or v > 64} for m, lift in (("sft", 0.0), ("step_dpo", 0.1))}
    cells = {(v, 0): f"r{v}" for v in (64, 256, 1024)}
    assert fitted_cells(results["step_dpo"], [0]) == results["step_dpo"]
    assert fitted_cells({(1024, 0): hard < 0.5}, [0]) is None  # one size: nothing to fit
    assert fitted_cells({**results["step_dpo"], (1024, 1): hard < 0.5}, [0, 1]) is None  # 256 lacks seed 1
    summary = _summary("size", [64, 256, 1024])
    summary["fit"] = json.loads(json.dumps(bootstrap(results, [64, 256, 1024], n_boot=50)))
    summary["runs"] = {f"{v}/{s}": r for (v, s), r in cells.items()}
    t = tables(summary)
    (_, passes), = (v for title, v in t.items() if title.startswith("Greedy pass@1"))
    assert passes[1][0] == "step_dpo" and passes[1][2] == "-" and passes[1][3].startswith(f"{np.mean(hard < 0.4):.1%} (")
    (_, mults), = (v for title, v in t.items() if title.startswith("Data multipliers"))
    assert mults == [["step_dpo", "-", mults[0][2], mults[0][3]]] and mults[0][3] != "-"
    assert scaling_png(summary).startswith(b"\x89PNG")


def test_q_values_are_tabled_per_method_and_step():
    summary = _summary("size", [64, 128])
    summary["q_values"] = {"run": "r1280", "problems": 3, "m": 4, "curves": {
        "sft": [{"step": 0, "q": 0.25, "problems": 3, "continuations": 12},
                {"step": 1, "q": 0.5, "problems": 2, "continuations": 8}],
        "step_dpo": [{"step": 0, "q": 0.75, "problems": 3, "continuations": 12}]}}
    (headers, rows), = (v for title, v in tables(summary).items() if "Figure 7" in title)
    assert headers == ["method", "i=0", "i=1"]
    assert rows == [["sft", "0.25 (3)", "0.50 (2)"], ["step_dpo", "0.75 (3)", "-"]]
    assert q_png(summary["q_values"]).startswith(b"\x89PNG")


def test_an_axis_needs_its_values():
    with pytest.raises(pydantic.ValidationError, match="at least 2 distinct sizes"):
        ExperimentConfig(sizes=[64, 64])
    with pytest.raises(pydantic.ValidationError, match="one size and at least 2 distinct sft_steps"):
        ExperimentConfig(axis="sft_steps", sizes=[64, 128], sft_steps=[10, 20])
    cfg = ExperimentConfig(preset="toy", axis="sft_steps", sizes=[500], sft_steps=[10, 20])
    cell = cell_config(cfg, 20, 1, None)
    # D_syn is the axis' one size; how much of it is sampled and credited stays the preset's (toy: 150 and 64).
    assert (cell.policy.max_steps, cell.problems.n_train) == (20, 500)
    assert (cell.sample.problems_per_split, cell.credit.problems) == (150, 64)
    sized = cell_config(ExperimentConfig(preset="toy", sizes=[32, 64]), 32, 0, None)
    assert (sized.problems.n_train, sized.sample.problems_per_split, sized.credit.problems) == (32, 32, 32)
    assert cell.seed == cell.policy.seed == 1  # a seed varies pi_sft too, not only what samples from it
