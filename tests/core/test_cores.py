"""Torch threads per trainer from the cores a machine gives and the jobs sharing it."""

import pytest

from mathfactory.tasks.core.cores import cgroup_cpus, threads_per_job


@pytest.mark.parametrize(("cores", "jobs", "processes", "threads"), [
    (2, 1, 1, 2),  # one job alone: every core
    (2, 2, 1, 1),  # the measured case: two dates' pi_sft on one 2-core worker, a core each
    (16, 3, 1, 5),  # shares round down: 15 busy cores beat 18 threads on 16
    (2, 4, 1, 1),  # more jobs than cores: still one thread each (the worker's --limit should not allow it)
    (64, 2, 8, 4),  # accelerate launch: each of a job's processes gets its part of the job's share
])
def test_each_job_gets_an_equal_share_and_at_least_one_thread(cores, jobs, processes, threads):
    assert threads_per_job(cores, jobs, processes) == threads
    assert threads * jobs * processes <= max(cores, jobs * processes)  # never more threads than cores, or than one each


@pytest.mark.parametrize("bad", [{"cores": 0}, {"jobs": 0}, {"processes": -1}])
def test_a_share_of_nothing_is_refused_naming_what(bad):
    args = {"cores": 2, "jobs": 1, "processes": 1, **bad}
    with pytest.raises(ValueError, match=f"{next(iter(bad))} must be at least 1"):
        threads_per_job(**args)


@pytest.mark.parametrize(("cpu_max", "cpus"), [
    ("max 100000\n", None),  # no limit: the affinity decides
    ("200000 100000\n", 2),
    ("150000 100000", 1),  # 1.5 CPUs: a second thread would be throttled half the time
    ("50000 100000", 1),  # under one CPU still runs one thread
    ("400000", 4),  # the period defaults to 100 ms
])
def test_a_pods_cpu_limit_is_read_from_its_cgroup(cpu_max, cpus):
    assert cgroup_cpus(cpu_max) == cpus


def test_an_unreadable_cpu_max_names_itself():
    with pytest.raises(ValueError, match="cpu.max: expected 'QUOTA PERIOD'.*'lots'"):
        cgroup_cpus("lots")
