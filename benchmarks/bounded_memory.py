"""1,000,000 rollout rows -> verdicts, streamed in bounded memory; the 1M-row stages read back (`show`, the pairs
stage's reads); and the rows each credit shard reads.

Run: .venv/bin/python benchmarks/bounded_memory.py [--rows 1000000] [--latex 2000] [--keep DIR]
Prints the figures; exits 1 if the peak RSS passes 1 GiB. The lake is a local temporary folder unless --keep.
"""

from __future__ import annotations

import argparse
import functools
import random
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from typer.testing import CliRunner

from mathfactory.flows.cli import app
from mathfactory.tasks.core.records import Problem, Rollout, stable_id
from mathfactory.tasks.credit import CreditConfig, shard_inputs
from mathfactory.tasks.problems import PROBLEMS
from mathfactory.tasks.sample import ROLLOUTS
from mathfactory.tasks.stage import Run, build
from mathfactory.tasks.verify import VERDICTS, VerifyConfig

print = functools.partial(print, flush=True)  # noqa: A001  # figures appear as they are measured
GIB = 1 << 30
K = 4  # rollouts per problem
SHARDS = 4  # rollouts (and so verdicts) parts
LATEX = [("\\frac{%d}{%d}", "\\dfrac{%d}{%d}"), ("\\sqrt{%d}", "\\sqrt{%d}"), ("%d\\pi", "\\pi \\cdot %d")]


def peak_rss() -> int:
    """Bytes: the largest resident set this process has had so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def children_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"


def problems(n: int, latex: bool) -> Iterator[Problem]:
    rng = random.Random(0)
    for i in range(n):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        answer = (LATEX[i % len(LATEX)][0] % ((a, b) if i % len(LATEX) == 0 else (a,))) if latex else str(a * b)
        yield Problem(stable_id("bench", latex, i), "bench", "train", "1-step",
                      f"Problem {i}: what is {a} times {b}?", f"{a}*{b}=<<{a}*{b}={a * b}>>{a * b}\n#### {a * b}", answer)


def rollouts(n_problems: int, shard: int, shards: int, latex: bool) -> Iterator[Rollout]:
    """Shard `shard` of the rollouts, as the sample stage deals them (problem i to shard i % shards); half right."""
    for i, p in enumerate(problems(n_problems, latex)):
        if i % shards != shard:
            continue
        for k in range(K):
            if latex:
                gold_fmt, said_fmt = LATEX[i % len(LATEX)]
                args = tuple(int(x) for x in p.answer.replace("{", " ").replace("}", " ").replace("\\", " ").split()
                             if x.isdigit())
                said = said_fmt % args if k % 2 == 0 else said_fmt % tuple(a + 1 for a in args)
                completion = f"We compute it step by step.\nSo the answer is $\\boxed{{{said}}}$."
            else:
                a, b = (int(x) for x in p.question.split("what is ", 1)[1].rstrip("?").split(" times "))
                c = a * b + (k % 2)  # odd samples are off by one
                completion = f"{a} times {b} is {a}*{b}=<<{a}*{b}={a * b}>>{c}.\nSo it is {c}.\n#### {c}"
            yield Rollout(stable_id(p.problem_id, k), p.problem_id, p.split, p.level, "bench", k, p.question,
                          completion, 40, "stop", 0.8, 0)


def seed(run: Run, n_rollouts: int, latex: bool, shards: int = SHARDS) -> None:
    """A problems stage and a rollouts stage of n_rollouts rows, each part written as a stream."""
    lk, n_problems = run.store, n_rollouts // K
    lk.write_part(run.run_id, PROBLEMS.name, 0, Problem, problems(n_problems, latex))
    lk.commit(run.run_id, PROBLEMS.name, Problem)
    for s in range(shards):
        lk.write_part(run.run_id, ROLLOUTS.name, s, Rollout, rollouts(n_problems, s, shards, latex))
    lk.commit(run.run_id, ROLLOUTS.name, Rollout)


def verify(run: Run) -> tuple[float, dict]:
    t0 = time.perf_counter()
    build(VERDICTS, VerifyConfig(), run)
    return time.perf_counter() - t0, run.marker(VERDICTS.name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="Rollouts through the numeric path.")
    ap.add_argument("--latex", type=int, default=2_000, help="Rollouts through the LaTeX path (~100-200/s; 0: skip).")
    ap.add_argument("--keep", help="Write the lakes here and keep them.")
    args = ap.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mathfactory-bench-"))
    print(f"lakes in {root}; after imports: peak RSS {mib(peak_rss())}")

    run = Run(lake=str(root / "numeric"), run_id="bench")
    t0 = time.perf_counter()
    seed(run, args.rows, latex=False)
    print(f"wrote {args.rows:,} rollouts ({args.rows // K:,} problems) in {time.perf_counter() - t0:.0f} s; "
          f"peak RSS {mib(peak_rss())}")
    took, marker = verify(run)
    print(f"numeric path: {marker['rows']:,} verdicts in {took:.0f} s = {marker['rows'] / took:,.0f} verdicts/s "
          f"{dict(marker['metrics']['reasons'])}; peak RSS {mib(peak_rss())}")

    if args.latex:
        latex = Run(lake=str(root / "latex"), run_id="bench")
        seed(latex, args.latex, latex=True, shards=1)  # one shard: one judge start-up, counted in the rate
        took, marker = verify(latex)
        print(f"LaTeX path: {marker['rows']:,} verdicts in {took:.1f} s = {marker['rows'] / took:,.0f} verdicts/s "
              f"{dict(marker['metrics']['reasons'])}; judge workers' peak RSS {mib(children_peak_rss())}")

    # Reading back: `show`, a full scan, and the pairs stage's reads (the rows of credit's 64 problems).
    for stage in (ROLLOUTS.name, VERDICTS.name):
        t0 = time.perf_counter()
        result = CliRunner().invoke(app, ["show", "bench", stage, "--lake", run.lake, "-n", "3"])
        assert result.exit_code == 0, result.output
        print(f"show {stage}: {time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    scanned = sum(1 for _ in run.read(ROLLOUTS))
    print(f"full scan of rollouts: {scanned:,} rows in {time.perf_counter() - t0:.0f} s; peak RSS {mib(peak_rss())}")
    covered = [pid for (pid,) in run.read_columns(PROBLEMS, "problem_id")][:64]
    reader = Run(lake=run.lake, run_id="bench")
    t0 = time.perf_counter()
    pairs_rows = [len(list(reader.read(spec, where=("problem_id", covered)))) for spec in (ROLLOUTS, VERDICTS)]
    print(f"pairs' reads (rollouts, verdicts of 64 problems): {pairs_rows} rows decoded of {scanned:,} each, "
          f"{time.perf_counter() - t0:.1f} s")

    # Rows each credit shard decodes: its own, where every shard used to decode every row of every stage.
    print("credit shard reads (problems=None: every train problem credited)")
    print(f"{'shards':>6} {'rollouts/shard':>15} {'all shards':>11} {'before (S x N)':>15}")
    for shards in (8, 16):
        per = []
        for shard in range(shards):
            reader = Run(lake=run.lake, run_id="bench")
            shard_inputs(CreditConfig(shards=shards, problems=None), reader, shard)
            per.append(reader.store.rows_read[ROLLOUTS.name])
        print(f"{shards:>6} {max(per):>15,} {sum(per):>11,} {shards * scanned:>15,}")

    peak = peak_rss()
    print(f"peak RSS of the whole benchmark: {mib(peak)} (bound 1 GiB)")
    return 0 if peak < GIB else 1


if __name__ == "__main__":
    sys.exit(main())
