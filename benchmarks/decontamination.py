"""Streamed synthetic problems -> decontamination and near-duplicate throughput and memory, side by side with a
naive set of every problem n-gram; and the problems stage's check of one night against a lake of --lake-n earlier
problems (real Parquet parts, streamed past an index of the night's), side by side with indexing the lake.

Run: .venv/bin/python benchmarks/decontamination.py [--n 1000000] [--lake-n 1000000] [--data ../shared/data].
Prints a table; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mathfactory.tasks.core.dedup import Repeats, exact_key
from mathfactory.tasks.core.gates import Decontaminator, NearDuplicates, _gram_hashes, _word_hashes, normalize
from mathfactory.tasks.core.records import Problem, ProblemSketch, stable_id
from mathfactory.tasks.screen import ProblemGatesConfig, screened
from mathfactory.tasks.stage import Meter, Run
from mathfactory.tasks.storage import Lake

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NAMES = ("Ava", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jade", "Kai", "Lena", "Milo", "Nora")
ITEMS = ("apples", "marbles", "stickers", "books", "coins", "cards", "shells", "pencils", "stamps", "beads")
SENTENCES = (
    "{p} buys {n} packs of {i} at ${m} each.",
    "{p} gives {n} {i} to {q} and keeps the rest.",
    "Every week {p} collects {n} more {i} than {q} does.",
    "{q} has {m} {i}, which is {n} times what {p} had last year.",
    "A store sells {i} in boxes of {n} for ${m}.",
    "{p} splits {m} {i} equally among {n} friends.",
)
QUESTIONS = ("How many {i} does {p} have now?", "How much money does {p} spend in total?",
             "How many {i} do {p} and {q} have together?", "What fraction of the {i} does {q} keep?")


def problems(n: int, seed: int, planted: list[str]) -> Iterator[str]:
    """n templated word problems (3-6 sentences, random people, items and numbers) with 10 test questions
    (upper-cased) planted among them; yielded one at a time, never held."""
    rng = random.Random(seed)
    every = max(1, n // 10)
    for k in range(n):
        if k % every == every // 2 and planted:
            yield planted[(k // every) % len(planted)].upper()
            continue
        p, q = rng.sample(NAMES, 2)
        i = rng.choice(ITEMS)
        body = " ".join(rng.choice(SENTENCES).format(p=p, q=q, i=i, n=rng.randint(2, 99), m=rng.randint(2, 999))
                        for _ in range(rng.randint(3, 6)))
        yield f"{body} {rng.choice(QUESTIONS).format(p=p, q=q, i=i)}"


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def traced_peak(fn) -> tuple[int, object]:
    """Peak bytes Python allocated while running fn (tracemalloc), and fn's result."""
    tracemalloc.start()
    try:
        out = fn()
        return tracemalloc.get_traced_memory()[1], out
    finally:
        tracemalloc.stop()


def naive_gram_set(texts: Iterator[str], n: int) -> set[int]:
    """What a caller without the gate might do: hash every problem's n-grams into one set, then intersect."""
    grams: set[int] = set()
    for text in texts:
        grams.update(_gram_hashes(_word_hashes(normalize(text)), [n]).tolist())
    return grams


