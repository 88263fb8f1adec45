"""Damaged files -> every reader the commands and the pipeline use: a clear error naming the file and the row (or a
quarantined row with why), and nothing half-written."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mathfactory.flows.cli import app
from mathfactory.tasks.core.records import Problem
from mathfactory.tasks.problems import PROBLEMS, ProblemsConfig
from mathfactory.tasks.stage import Run, build
from mathfactory.tasks.storage import DataError, Lake, iter_file_rows

cli = CliRunner(env={"COLUMNS": "400"})
ROWS = [{"gold": str(i), "out": f"so\n#### {i}"} for i in range(3000)]


def parquet(path, rows, row_group_size=1024) -> str:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size, compression="none")
    return str(path)


def truncated(path, rows) -> str:
    parquet(path, rows)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the footer, and half the pages, gone
    return str(path)


def damaged_second_row_group(path, rows) -> str:
    """A whole file whose second row group's first page header is garbage (a bad disk sector, a torn copy)."""
    parquet(path, rows)
    offset = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 32] = b"\xff" * 32
    path.write_bytes(bytes(data))
    return str(path)


# --- the readers ------------------------------------------------------------------------------------------------

def test_truncated_parquet_names_the_file(tmp_path):
    url = truncated(tmp_path / "preds.parquet", ROWS)
    with pytest.raises(DataError, match=f"^{url}: not a readable Parquet file"):
        list(iter_file_rows(url))


def test_a_damaged_row_group_names_the_first_row_lost_after_the_rows_before_it(tmp_path):
    url = damaged_second_row_group(tmp_path / "preds.parquet", ROWS)
    read = []
    with pytest.raises(DataError, match=f"^{url}:1025: unreadable from this row on"):
        read.extend(row for _, row, _ in iter_file_rows(url))
    assert read == ROWS[:1024]


def test_not_parquet_at_all_and_an_empty_file(tmp_path):
    text = tmp_path / "text.parquet"
    text.write_text("gold,out\n1,2\n")
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    for path in (text, empty):
        with pytest.raises(DataError, match=f"^{path}: not a readable Parquet file"):
            list(iter_file_rows(str(path)))


# --- `mathfactory verify` -------------------------------------------------------------------------------------------

def verify(src, out):
    return cli.invoke(app, ["verify", str(src), "--gold", "gold", "--pred", "out", "--out", str(out)])


@pytest.mark.parametrize("damage", [truncated, damaged_second_row_group])
def test_verify_a_damaged_parquet_is_one_clear_error_and_writes_nothing(tmp_path, damage):
    src = damage(tmp_path / "preds.parquet", ROWS)
    result = verify(src, tmp_path / "graded.jsonl")
    assert result.exit_code == 2, result.output
    assert f"{src}:" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "graded.jsonl").exists() and [p.name for p in tmp_path.iterdir()] == ["preds.parquet"]


def test_verify_wrong_schema_grades_every_row_unparseable_naming_the_column(tmp_path):
    src = parquet(tmp_path / "preds.parquet", [{"gold": "1", "answer": "#### 1"}, {"gold": "2", "answer": None}])
    result = verify(src, tmp_path / "graded.jsonl")
    assert result.exit_code == 0, result.output
    assert f"{src}:1: no usable out column" in result.output and f"{src}:2: no usable out column" in result.output
    graded = [json.loads(line) for line in (tmp_path / "graded.jsonl").read_text().splitlines()]
    assert [g["reason"] for g in graded] == ["unparseable", "unparseable"]


def test_verify_jsonl_broken_line_nul_and_invalid_utf8_are_named_and_the_rest_graded(tmp_path):
    src = tmp_path / "preds.jsonl"
    src.write_bytes(b'{"gold": "1", "out": "#### 1"}\n{"gold": "2", "out": "#### \n'  # cut mid-line
                    b'{"gold": "3", "out": "#### 3\\u0000"}\n{"gold": "4", "out": "\xc3\x28"}\n\x00\x00\n'
                    b'{"gold": "5", "out": "#### 5"}')
    result = verify(src, tmp_path / "graded.jsonl")
    assert result.exit_code == 0, result.output
    assert f"{src}:2: malformed JSON" in result.output
    assert f"{src}:4: not UTF-8" in result.output and f"{src}:5: malformed JSON" in result.output
    graded = [json.loads(line) for line in (tmp_path / "graded.jsonl").read_text().splitlines()]
    # The NUL after row 3's answer is no part of it; rows 2, 4 and 5 could not be read.
    assert [g["reason"] for g in graded] == ["correct", "unparseable", "correct", "unparseable", "unparseable",
                                             "correct"]


# --- `mathfactory show` over a damaged lake -------------------------------------------------------------------------

