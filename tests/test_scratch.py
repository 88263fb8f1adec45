"""Scratch folders and half-written lake files a killed process left are removed by the next run; a live
process's, or another host's, are kept."""

import subprocess
import sys

from mathfactory.tasks.core.records import Problem
from mathfactory.tasks.scratch import PREFIX, owner, scratch, sweep
from mathfactory.tasks.storage import TMP, Lake


def dead_pid() -> int:
    """The pid of a process that has exited (reaped, so nothing of it is left)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_only_what_dead_processes_of_this_host_left(tmp_path):
    host = owner().rsplit(".", 1)[0]
    dead, live, elsewhere = (tmp_path / f"{PREFIX}{host}.{dead_pid()}-policy-x", tmp_path / f"{PREFIX}{owner()}-policy-y",
                             tmp_path / f"{PREFIX}otherhost.{dead_pid()}-policy-z")
    for d in (dead, live, elsewhere):
        (d / "model").mkdir(parents=True)
        (d / "model" / "weights.bin").write_bytes(b"x" * 100)
    assert sweep(tmp_path) == [dead]
    assert sorted(tmp_path.iterdir()) == sorted([live, elsewhere])


def test_a_scratch_folder_is_named_after_its_process_and_removed_on_exit(tmp_path):
    with scratch("policy", tmp_path) as folder:
        assert folder.rsplit("/", 1)[1].startswith(f"{PREFIX}{owner()}-policy-")
        assert sweep(tmp_path) == []  # ours, and we are alive
    assert list(tmp_path.iterdir()) == []


def test_lake_sweep_removes_a_killed_writers_temporary_file_and_keeps_the_parts(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    lake.write_part("r1", "problems", 0, Problem, [])
    stage = tmp_path / "lake" / "runs" / "r1" / "problems"
    host = owner().rsplit(".", 1)[0]
    half = stage / f"{TMP}{host}.{dead_pid()}-0123abcd"
    half.write_bytes(b"PAR1 half a part")
    ours = stage / f"{TMP}{owner()}-4567ef"  # a write still going on in this process
    ours.write_bytes(b"PAR1")
    assert lake.sweep("r1") == 1
    assert sorted(p.name for p in stage.iterdir()) == sorted(["part-00000.parquet", ours.name])
