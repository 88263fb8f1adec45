"""The experiment flow on a tiny sweep (two sizes, one seed, tiny models and a tiny base), through the CLI as a user
runs it: every cell lands, the report is one self-contained HTML file, and a rerun redoes only what is missing."""

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from support import TINY_PRESET
from typer.testing import CliRunner

from mathfactory.flows.cli import app
from mathfactory.flows.experiment import cell_config, load_experiment
from mathfactory.tasks.storage import Lake

cli = CliRunner(env={"COLUMNS": "400"})


@pytest.fixture(scope="module")
def sweep(prefect_api, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("experiment")
    preset = tmp / "tiny-sweep.yaml"
    preset.write_text(yaml.safe_dump({
        "name": "tiny-sweep", "preset": str(TINY_PRESET), "sizes": [8, 16], "seeds": [0], "bootstrap": 50,
        "q_problems": 3, "q_m": 2,
        "base": ["problems.n_train=16"],
        "overrides": ["evaluate.problems_per_level=2", "evaluate.k=0", "problems.n_test=8"],
    }))
    lake = str(tmp / "lake")
    result = cli.invoke(app, ["experiment", "--preset", str(preset), "--lake", lake])
    assert result.exit_code == 0, result.output
    return load_experiment(str(preset), [f"lake={lake}"]), result.output


def _markers(lake: Lake, run_ids) -> dict:
    return {(r, s): m["committed_at"] for r in run_ids for s, m in lake.stages(r).items()}


def test_every_cell_is_a_run_from_the_base_evaluated_on_one_held_out_set(sweep):
    cfg, output = sweep
    lake = Lake(cfg.lake)
    summary = json.loads(lake.read_file("experiments/tiny-sweep/summary.json"))
    assert summary["failed"] == {}
    assert set(summary["runs"]) == {"8/0", "16/0"}
    for key, run_id in summary["runs"].items():
        size = int(key.split("/")[0])
        stages = lake.stages(run_id)
        assert stages["policy"]["metrics"]["base"] == summary["base"]  # pi_sft was fine-tuned from the base
        assert stages["policy"]["metrics"]["train_rows"] == size
        assert stages["eval_sft"]["rows"] == 4  # 2 levels x 2 problems
    ids = [{r.problem_id for r in lake.read(run_id, "eval_sft", _eval_record())} for run_id in summary["runs"].values()]
    assert ids[0] == ids[1] and summary["problems"] == 4  # the same held-out problems in every cell
    assert summary["methods"] == ["sft"] and summary["fit"]["methods"]["sft"]["b_ci"][0] <= summary["fit"]["methods"]["sft"]["b"]
    # Figure 7 on the largest cell: Q along the reference of 3 held-out problems, 2 continuations per prefix.
    q = summary["q_values"]
    assert q["run"] == summary["runs"]["16/0"] and list(q["curves"]) == ["sft"]
    first, *rest = q["curves"]["sft"]
    assert (first["step"], first["problems"], first["continuations"]) == (0, 3, 6)
    assert [r["step"] for r in rest] == list(range(1, len(rest) + 1)) and all(0 <= r["q"] <= 1 for r in rest)


def _eval_record():
    from mathfactory.tasks.core.records import EvalResult

    return EvalResult


def test_the_report_is_one_self_contained_html_file(sweep):
    cfg, output = sweep
    lake = Lake(cfg.lake)
    html = lake.read_file("experiments/tiny-sweep/report.html").decode()
    assert "report.html" in output
    assert "<img" in html and "data:image/png;base64," in html
    # Nothing outside itself: no src/href to a file or the network (in-page anchors only).
    external = [u for u in re.findall(r'(?:src|href)="([^"]*)"', html) if not u.startswith(("data:", "#"))]
    assert external == []
    assert lake.read_file("experiments/tiny-sweep/scaling.png").startswith(b"\x89PNG")
    # A tiny policy solves nothing, so every rollout is wrong, credited, and has a pit to show.
    assert html.count("<pre>") == 3 and "&lt;-- pit" in html


def test_a_rerun_redoes_only_what_is_missing(sweep):
    cfg, _ = sweep
    lake = Lake(cfg.lake)
    runs = json.loads(lake.read_file("experiments/tiny-sweep/summary.json"))["runs"]
    before = _markers(lake, runs.values())
    q_file = Path(cfg.lake) / "experiments/tiny-sweep/q_values.json"
    q_written = q_file.stat().st_mtime_ns
    # Lose one cell's evaluation, as a crash before its commit would.
    small = cell_config(cfg, 8, 0, json.loads(lake.read_file("experiments/tiny-sweep/summary.json"))["base"])
    assert small.run_id() == runs["8/0"]
    shutil.rmtree(f"{cfg.lake}/runs/{runs['8/0']}/eval_sft")
    result = cli.invoke(app, ["experiment", "--preset", "tiny-sweep-unused.yaml"])
    assert result.exit_code != 0 and "unknown preset" in result.output  # a bad name is refused, naming it
    from mathfactory.flows.experiment import experiment

    experiment(cfg)
    after = _markers(lake, runs.values())
    redone = {k for k in after if before.get(k) != after[k]}
    assert redone == {(runs["8/0"], "eval_sft")}
    assert q_file.stat().st_mtime_ns == q_written  # Figure 7's Q-values are not sampled again