@pytest.fixture
def lake(tmp_path):
    """A run whose `problems` stage is committed, two parts."""
    run = Run(lake=str(tmp_path / "lake"), run_id="r")
    lk = run.store
    rows = [Problem(f"p{i}", "toy", "train", "1", f"q{i}", f"s{i}", str(i)) for i in range(10)]
    lk.write_part("r", "problems", 0, Problem, rows[:5])
    lk.write_part("r", "problems", 1, Problem, rows[5:])
    lk.commit("r", "problems", Problem)
    return lk


def show(lk: Lake):
    return cli.invoke(app, ["show", "r", "problems", "--lake", lk.url, "-n", "10"])


def test_show_reads_a_sound_stage(lake):
    result = show(lake)
    assert result.exit_code == 0 and "q9" in result.output


def test_show_a_truncated_part_names_it(lake):
    part = lake.part_path("r", "problems", 1)
    with open(part, "rb") as f:
        data = f.read()
    with open(part, "wb") as f:
        f.write(data[:100])
    result = show(lake)
    assert result.exit_code == 1 and f"error: {part}: not a readable Parquet file" in result.output, result.output


def test_show_a_part_of_another_schema_names_the_file_and_column(lake):
    part = lake.part_path("r", "problems", 0)
    pq.write_table(pa.table({"problem_id": [1, 2], "source": ["toy"] * 2, "split": ["train"] * 2, "level": ["1"] * 2,
                             "question": ["q"] * 2, "solution": ["s"] * 2, "answer": ["1"] * 2}), part)
    result = show(lake)
    assert result.exit_code == 1, result.output
    assert f"error: {part}: column problem_id is int64, expected string for Problem" in result.output
    pq.write_table(pa.table({"problem_id": ["p"], "question": ["q"]}), part)
    result = show(lake)
    assert result.exit_code == 1 and f"error: {part}: no column source" in result.output, result.output


@pytest.mark.parametrize("marker", [b"{\"rows\": 1", b"\xff\xfe", b"[]", b"{\"rows\": 1}"])
def test_show_a_damaged_marker_names_it(lake, marker):
    path = f"{lake.stage_path('r', 'problems')}/_SUCCESS.json"
    with open(path, "wb") as f:
        f.write(marker)
    result = show(lake)
    assert result.exit_code == 1 and f"error: {path}: not a readable marker" in result.output, result.output
    listed = cli.invoke(app, ["ls", "--lake", lake.url])
    assert listed.exit_code == 0 and f"error: {path}: not a readable marker" in listed.output, listed.output


# --- the pipeline's own-problems reader -----------------------------------------------------------------------------

def own(tmp_path, seed: str) -> tuple[Run, ProblemsConfig]:
    cfg = ProblemsConfig(source="files", files=[seed], n_train=None, n_test=0,
                         gates={"test_sets": [], "against": "none"})
    return Run(lake=str(tmp_path / "lake"), run_id="own"), cfg


def gsm8k_rows(n: int) -> list[dict]:
    return [{"question": f"Ann has {i} pens and buys 1. How many?", "answer": f"{i}+1=<<{i}+1={i + 1}>>{i + 1}\n"
             f"#### {i + 1}"} for i in range(n)]


@pytest.mark.parametrize("damage", [truncated, damaged_second_row_group])
def test_own_problems_from_a_damaged_parquet_fail_naming_it_and_leave_no_part(tmp_path, damage):
    seed = damage(tmp_path / "seed.parquet", gsm8k_rows(3000))
    run, cfg = own(tmp_path, seed)
    with pytest.raises(DataError, match=f"^{seed}:"):
        build(PROBLEMS, cfg, run)
    stage = tmp_path / "lake" / "runs" / "own" / "problems"
    assert not list(stage.rglob("*.parquet")) and run.marker("problems") is None
    assert not [p for p in stage.rglob("*") if p.name.startswith("_tmp-")]


def test_own_problems_jsonl_broken_line_is_quarantined_with_its_line(tmp_path):
    seed = tmp_path / "seed.jsonl"
    lines = [json.dumps(r) for r in gsm8k_rows(4)]
    lines[1] = lines[1][:30]  # a line cut short
    lines[2] = json.dumps({"question": "no answer here"})  # a row of another schema
    seed.write_text("\n".join(lines) + "\n")
    run, cfg = own(tmp_path, str(seed))
    build(PROBLEMS, cfg, run)
    assert [p.answer for p in run.read(PROBLEMS)] == ["1", "4"]
    refused = {q.origin: q.reason for q in run.store.read_quarantine("own", "problems")}
    assert refused[f"{seed}:2"].startswith("malformed JSON") and refused[f"{seed}:3"] == "missing field 'answer'"
