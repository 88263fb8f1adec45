"""Real GSM8K/MATH500 rows -> verifier throughput and latency figures, each side by side with plain math-verify.

Run: .venv/bin/python benchmarks/verifier.py [--data ../shared/data]. Prints a table; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from math_verify import parse, verify

from mathfactory.tasks.core.grading import extract_answer, grade_fast
from mathfactory.tasks.judge import WARM_UP, Judge

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLI = Path(sys.executable).parent / "mathfactory"
REPEATS = 100  # GSM8K test x 100 = 131,900 rows for `mathfactory verify` end to end
PATHOLOGICAL = ("1", "\\boxed{(10^{6})!}")  # SymPy evaluates the factorial while comparing (~7 s)


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def math_verify_once(gold: str, completion: str) -> bool:
    """What a caller without this module would do: parse both, verify(gold, prediction), no signal timeouts."""
    return verify(parse(f"${gold}$", parsing_timeout=None), parse(completion, parsing_timeout=None),
                  timeout_seconds=None)


def cpu_seconds(pids: list[int]) -> float:
    """User+system CPU of other processes (the judge's workers), from /proc; 0 where that is unavailable."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used since boot (0 where /proc is unavailable)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    except (OSError, ValueError):
        return 0.0
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def cli_verify(path: Path, runs: int = 3) -> tuple[float, float, str]:
    """Best wall seconds of `mathfactory verify` (a fresh process each run: interpreter and CLI start included),
    the CPU seconds of that run, and its output."""
    best = (float("inf"), 0.0, "")
    for _ in range(runs):
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run([str(CLI), "verify", str(path), "--gold", "gold", "--pred", "pred"], check=True,
                              capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime
        best = min(best, (wall, cpu, done.stdout))
    return best


def timed(fn, items) -> tuple[float, list, list[float]]:
    """Total seconds, results, and each item's seconds."""
    out, each = [], []
    start = time.perf_counter()
    for it in items:
        t0 = time.perf_counter()
        out.append(fn(*it))
        each.append(time.perf_counter() - t0)
    return time.perf_counter() - start, out, each


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    table: list[tuple[str, str, str, str]] = []
    load = os.getloadavg()[0]

    # (1) GSM8K test: numeric fast path vs math-verify, one thread each, same (gold, worked solution) rows.
    gsm = [(r["answer"].rsplit("####", 1)[1].strip(), r["answer"]) for r in rows(args.data / "gsm8k/test.jsonl")]
    parse("$1$", parsing_timeout=None)  # build math-verify's grammar outside the timing
    fast_s = min(timed(grade_fast, gsm)[0] for _ in range(3))  # no caches inside: repeats are fair
    mv_cpu = time.process_time()
    mv_s, mv_out, _ = timed(math_verify_once, gsm)  # one pass: math-verify's LRU caches would flatter a repeat
    mv_cpu = time.process_time() - mv_cpu
    fast_ok = sum(g.correct for g in (grade_fast(*p) for p in gsm))
    table.append(("GSM8K test fast path", f"{len(gsm) / fast_s:,.0f}/s", f"{len(gsm) / mv_s:,.0f}/s",
                  f"{mv_s / fast_s:.1f}x (target >= 20x); correct {fast_ok} vs {sum(mv_out)} of {len(gsm)}"))

    # (1b) `mathfactory verify` end to end, CLI start included, on the test set x 100, vs math-verify's rate on the
    # same rows in one thread (its per-input caches hold 20 entries: a row repeats 1,319 rows later, uncached).
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gsm8k_test_x100.jsonl"
        with open(path, "w") as f:
            for _ in range(REPEATS):
                f.writelines(json.dumps({"gold": g, "pred": c}) + "\n" for g, c in gsm)
        cli_s, cli_cpu, shown = cli_verify(path)
    n = REPEATS * len(gsm)
    counted = sum(int(line.split("│")[2]) for line in shown.splitlines() if line.count("│") == 3)
    table.append((f"mathfactory verify, {n:,} rows", f"{n / cli_s:,.0f}/s", f"{len(gsm) / mv_s:,.0f}/s",
                  f"{n / len(gsm) * mv_s / cli_s:.1f}x end to end (target >= 50x); {cli_s:.2f} s wall, "
                  f"{cli_cpu:.2f} s CPU ({n / len(gsm) * mv_cpu / cli_cpu:.1f}x math-verify's CPU), CLI start "
                  f"included; {counted:,} rows in its table"))

    # (2) MATH500: the rows the fast path hands to math-verify, through the pool vs math-verify in one thread.
    math = rows(args.data / "math500/test.jsonl")
    latex = [(r["answer"], r["solution"]) for r in math if grade_fast(r["answer"], r["solution"]) is None]
    boxed = [(g, extract_answer(s)) for g, s in latex]
    for expr in WARM_UP:  # the same warm-up each judge worker does before it takes items
        math_verify_once(expr, f"${expr}$")
    cpu0 = time.process_time()
    single_s, single_out, per_item = timed(lambda g, b: math_verify_once(g, f"${b}$"), boxed)
    single_cpu = time.process_time() - cpu0
    cores = min(args.workers, os.cpu_count() or 1)
    with Judge(timeout_s=5.0, workers=args.workers) as judge:
        t0 = time.perf_counter()
        judge.grade("\\sqrt{4}", "\\boxed{2}")  # lazy start: workers spawn on the first LaTeX item
        startup = time.perf_counter() - t0
        t0, cpu0, wcpu0, busy0 = time.perf_counter(), time.process_time(), cpu_seconds(judge.pids), machine_busy_seconds()
        pool_out = judge.grade_many(latex)
        pool_s = time.perf_counter() - t0
        pool_cpu = time.process_time() - cpu0 + cpu_seconds(judge.pids) - wcpu0
        others = (machine_busy_seconds() - busy0 - pool_cpu) / pool_s  # cores other jobs took meanwhile
        t0 = time.perf_counter()
        all_out = judge.grade_many([(r["answer"], r["solution"]) for r in math])
        all_s = time.perf_counter() - t0
    with Judge(timeout_s=5.0, workers=1) as judge:  # fresh worker: cold parse caches, like the single thread
        judge.grade("\\sqrt{4}", "\\boxed{2}")
        latencies = timed(judge.grade, latex)[2]
    ratio = (len(latex) / pool_s) / (cores * len(latex) / single_s)
    table.append((f"MATH500 LaTeX rows ({len(latex)})", f"{len(latex) / pool_s:,.0f}/s pool",
                  f"{len(latex) / single_s:,.0f}/s 1 thread",
                  f"{ratio:.2f} of {cores} x single-thread (target >= 0.8); correct {sum(g.correct for g in pool_out)}"
                  f" vs {sum(single_out)}"))
    table.append(("  same rows, CPU seconds", f"{pool_cpu:.2f} s", f"{single_cpu:.2f} s",
                  f"{single_cpu / pool_cpu:.2f} CPU efficiency (1.0 = no pool overhead); the pool kept "
                  f"{pool_cpu / pool_s:.1f} cores busy while other jobs took {max(others, 0):.1f} of {os.cpu_count()}"))
    table.append(("MATH500 all rows (500)", f"{len(math) / all_s:,.0f}/s judge", "",
                  f"fast path took {len(math) - len(latex)} rows; correct {sum(g.correct for g in all_out)}"))
    table.append(("worker start (lazy)", f"{startup:.2f} s", "", f"{args.workers} workers, first LaTeX item"))

    # (3) latency of one item through the judge (pipe round trip + math-verify), vs in-process math-verify.
    table.append(("item latency, LaTeX rows", f"max {max(latencies) * 1e3:.0f} ms",
                  f"max {max(per_item) * 1e3:.0f} ms", f"p50 {statistics.median(latencies) * 1e3:.1f} ms (judge.grade, "
                  f"one at a time) vs {statistics.median(per_item) * 1e3:.1f} ms in-process"))

    # (4) a pathological item: killed at the limit, reason `timeout`, the worker replaced.
    with Judge(timeout_s=5.0, workers=1) as judge:
        judge.grade("\\sqrt{4}", "\\boxed{2}")
        t0 = time.perf_counter()
        grade = judge.grade(*PATHOLOGICAL)
        took = time.perf_counter() - t0
        table.append(("pathological (10^6)!", f"{took:.2f} s", "limit 5.00 s",
                      f"reason {grade.reason}; workers started {judge.started}"))

    print(f"\nverifier benchmark ({os.cpu_count()} cores, load average {load:.1f} at start)\n")
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    print(f"{'what':<{widths[0]}}  {'mathfactory':>{widths[1]}}  {'math-verify':>{widths[2]}}  ratio / note")
    for name, ours, theirs, note in table:
        print(f"{name:<{widths[0]}}  {ours:>{widths[1]}}  {theirs:>{widths[2]}}  {note}")


if __name__ == "__main__":
    main()