def mib(b: float) -> str:
    return f"{b / 2**20:,.1f} MiB" if b >= 2**20 else f"{b / 2**10:,.1f} KiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--n", type=int, default=1_000_000, help="problems streamed through the decontaminator")
    ap.add_argument("--slice", type=int, default=100_000, help="problems measured under tracemalloc")
    ap.add_argument("--dedup", type=int, default=50_000, help="problems through MinHash near-duplicate removal")
    ap.add_argument("--lake-n", type=int, default=1_000_000, help="earlier problems in the lake a night is checked "
                    "against (0: skip)")
    ap.add_argument("--night", type=int, default=5_000, help="problems of the night checked against the lake")
    args = ap.parse_args()
    gsm8k = [(f"gsm8k/test.jsonl:{i}", r["question"]) for i, r in enumerate(rows(args.data / "gsm8k/test.jsonl"))]
    math500 = [(f"math500/test.jsonl:{i}", r["problem"]) for i, r in enumerate(rows(args.data / "math500/test.jsonl"))]
    planted = [t for _, t in gsm8k[:5]]
    table: list[tuple[str, str, str, str]] = []
    load = os.getloadavg()[0]

    gate_bytes, gate = traced_peak(lambda: Decontaminator(gsm8k + math500))
    stored = gate._hashes.nbytes + gate._owners.nbytes
    table.append(("gate: test-set grams (n=10)", f"{len(gate):,}", "", f"{mib(stored)} of arrays, "
                  f"build peak {mib(gate_bytes)}"))

    # Memory first, while the word-hash cache is cold: the streaming peak then includes its growth.
    sliced = args.slice
    stream_peak, _ = traced_peak(lambda: sum(gate.match(t) is not None for t in problems(sliced, 1, planted)))
    naive_peak, naive = traced_peak(lambda: naive_gram_set(problems(sliced, 1, planted), gate.n))
    table.append((f"memory, {sliced:,} problems (tracemalloc peak)", mib(stream_peak), mib(naive_peak),
                  f"naive: a set of all {len(naive):,} problem grams (same 64-bit hashes)"))
    del naive
    ours, theirs = stored + stream_peak, stored + naive_peak * args.n / sliced
    table.append((f"memory held, {args.n:,} problems", mib(ours), mib(theirs),
                  f"both with the test-set arrays; streaming does not grow, naive extrapolated linearly: "
                  f"{theirs / ours:,.0f}x"))

    start = time.perf_counter()
    generated = sum(1 for _ in problems(args.n, 0, planted))
    gen_s = time.perf_counter() - start
    start = time.perf_counter()
    hits = sum(gate.match(text) is not None for text in problems(args.n, 0, planted))
    total_s = time.perf_counter() - start
    table.append((f"decontaminate {args.n:,} problems", f"{args.n / total_s:,.0f}/s",
                  "", f"{total_s:.0f} s; {hits} hits (10 planted); generating alone "
                      f"{generated / gen_s:,.0f}/s, so the gate alone {args.n / (total_s - gen_s):,.0f}/s"))

    dedup = NearDuplicates()
    start = time.perf_counter()
    dropped = sum(dedup.first_seen(str(k), t) is not None for k, t in enumerate(problems(args.dedup, 2, planted)))
    dedup_s = time.perf_counter() - start
    table.append((f"MinHash dedup {args.dedup:,} problems", f"{args.dedup / dedup_s:,.0f}/s", "",
                  f"{dedup_s:.0f} s; {dropped} dropped (the 10 planted are 5 questions twice; threshold 0.8, "
                  f"64 perms, 3-word shingles)"))
    small = min(10_000, args.dedup)
    dedup_peak, kept = traced_peak(lambda: _fill(small))
    table.append((f"MinHash dedup memory, {small:,} problems", mib(dedup_peak), "",
                  f"{dedup_peak / len(kept):,.0f} B per problem kept (sketch + LSH band keys), {len(kept):,} kept"))

    if args.lake_n:
        table += lake_rows(args.lake_n, args.night, args.data, dedup_peak / len(kept))

    widths = [max(len(r[i]) for r in table) for i in range(3)]
    print(f"\ndecontamination benchmark ({os.cpu_count()} cores, load average {load:.1f} at start, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB, most of it the naive set)\n")
    print(f"{'what':<{widths[0]}}  {'gate':>{widths[1]}}  {'naive':>{widths[2]}}  note")
    for name, ours, theirs, note in table:
        print(f"{name:<{widths[0]}}  {ours:>{widths[1]}}  {theirs:>{widths[2]}}  {note}")


