"""The lake over the real S3 protocol (moto on loopback): round trips through the lake and through other readers."""

import copy
import os

import pytest

from mathfactory.tasks.core.records import Problem, Quarantined
from mathfactory.tasks.storage import DataError, Lake


def _problems(n: int, start: int = 0) -> list[Problem]:
    return [Problem(f"p{i}", "toy", "train", "grade_school", f"q{i}", "s", str(i)) for i in range(start, start + n)]


def _write_stage(lake: Lake) -> list[Problem]:
    rows = _problems(3000)
    lake.write_part("run", "problems", 0, Problem, rows[:2000], row_group_size=500)
    lake.write_part("run", "problems", 1, Problem, rows[2000:], row_group_size=500)
    lake.write_quarantine("run", "problems", 0, [Quarantined("problems", "f.jsonl:3", "malformed JSON", "")])
    lake.commit("run", "problems", Problem, config_hash="abc")
    return rows


def test_round_trip_through_the_lake(s3_lake):
    rows = _write_stage(s3_lake)
    assert s3_lake.uri("run", "problems").startswith("s3://mathfactory-test/")
    marker = s3_lake.marker("run", "problems")
    assert (marker["rows"], marker["quarantined"], marker["config_hash"]) == (3000, 1, "abc")
    assert marker["parts"] == ["part-00000.parquet", "part-00001.parquet"]
    assert list(s3_lake.read("run", "problems", Problem, batch_size=333)) == rows
    assert s3_lake.runs() == ["run"] and list(s3_lake.stages("run")) == ["problems"]
    # A second Lake on the same URL (a new process, say) sees the same data.
    again = Lake(s3_lake.url, **s3_lake.storage_options)
    assert [p.problem_id for p in again.read("run", "problems", Problem)] == [p.problem_id for p in rows]


def test_other_readers_see_the_parts_and_skip_markers_and_quarantine(s3_lake, s3_options, tmp_path):
    import duckdb
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq
    import s3fs

    rows = _write_stage(s3_lake)
    uri = s3_lake.uri("run", "problems")
    fs = s3fs.S3FileSystem(**s3_options)
    ids = sorted(p.problem_id for p in rows)
    # pyarrow's dataset discovery ignores _SUCCESS.json and _quarantine/ (leading underscore) on its own.
    table = ds.dataset(uri.removeprefix("s3://"), filesystem=fs, format="parquet").to_table()
    assert sorted(table.column("problem_id").to_pylist()) == ids
    assert table.schema.names == list(Problem.__dataclass_fields__)
    assert pq.read_table(f"{uri.removeprefix('s3://')}/part-00001.parquet", filesystem=fs).num_rows == 1000

    con = duckdb.connect()
    con.register_filesystem(fs)  # DuckDB's own S3 support (httpfs) would need a download: use fsspec's
    got = con.sql(f"SELECT problem_id FROM read_parquet('{uri}/part-*.parquet') ORDER BY problem_id").fetchall()
    assert [r[0] for r in got] == ids


def test_hf_datasets_reads_the_parts(s3_lake, s3_options, tmp_path, monkeypatch):
    import datasets

    rows = _write_stage(s3_lake)
    # datasets' offline mode (HF_HUB_OFFLINE=1, set by conftest) refuses every remote URL, even a private S3
    # endpoint; lift it for this loopback read only. It also writes into storage_options: hand it a copy.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    data = datasets.load_dataset("parquet", data_files=f"{s3_lake.uri('run', 'problems')}/part-*.parquet",
                                 storage_options=copy.deepcopy(s3_options), cache_dir=str(tmp_path / "hf"),
                                 split="train")
    assert data.num_rows == 3000 and sorted(data["problem_id"]) == sorted(p.problem_id for p in rows)


def test_unmarked_stage_is_invisible(s3_lake):
    s3_lake.write_part("run", "rollouts", 0, Problem, _problems(3))
    assert s3_lake.has_part("run", "rollouts", 0)
    assert s3_lake.marker("run", "rollouts") is None and s3_lake.stages("run") == {}
    with pytest.raises(DataError, match="has not finished"):
        list(s3_lake.read("run", "rollouts", Problem))


def test_model_dir_round_trip_downloads_once(s3_lake, tmp_path, monkeypatch):
    src = tmp_path / "model"
    files = {"config.json": b'{"hidden": 64}', "tokenizer/vocab.json": b"{}", "weights/part-1.bin": bytes(range(256)) * 40}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    s3_lake.put_dir(src, "run", "sft")
    with pytest.raises(DataError, match="has not finished"):
        s3_lake.local_dir("run", "sft")
    s3_lake.commit("run", "sft", None)

    local = s3_lake.local_dir("run", "sft")
    assert local.is_relative_to(os.environ["MATHFACTORY_CACHE"])  # set by conftest
    got = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    assert got == {**files, ".complete": b""}

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded twice")

    monkeypatch.setattr(s3_lake.fs, "get", no_download)
    assert s3_lake.local_dir("run", "sft") == local


@pytest.fixture(params=["local", "memory", "s3"])
def any_lake(request, tmp_path):
    if request.param == "local":
        return Lake(str(tmp_path / "lake"))
    if request.param == "memory":
        return Lake(f"memory://partial-{tmp_path.name}")
    return request.getfixturevalue("s3_lake")


def test_a_failed_write_leaves_no_part(any_lake):
    def rows():
        yield from _problems(250)
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError, match="worker died"):
        any_lake.write_part("run", "rollouts", 0, Problem, rows(), row_group_size=100)  # 2 row groups written
    # A part's existence marks its shard done, so a short one would be skipped by every retry.
    assert not any_lake.has_part("run", "rollouts", 0)
    stage = any_lake.stage_path("run", "rollouts")
    assert not any_lake.fs.exists(stage) or any_lake.fs.find(stage) == []
    assert any_lake.write_part("run", "rollouts", 0, Problem, _problems(250), row_group_size=100) == 250
    any_lake.commit("run", "rollouts", Problem)
    assert len(list(any_lake.read("run", "rollouts", Problem))) == 250


def test_two_commits_of_one_stage_at_once_write_one_marker(any_lake):
    """Two runs of one run id committing a stage together: one marker is created, never replaced; both get it."""
    import threading

    any_lake.write_part("run", "rollouts", 0, Problem, _problems(40))
    barrier, markers = threading.Barrier(8), []

    def commit(i: int) -> None:
        barrier.wait()
        markers.append(any_lake.commit("run", "rollouts", Problem, config_hash="abc", seconds=i))

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = any_lake.marker("run", "rollouts")
    assert len(markers) == 8 and all(m == stored for m in markers) and stored["rows"] == 40
    assert any_lake.commit("run", "rollouts", Problem, config_hash="abc", seconds=99) == stored  # later: the same


def test_a_commit_with_other_contents_than_the_marker_there_is_refused(any_lake):
    any_lake.write_part("run", "rollouts", 0, Problem, _problems(40))
    first = any_lake.commit("run", "rollouts", Problem, config_hash="abc")
    any_lake.write_part("run", "rollouts", 1, Problem, _problems(5))  # another run made a shard more
    with pytest.raises(DataError, match=r"rollouts: committed at .* by another run with other contents "
                                        r"\(rows: 40 there, 45 here; parts: .*\)"):
        any_lake.commit("run", "rollouts", Problem, config_hash="abc")
    assert any_lake.marker("run", "rollouts") == first
