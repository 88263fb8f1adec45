"""(cores a machine gives, jobs sharing it) -> torch threads per trainer process, so jobs side by side never
oversubscribe the machine.

Measured (issue 18): two pi_sft trainings at once on one 2-core process worker, each with torch's default of a
thread per core, took 1,461 s each where one alone took 267 s; threads past a job's share of the cores only make
the jobs wait on each other.
"""

from __future__ import annotations

import math


def threads_per_job(cores: int, jobs: int = 1, processes: int = 1) -> int:
    """Threads for each of `processes` trainer processes of one of `jobs` jobs running at once on `cores` cores:
    an equal share, at least one."""
    for name, value in (("cores", cores), ("jobs", jobs), ("processes", processes)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    return max(1, cores // (jobs * processes))


def cgroup_cpus(cpu_max: str) -> int | None:
    """The CPUs a cgroup v2 `cpu.max` line grants ('200000 100000': 2; '150000 100000': 1; 'max 100000': no
    limit, None). A Kubernetes pod's cpu limit arrives this way; torch counts the node's cores instead."""
    quota, _, period = cpu_max.strip().partition(" ")
    if quota == "max":
        return None
    try:
        return max(1, math.floor(int(quota) / int(period or 100000)))
    except ValueError:
        raise ValueError(f"cpu.max: expected 'QUOTA PERIOD' or 'max PERIOD', got {cpu_max.strip()!r}") from None