def rss_mib() -> float:
    """This process's resident memory now (not the peak), in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def lake_rows(n: int, night: int, data: Path, per_kept: float) -> list[tuple[str, str, str, str]]:
    """`n` earlier problems written as 10 dated runs' problems stages with their keys (as the stage stores them),
    then a night of `night` problems (10 repeats of earlier ones: 5 exact, 5 with their last word changed) through
    the problems stage's gates."""
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-lake-") as tmp:
        lake, near = Lake(tmp), NearDuplicates()
        start, per_run, repeats = time.perf_counter(), n // 10, []
        for day in range(10):
            run_id = f"bench-2026-11-{day + 1:02d}-{day:08x}"
            written = [Problem(stable_id("bench", day, k), "bench", "train", "x", text, "#### 1", "1")
                       for k, text in enumerate(problems(per_run, 100 + day, []))]
            repeats.append(written[0].question)
            lake.write_part(run_id, "problems", 0, Problem, written)
            lake.write_part(run_id, "problems/_sketches", 0, ProblemSketch, (
                ProblemSketch(p.problem_id, int.from_bytes(exact_key(p.question), "little", signed=True),
                              near.sketch(p.question).hashvalues.astype(np.int64).tolist()) for p in written))
            lake.commit(run_id, "problems", Problem)
            del written
        write_s = time.perf_counter() - start
        planted = [t if i % 2 else t.rsplit(" ", 1)[0] + " altogether?" for i, t in enumerate(repeats)]
        tonight = [Problem(stable_id("night", k), "bench", "train", "x", text, "#### 1", "1")
                   for k, text in enumerate([*planted, *problems(night - len(planted), 999, [])])]
        run = Run(lake=tmp, run_id="bench-2026-11-11-0000000b")
        cfg = ProblemGatesConfig(test_sets=["gsm8k", "math500"], data_path=str(data))
        before, meter = rss_mib(), Meter("problems")
        start = time.perf_counter()
        kept = screened(cfg, run, tonight, [], meter)
        scan_s = time.perf_counter() - start
        after, gates = rss_mib(), meter.counts["gates"]
        by_gate = ", ".join(f"{g} {k}" for g, k in gates["dropped"].items())
        rows.append((f"lake: write {n:,} earlier problems", f"{n / write_s:,.0f}/s", "",
                     f"{write_s:.0f} s, 10 dated runs' problems stages with their keys (sketching is most of it)"))
        rows.append((f"lake: check {night:,} new against {n:,}", f"{n / scan_s:,.0f}/s", "",
                     f"{scan_s:.0f} s with stored keys; dropped {by_gate} (10 planted: 5 exact, 5 last word "
                     f"changed); {len(kept):,} kept"))
        sliced = min(100_000, per_run)
        index_peak, index = traced_peak(lambda: _index(tonight))
        for how in ("keys", "text"):
            index = _index(tonight)
            start = time.perf_counter()
            _stream(index, tmp, sliced, how)
            rows.append((f"lake: stream {sliced:,} earlier, {how}", f"{sliced / (time.perf_counter() - start):,.0f}/s",
                         "", "stored keys, or each question sketched again (a run from before keys were kept)"))
        rows.append((f"lake: the night's index, {night:,} problems", mib(index_peak), "",
                     f"{index_peak / night:,.0f} B per problem (exact key, sketch, LSH bands): grows with the night"))
        for streamed in (sliced // 10, sliced):
            peak, _ = traced_peak(lambda streamed=streamed: _stream(index, tmp, streamed, "keys"))
            rows.append((f"lake: memory, {streamed:,} earlier streamed past it", mib(peak), mib(per_kept * streamed),
                         "tracemalloc peak while streaming (flat: one row group of keys at a time); naive: an LSH "
                         f"over the earlier problems instead ({per_kept:,.0f} B each, measured above)"))
        rows.append((f"lake: memory, {night:,} new vs {n:,} streamed", f"{after - before:+,.0f} MiB RSS",
                     mib(per_kept * n), f"resident memory {before:,.0f} -> {after:,.0f} MiB across the whole check; "
                     "naive extrapolated linearly"))
    return rows


def _index(tonight: list[Problem]) -> Repeats:
    repeats = Repeats()
    for p in tonight:
        repeats.add(p.problem_id, p.question)
    return repeats


def _stream(repeats: Repeats, lake: str, n: int, how: str) -> int:
    """The first `n` problems of the first earlier run streamed past the night's index, by their stored keys or
    by their text."""
    run_id, store = "bench-2026-11-01-00000000", Lake(lake)
    if how == "keys":
        for row in itertools.islice(store.read_part(run_id, "problems/_sketches", 0, ProblemSketch), n):
            repeats.earlier_sketch(row.problem_id, *repeats.stored(row))
    else:
        for problem_id, question in itertools.islice(store.read_columns(run_id, "problems", ["problem_id", "question"]), n):
            repeats.earlier(problem_id, question)
    return len(repeats.repeated)


def _fill(n: int) -> NearDuplicates:
    dedup = NearDuplicates()
    for k, text in enumerate(problems(n, 3, [])):
        dedup.first_seen(str(k), text)
    return dedup


if __name__ == "__main__":
    main()
