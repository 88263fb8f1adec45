import dataclasses

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mathfactory.tasks.core.records import (
    EvalResult,
    PreferencePair,
    Problem,
    StepCredit,
    StepwiseExample,
    Verdict,
)
from mathfactory.tasks.storage import DataError, Lake, arrow_schema


def _problems(n):
    return [Problem(f"p{i}", "toy", "train", "grade_school", f"q{i}", "s", str(i)) for i in range(n)]


@pytest.fixture(params=["local", "memory"])
def lake(request, tmp_path):
    if request.param == "local":
        return Lake(str(tmp_path / "lake"))
    return Lake(f"memory://lake-{tmp_path.name}")


def test_round_trip_streams_every_row_in_order(lake):
    rows = _problems(10_000)
    assert lake.write_part("run", "problems", 0, Problem, rows[:6000], row_group_size=1000) == 6000
    assert lake.write_part("run", "problems", 1, Problem, rows[6000:], row_group_size=1000) == 4000
    marker = lake.commit("run", "problems", Problem, config_hash="abc")
    assert marker["rows"] == 10_000 and marker["parts"] == ["part-00000.parquet", "part-00001.parquet"]
    assert list(lake.read("run", "problems", Problem, batch_size=777)) == rows
    assert lake.runs() == ["run"] and list(lake.stages("run")) == ["problems"]


def test_unmarked_stage_is_invisible(lake):
    lake.write_part("run", "rollouts", 0, Problem, _problems(3))
    assert lake.marker("run", "rollouts") is None
    with pytest.raises(DataError, match="has not finished"):
        list(lake.read("run", "rollouts", Problem))


def test_schema_is_derived_from_the_declaration():
    schema = arrow_schema(Verdict)
    assert schema.names == [f for f in Verdict.__dataclass_fields__]
    assert schema.field("predicted").nullable and not schema.field("correct").nullable


def test_a_file_written_before_a_column_was_added_is_named_with_the_column(lake):
    """A record that gains a field (SeedScore.preview, schema 2) cannot be read from an older lake's files: the
    error says which file, which column and which versions, instead of a dataclass TypeError."""
    lake.write_part("run", "verdicts", 0, Verdict, [])
    old = arrow_schema(Verdict)
    old = pa.schema([f for f in old if f.name != "predicted"], metadata={"schema_version": "1"})
    with lake.fs.open(lake.part_path("run", "verdicts", 0), "wb") as f:
        pq.write_table(pa.table({n: [] for n in old.names}, schema=old), f)
    lake.commit("run", "verdicts", Verdict)
    with pytest.raises(DataError, match=r"part-00000.parquet: no column predicted for Verdict: written by another "
                                        r"version of mathfactory \(schema 1, this one reads \d+\)"):
        list(lake.read("run", "verdicts", Verdict))


def test_a_column_added_with_a_default_reads_as_that_default_from_older_files(lake):
    """StepCredit.n_correct and PreferencePair.chosen_source arrived in schema 3 with a default (None): a lake
    written before them still reads."""
    pair = PreferencePair("x", "outcome", "p", "Q", "good", "bad", "c", "w", None, "rollout")
    credit = StepCredit("w", "p", 1, "step", 5, 0.5, None, 4, "linear", False, None, 2)
    for stage, record, row, added in (("dpo", PreferencePair, pair, "chosen_source"),
                                      ("credit", StepCredit, credit, "n_correct")):
        old = pa.schema([f for f in arrow_schema(record) if f.name != added], metadata={"schema_version": "2"})
        lake.fs.makedirs(lake.stage_path("run", stage), exist_ok=True)
        with lake.fs.open(lake.part_path("run", stage, 0), "wb") as f:
            pq.write_table(pa.table({n: [getattr(row, n)] for n in old.names}, schema=old), f)
        lake.commit("run", stage, record)
        assert list(lake.read("run", stage, record)) == [dataclasses.replace(row, **{added: None})]


def test_a_lake_written_before_level_was_renamed_still_reads(lake):
    """Schema 4 calls a problem's education level `level`; files of schema 3 and before call it `stage`."""
    old = pa.schema([pa.field("stage" if f.name == "level" else f.name, f.type, f.nullable)
                     for f in arrow_schema(Problem)], metadata={"schema_version": "3"})
    rows = _problems(3)
    lake.fs.makedirs(lake.stage_path("run", "problems"), exist_ok=True)
    with lake.fs.open(lake.part_path("run", "problems", 0), "wb") as f:
        pq.write_table(pa.table({n: [getattr(r, "level" if n == "stage" else n) for r in rows] for n in old.names},
                                schema=old), f)
    lake.commit("run", "problems", Problem)
    assert list(lake.read("run", "problems", Problem)) == rows


def test_lists_of_optional_values_round_trip(lake):
    schema = arrow_schema(EvalResult)
    assert schema.field("sampled_predicted").type == pa.list_(pa.string()) == arrow_schema(StepwiseExample).field(
        "completions").type  # list[str | None] and list[str]: one Arrow type, items nullable
    assert not schema.field("sampled_predicted").nullable
    rows = [EvalResult(f"e{i}", f"p{i}", "test", "grade_school", "sft", "runs/r/policy", "#### 3", "3", True,
                       "correct", 3, answers, 1, "3", True, "3", 7)
            for i, answers in enumerate([["3", None, "4"], [None, None, None], []])]
    lake.write_part("run", "eval_sft", 0, EvalResult, rows)
    lake.commit("run", "eval_sft", EvalResult)
    assert list(lake.read("run", "eval_sft", EvalResult)) == rows
