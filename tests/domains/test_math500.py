"""MATH500 loader: the real file loads whole with level/subject in the stage; bad rows are quarantined."""

import json
import re
from collections import Counter

import pytest

from mathfactory.tasks.core.records import Problem, Quarantined, stable_id
from mathfactory.tasks.domains import math500
from mathfactory.tasks.storage import DataError, iter_file_rows, write_file_rows

GOOD = {"problem": "What is $1+1$?", "solution": "$1+1=\\boxed{2}$.", "answer": "2", "subject": "Prealgebra",
        "level": 1}


def test_real_file_loads_whole(shared_data):
    items = list(math500.load())
    assert len(items) == 500 and all(isinstance(p, Problem) for p in items)
    assert len({p.problem_id for p in items}) == 500
    assert {(p.source, p.split) for p in items} == {("math500", "test")}
    raw = [row for _, row, _ in iter_file_rows(str(shared_data / "math500" / "test.jsonl"))]
    assert [math500.level_parts(p.level) for p in items] == [(r["level"], r["subject"]) for r in raw]
    assert [(p.question, p.solution, p.answer) for p in items] == [(r["problem"], r["solution"], r["answer"]) for r in raw]
    levels = Counter(math500.level_parts(p.level)[0] for p in items)
    assert levels == {1: 43, 2: 90, 3: 105, 4: 128, 5: 134}


def test_first_row(shared_data):
    first = next(math500.load())
    question = (
        "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.  Enter your answer in the form "
        "$(r,\\theta),$ where $r > 0$ and $0 \\le \\theta < 2 \\pi.$"
    )
    assert first.problem_id == stable_id("math500", question)
    assert (first.source, first.split, first.level, first.question) == ("math500", "test", "level2/Precalculus",
                                                                        question)
    assert first.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first.solution.startswith("We have that $r = \\sqrt{0^2 + 3^2} = 3.$")
    assert first.solution.endswith("$\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$")


def test_ids_are_stable_across_loads(shared_data):
    assert [p.problem_id for p in math500.load()] == [p.problem_id for p in math500.load()]


def test_default_dir_is_beside_the_checkout(shared_data):
    assert shared_data / "math500" == math500.DEFAULT_DIR


@pytest.mark.parametrize("level,stage", [(3, "level3/Prealgebra"), ("Level 5", "level5/Prealgebra"), ("2", "level2/Prealgebra")])
def test_levels_as_written_by_math500_and_by_the_original_math_release(level, stage):
    p = math500.parse_row({**GOOD, "level": level}, "f.jsonl:1")
    assert p.level == stage and math500.level_parts(p.level) == (int(stage[5]), "Prealgebra")


@pytest.mark.parametrize(
    "change,reason",
    [
        ({"answer": None}, "missing field 'answer'"),
        ({"solution": "  "}, "field 'solution' is empty"),
        ({"subject": 7}, "field 'subject' is int, expected a string"),
        ({"level": None}, "missing field 'level'"),
        ({"level": 6}, "field 'level' is 6, expected 1-5"),
        ({"level": "Level ?"}, "field 'level' is 'Level ?', expected 1-5"),
        ({"level": True}, "field 'level' is True, expected 1-5"),
    ],
)
def test_parse_row_refuses(change, reason):
    row = {**GOOD, **change}
    q = math500.parse_row(row, "f.jsonl:4")
    assert q == Quarantined(stage="problems", origin="f.jsonl:4", reason=reason, excerpt=json.dumps(row)[:200])


def test_bad_lines_are_quarantined_and_good_lines_still_load(tmp_path):
    path = tmp_path / "test.jsonl"
    no_answer = {k: v for k, v in GOOD.items() if k != "answer"}
    lines = [
        json.dumps(GOOD).encode(),  # 1
        b"{not json}",  # 2
        b"\xff\xfe" + json.dumps(GOOD).encode(),  # 3 not UTF-8
        b"",  # 4 blank: ignored
        json.dumps(no_answer).encode(),  # 5
        json.dumps([GOOD]).encode(),  # 6
        json.dumps({**GOOD, "problem": "Second?"}).encode(),  # 7
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    items = list(math500.load(path=str(path)))
    assert [p.question for p in items if isinstance(p, Problem)] == [GOOD["problem"], "Second?"]
    quarantined = [q for q in items if isinstance(q, Quarantined)]
    assert [q.origin for q in quarantined] == [f"{path}:{n}" for n in (2, 3, 5, 6)]
    assert quarantined[0].reason.startswith("malformed JSON") and quarantined[1].reason.startswith("not UTF-8")
    assert [q.reason for q in quarantined[2:]] == ["missing field 'answer'", "expected a JSON object, got list"]


def test_parquet_input(tmp_path):
    url = str(tmp_path / "math.parquet")
    write_file_rows(url, [GOOD, {**GOOD, "problem": "Harder?", "level": 4, "subject": "Counting & Probability"}])
    assert [p.level for p in math500.load(path=url)] == ["level1/Prealgebra", "level4/Counting & Probability"]


def test_missing_file_raises_naming_it(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}/test.jsonl")):
        list(math500.load(path=str(tmp_path)))


def test_only_a_test_split():
    with pytest.raises(ValueError, match="only a test split"):
        math500.load("train")
