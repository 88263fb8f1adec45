"""The synthesis path end to end under Prefect's engine: `mathfactory run` with problems.source=synthesizer on a
tiny config, as a user would start it; then what each stage left in the lake."""

import pytest
from support import TINY_PRESET
from typer.testing import CliRunner

from mathfactory.flows.cli import app
from mathfactory.flows.config import load_preset
from mathfactory.tasks.core.records import Problem, SeedScore, SeedText, SynthOutput, TeacherCall
from mathfactory.tasks.gate import GATES
from mathfactory.tasks.storage import Lake

cli = CliRunner(env={"COLUMNS": "400"})
SYNTH = ["--set", "problems.source=synthesizer"]
STAGES = {"seeds", "kd_round1", "synthesizer_round1", "grad_features", "influence", "kd_round2", "synthesizer",
          "synth_outputs", "synth_problems"}


@pytest.fixture(scope="module")
def run(prefect_api, tmp_path_factory):
    lake = str(tmp_path_factory.mktemp("lake"))
    result = cli.invoke(app, ["run", "--preset", str(TINY_PRESET), "--lake", lake, *SYNTH])
    assert result.exit_code == 0, result.output
    cfg = load_preset(str(TINY_PRESET), [f"lake={lake}", "problems.source=synthesizer"])
    return cfg, Lake(lake), cfg.run_id(), result.output


def test_the_train_problems_are_the_ones_the_trained_synthesizer_wrote_and_the_gates_kept(run):
    cfg, lake, run_id, _ = run
    assert set(lake.stages(run_id)) >= STAGES
    train = [p for p in lake.read(run_id, "problems", Problem) if p.split == "train"]
    kept = list(lake.read(run_id, "synth_problems", Problem))
    # the problems stage's gates (tasks/screen.py) then run on them too, against the run's own test split
    screened = {q.origin for q in lake.read_quarantine(run_id, "problems")}
    assert train == [p for p in kept if p.problem_id not in screened] and all(p.source == "synth" for p in train)
    assert lake.marker(run_id, "problems")["metrics"]["gates"]["checked"] == len(kept)
    outputs = {o.output_id: o for o in lake.read(run_id, "synth_outputs", SynthOutput)}
    assert len(outputs) == cfg.synthesis.generate.max_prompts
    # every kept problem is, word for word, what the synthesizer wrote for one output
    assert all(any(p.question in o.completion for o in outputs.values()) for p in kept)
    test = [p for p in lake.read(run_id, "problems", Problem) if p.split == "test"]
    assert len(test) == cfg.problems.n_test and all(p.source == "toy" for p in test)


def test_every_output_is_kept_or_dropped_by_one_named_gate(run):
    _, lake, run_id, output = run
    m = lake.marker(run_id, "synth_problems")["metrics"]
    assert set(m["dropped"]) == set(GATES) and m["gate_order"] == list(GATES)
    assert m["kept"] + sum(m["dropped"].values()) == m["written"] == lake.stages(run_id)["synth_outputs"]["rows"]
    dropped = list(lake.read_quarantine(run_id, "synth_problems"))
    assert len(dropped) == sum(m["dropped"].values())
    for gate in GATES:  # the quarantine says which gate dropped each output, as the counts do
        assert sum(q.reason.startswith(f"{gate}: ") for q in dropped) == m["dropped"][gate]
    shown = cli.invoke(app, ["show", run_id, "synth_problems", "--lake", lake.url, "--quarantine", "-n", "1000"])
    assert shown.exit_code == 0 and all(f"{q.origin}: {q.reason}" in shown.output for q in dropped)
    assert "quality gates" in output and "cost:" in output and "teacher calls" in output


def test_round_two_distils_the_texts_influence_selected(run):
    cfg, lake, run_id, _ = run
    scores = list(lake.read(run_id, "influence", SeedScore))
    round1 = list(lake.read(run_id, "kd_round1", TeacherCall))
    assert {s.seed_id for s in scores} == {c.seed_id for c in round1 if c.ok}
    by_rank = sorted(scores, key=lambda s: s.rank)
    assert [s.rank for s in by_rank] == list(range(len(scores)))
    assert [s.score for s in by_rank] == sorted((s.score for s in scores), reverse=True)
    selected = {s.seed_id for s in scores if s.selected}
    assert len(selected) == max(1, round(cfg.synthesis.influence.fraction * len(scores)))
    round2 = list(lake.read(run_id, "kd_round2", TeacherCall))
    assert {c.seed_id for c in round2} == selected and all(c.round == 2 for c in round2)
    assert len(round2) == len(selected) * cfg.synthesis.distill.round2_samples
    seeds = {s.seed_id: s.text for s in lake.read(run_id, "seeds", SeedText)}
    assert selected <= set(seeds)
    assert all(seeds[s.seed_id].startswith(s.preview) and len(s.preview) == min(160, len(seeds[s.seed_id]))
               for s in scores)  # what `show RUN influence` prints beside each score


def test_a_rerun_pays_nothing_and_does_no_work(run, prefect_api):
    cfg, lake, run_id, _ = run
    before = {k: v["written_at"] if "written_at" in v else v.get("seconds") for k, v in lake.stages(run_id).items()}
    result = cli.invoke(app, ["run", "--preset", str(TINY_PRESET), "--lake", cfg.lake, *SYNTH])
    assert result.exit_code == 0, result.output
    after = {k: v["written_at"] if "written_at" in v else v.get("seconds") for k, v in lake.stages(run_id).items()}
    assert before == after

