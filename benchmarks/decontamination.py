"""Streamed synthetic problems -> decontamination and near-duplicate throughput and memory, side by side with a
naive set of every problem n-gram.

Run: .venv/bin/python benchmarks/decontamination.py [--n 1000000] [--data ../shared/data]. Prints a table; asserts
nothing about time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

from mathfactory.tasks.core.gates import Decontaminator, NearDuplicates, _gram_hashes, _word_hashes, normalize

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

    widths = [max(len(r[i]) for r in table) for i in range(3)]
    print(f"\ndecontamination benchmark ({os.cpu_count()} cores, load average {load:.1f} at start, "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB, most of it the naive set)\n")
    print(f"{'what':<{widths[0]}}  {'gate':>{widths[1]}}  {'naive':>{widths[2]}}  note")
    for name, ours, theirs, note in table:
        print(f"{name:<{widths[0]}}  {ours:>{widths[1]}}  {theirs:>{widths[2]}}  {note}")


def _fill(n: int) -> NearDuplicates:
    dedup = NearDuplicates()
    for k, text in enumerate(problems(n, 3, [])):
        dedup.first_seen(str(k), text)
    return dedup


if __name__ == "__main__":
    main()
