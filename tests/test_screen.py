"""The problems stage's gates on each source (user files, the toy teacher, GSM8K from ../shared/data) and across
dated runs in one lake: every dropped train problem is quarantined with its gate and reason, and counted."""

import json
import shutil

import pytest

from mathfactory.flows.config import load_preset
from mathfactory.flows.report import tables
from mathfactory.tasks.core.gates import Decontaminator
from mathfactory.tasks.core.records import Problem, ProblemSketch
from mathfactory.tasks.domains import gsm8k
from mathfactory.tasks.problems import PROBLEMS, ProblemsConfig
from mathfactory.tasks.screen import ProblemGatesConfig
from mathfactory.tasks.stage import Run, build


def row(question: str, answer: int = 7) -> dict:
    return {"question": question, "answer": f"So it is 3+4=<<3+4=7>>7.\n#### {answer}"}


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def built(lake, run_id: str, cfg: ProblemsConfig) -> tuple[Run, list[Problem], dict[str, str]]:
    """The stage built into `lake` as run `run_id`: the run, its problems, and problem_id -> quarantine reason."""
    run = Run(lake=str(lake), run_id=run_id)
    build(PROBLEMS, cfg, run)
    return run, list(run.read(PROBLEMS)), {q.origin: q.reason for q in run.store.read_quarantine(run_id, "problems")}


FERRY = ("A ferry carries 48 cars on each trip across the lake. On Monday it makes 6 trips and on Tuesday 9 trips. "
         "How many cars does the ferry carry on the two days?")
QUILT = ("Rhea sews a quilt from 12 rows of 15 squares each, then adds a border of 54 squares around the edge. How "
         "many squares are in the finished quilt?")
OWN_TEST = ("A library lends 230 books in March and 185 books in April, and 40 of them come back late. How many books "
            "came back on time?")


def test_user_files_are_screened_against_gsm8k_test_their_own_test_file_and_one_another(tmp_path, shared_data):
    janet = json.loads((shared_data / "gsm8k/test.jsonl").read_text().splitlines()[0])["question"]
    rows = [row(FERRY), row(QUILT),
            row(FERRY.upper()),  # exact duplicate once case is set aside
            row(QUILT.replace("quilt?", "quilts?")),  # near duplicate: its last word changed
            row("Before school: " + janet),  # a GSM8K test question inside a longer one
            row(OWN_TEST.replace("230", "231")),  # most of an item of the user's own test file
            row("Ivo has 5 kites and buys 2 more. How many kites does he have?")]
    cfg = ProblemsConfig(source="files", files=[write(tmp_path / "seed.jsonl", rows)], n_train=None,
                         gates=ProblemGatesConfig(test_files=[write(tmp_path / "own-test.jsonl",
                                                                    [{"problem": OWN_TEST}])]))
    run, kept, quarantined = built(tmp_path / "lake", "files-0000aaaa", cfg)
    ids = {r["question"]: gsm8k.parse_row(r, "", "train").problem_id for r in rows}
    assert [p.question for p in kept] == [FERRY, QUILT, rows[-1]["question"]]
    assert quarantined == {
        ids[FERRY.upper()]: f"duplicate: same question as {ids[FERRY]} in this run",
        ids[QUILT.replace("quilt?", "quilts?")]: quarantined[ids[QUILT.replace("quilt?", "quilts?")]],
        ids["Before school: " + janet]: quarantined[ids["Before school: " + janet]],
        ids[OWN_TEST.replace("230", "231")]: quarantined[ids[OWN_TEST.replace("230", "231")]],
    }
    assert quarantined[ids[QUILT.replace("quilt?", "quilts?")]].startswith("near_duplicate: Jaccard ~0.")
    assert quarantined[ids[QUILT.replace("quilt?", "quilts?")]].endswith(f"with {ids[QUILT]} in this run")
    assert quarantined[ids["Before school: " + janet]].startswith("decontaminate: shares ")
    assert "gsm8k test " in quarantined[ids["Before school: " + janet]]
    assert quarantined[ids[OWN_TEST.replace("230", "231")]].endswith(f"with {tmp_path / 'own-test.jsonl'}:1")
    gates = run.metrics("problems")["gates"]
    assert gates["dropped"] == {"decontaminate": 2, "duplicate": 1, "near_duplicate": 1}
    assert (gates["checked"], gates["kept"]) == (7, 3)
    assert run.metrics("problems")["refused"] == {"decontaminate": 2, "duplicate": 1, "near_duplicate": 1}


def test_a_missing_benchmark_names_the_setting(tmp_path):
    cfg = ProblemsConfig(n_train=4, n_test=2, gates=ProblemGatesConfig(data_path=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match=r"problems.gates.test_sets: .*nowhere/gsm8k/test.jsonl: no such file"):
        built(tmp_path / "lake", "toy-0000aaaa", cfg)


def test_toy_preset_keeps_its_templated_problems_and_its_own_split_is_no_contamination(tmp_path, shared_data):
    """The toy preset's 4,000 train problems: few dropped (printed), each decontaminate drop sharing at least half
    of a test item's 10-grams; one shared 10-gram, as the synthesis gate counts, would flag most of them."""
    cfg = load_preset("toy").problems
    run, kept, quarantined = built(tmp_path / "lake", "toy-0000aaaa", cfg)
    gates = run.metrics("problems")["gates"]
    print(f"toy preset: {gates}")
    train = [p for p in kept if p.split == "train"]
    test = [p for p in kept if p.split == "test"]
    assert gates["checked"] == cfg.n_train and len(train) == gates["kept"] == cfg.n_train - len(quarantined)
    assert len(test) == cfg.n_test and len(quarantined) <= cfg.n_train // 100  # under 1 %
    for reason in quarantined.values():
        if reason.startswith("decontaminate"):
            shared, total = map(int, reason.split()[2:5:2])
            assert shared / total >= cfg.gates.coverage and "toy test " in reason
    one_gram = Decontaminator(((p.problem_id, p.question) for p in test), n=10, coverage=0)
    assert sum(one_gram.match(p.question) is not None for p in train) > len(train) / 2


def test_gsm8k_train_loses_its_near_copies_of_test_questions(tmp_path, shared_data):
    cfg = ProblemsConfig(source="gsm8k", path=str(shared_data / "gsm8k"), n_train=None, n_test=None,
                         gates=ProblemGatesConfig(data_path=str(shared_data)))
    run, kept, quarantined = built(tmp_path / "lake", "gsm8k-0000aaaa", cfg)
    gates = run.metrics("problems")["gates"]
    print(f"gsm8k: {gates}")
    train = {p.problem_id: p for p in gsm8k.load("train", str(shared_data / "gsm8k"))}
    plane = next(p for p in train.values() if p.question.startswith("A train travels 270 miles in 3 hours."))
    assert quarantined[plane.problem_id].startswith("decontaminate: shares ")
    assert " with gsm8k test " in quarantined[plane.problem_id]
    assert gates["test_items"] == 1319 + 500  # GSM8K test once (the run's own split is the benchmark), MATH500
    assert gates["kept"] + len(quarantined) == len(train) and len(quarantined) < 20


@pytest.mark.parametrize("keys", ["stored", "from the text"])
def test_a_dated_run_drops_what_an_earlier_date_already_has(tmp_path, shared_data, keys):
    """Night 1's keys are read from its `_sketches` beside its problems, or (a run from before they were kept)
    computed from its questions: the same problems are dropped either way."""
    lake = tmp_path / "lake"
    night1 = ProblemsConfig(source="files", n_train=None,
                            files=[write(tmp_path / "n1.jsonl", [row(FERRY), row(QUILT)])])
    night2 = night1.model_copy(update={"files": [write(tmp_path / "n2.jsonl", [
        row(FERRY.replace(" ", "  ")), row(QUILT.replace("quilt?", "quilts?")), row(OWN_TEST)])]})
    first, _, _ = built(lake, "nightly-2026-11-01-0000aaaa", night1)
    sketches = lake / "runs/nightly-2026-11-01-0000aaaa/problems/_sketches"
    assert len(list(first.store.read_part(first.run_id, "problems/_sketches", 0, ProblemSketch))) == 2
    if keys == "from the text":
        shutil.rmtree(sketches)
    run, kept, quarantined = built(lake, "nightly-2026-11-02-1111bbbb", night2)
    ids = {p.question: p.problem_id for p in first.read(PROBLEMS)}
    assert [p.question for p in kept] == [OWN_TEST]
    assert set(quarantined.values()) == {
        f"duplicate: same question as nightly-2026-11-01-0000aaaa problem {ids[FERRY]}",
        next(r for r in quarantined.values() if r.startswith("near_duplicate")),
    }
    assert next(r for r in quarantined.values() if r.startswith("near_duplicate")).endswith(
        f"with nightly-2026-11-01-0000aaaa problem {ids[QUILT]}")
    gates = run.metrics("problems")["gates"]
    assert (gates["earlier_runs"], gates["earlier_problems"]) == (1, 2)
    title, _, rows = next(t for t in tables(run.store, run.run_id) if t[0].startswith("problem gates"))
    assert title == "problem gates: 1 of 3 train problems kept (1819 test items; 2 problems of 1 earlier runs)"
    assert rows == [["decontaminate", "3", "0", "100.0%"], ["duplicate", "3", "1", "66.7%"],
                    ["near_duplicate", "2", "1", "50.0%"]]
    # An undated run has no earlier dates; `lake` checks every other run.
    _, kept, _ = built(lake, "nightly-2222cccc", night2)
    assert len(kept) == 3
    _, kept, _ = built(lake, "nightly-3333dddd", night2.model_copy(update={
        "gates": ProblemGatesConfig(against="lake")}))
    assert [p.question for p in kept] == []  # night 1's two, and the undated run's three
