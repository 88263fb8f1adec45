"""A run's problems -> the train problems that pass decontamination and deduplication (the problems stage runs
this on every source before anything is sampled); each one dropped is quarantined with its gate and reason.

Gates, in order: `decontaminate` (the problem and a test item share most of their word n-grams; test items: the
run's own test split, the named benchmarks and the user's files), `duplicate` / `near_duplicate` (the same words,
or MinHash Jaccard >= threshold, as a train problem kept before it in this run, then as a problem of an earlier
run in the lake). The lake's problems stream past an index of this run's, so memory follows the run, not the lake;
each run keeps its kept problems' keys in `problems/_sketches/` (ProblemSketch), so later runs read those instead
of sketching the texts again (a run from before has its train questions read and sketched instead).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mathfactory.tasks.core.dedup import Repeats, earlier_runs
from mathfactory.tasks.core.gates import Decontaminator
from mathfactory.tasks.core.records import Problem, ProblemSketch
from mathfactory.tasks.gate import benchmark_items
from mathfactory.tasks.stage import Meter, Run
from mathfactory.tasks.storage import DataError, Lake, iter_file_rows

GATES = ("decontaminate", "duplicate", "near_duplicate")
SKETCHES = "_sketches"


class ProblemGatesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    test_sets: list[Literal["gsm8k", "math500"]] = Field(
        ["gsm8k", "math500"], description="Benchmarks no train problem may overlap, beside the run's own test "
        "split (always checked).")
    test_files: list[str] = Field([], description="Your own test sets (JSONL/Parquet, a `question` or `problem` "
                                  "column) no train problem may overlap.")
    data_path: str | None = Field(None, description="Folder holding gsm8k/ and math500/ (None: ../shared/data).")
    ngram: int = Field(10, ge=1, description="Words per n-gram for decontamination.")
    coverage: float = Field(0.5, ge=0, le=1, description="Shared n-grams, as a fraction of the smaller text's, "
                            "that make a problem contaminated (0: any one shared n-gram). Toy problems share "
                            "10-grams by chance (one shared gram would drop 2,637 of 4,000 against the toy test split).")
    near_dup_threshold: float = Field(0.8, gt=0, le=1, description="Estimated Jaccard similarity (word 3-gram "
                                      "shingles) at which a problem is a near-duplicate.")
    num_perm: int = Field(64, ge=16, description="MinHash permutations.")
    against: Literal["earlier_dates", "lake", "none"] = Field(
        "earlier_dates", description="Earlier problems a run's must not repeat: earlier_dates, those of the dated "
        "runs of the same preset on earlier dates (the nightly refresh's earlier nights, a backfill's earlier "
        "days); lake, every other run's; none, only this run's own.")


def test_items(cfg: ProblemGatesConfig, own: Iterable[Problem]) -> Iterator[tuple[str, str]]:
    """(origin, question) of every test item: the run's own test split, the benchmarks, the user's files (each
    origin once: a GSM8K run's own test split is the gsm8k benchmark)."""
    seen: set[str] = set()

    def fresh(origin: str) -> bool:
        new = origin not in seen
        seen.add(origin)
        return new

    for p in own:
        if fresh(origin := f"{p.source} test {p.problem_id}"):
            yield origin, p.question
    try:
        for origin, text in benchmark_items(cfg.test_sets, cfg.data_path):
            if fresh(origin):
                yield origin, text
    except DataError as e:
        raise DataError(f"problems.gates.test_sets: {e} (set problems.gates.data_path, or leave the set out)") from None
    for url in cfg.test_files:
        for origin, row, error in iter_file_rows(url):
            text = None if row is None else row.get("question", row.get("problem"))
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"problems.gates.test_files: {origin}: "
                                f"{error or 'no question (a non-empty `question` or `problem` string)'}")
            yield origin, text


def screened(cfg: ProblemGatesConfig, run: Run, train: list[Problem], test: list[Problem], meter: Meter,
             shard: int = 0) -> list[Problem]:
    """The train problems that pass every gate, in their order; the rest refused as `gate: reason`, and what each
    gate dropped counted (`gates`). The kept problems' keys are written beside the stage's part `shard`."""
    t0 = time.perf_counter()
    contamination = Decontaminator(test_items(cfg, test), n=cfg.ngram, coverage=cfg.coverage)
    repeats = Repeats(threshold=cfg.near_dup_threshold, num_perm=cfg.num_perm)
    reasons: list[str | None] = []
    for p in train:
        hit = contamination.overlap(p.question)
        if hit is not None:
            origin, shared, total = hit
            reasons.append(f"decontaminate: shares {shared} of {total} {cfg.ngram}-grams with {origin}")
        else:
            reasons.append(repeats.add(p.problem_id, p.question))
    earlier = [r for r in earlier_runs(run.run_id, run.store.runs(), cfg.against)
               if run.store.marker(r, "problems") is not None]
    for other in earlier:
        stream_earlier(run.store, other, repeats)
    final = [r if r is not None else repeats.repeated.get(p.problem_id) for p, r in zip(train, reasons, strict=True)]
    kept = []
    for p, reason in zip(train, final, strict=True):
        if reason is None:
            kept.append(p)
        else:
            meter.refuse(p.problem_id, reason, p.question)
    dropped = Counter(r.split(":", 1)[0] for r in final if r)
    run.store.write_part(run.run_id, f"{meter.stage}/{SKETCHES}", shard, ProblemSketch,
                         repeats.sketches(p.problem_id for p in kept))
    meter.add(gates={"checked": len(train), "kept": len(kept), "dropped": {g: dropped.get(g, 0) for g in GATES},
                     "test_items": len(contamination.origins), "earlier_runs": len(earlier),
                     "earlier_problems": repeats.streamed, "seconds": round(time.perf_counter() - t0, 2)})
    return kept


def stream_earlier(lake: Lake, run_id: str, repeats: Repeats) -> None:
    """An earlier run's train problems past `repeats`: their stored keys, or (for a run from before they were
    stored, or drawn with other permutations) their questions."""
    unsketched: set[str] | None = None
    if lake.has_part(run_id, f"problems/{SKETCHES}", 0):
        unsketched = set()
        for row in lake.read_part(run_id, f"problems/{SKETCHES}", 0, ProblemSketch):
            stored = repeats.stored(row)
            if stored is None:
                unsketched.add(row.problem_id)
            else:
                repeats.earlier_sketch(f"{run_id} problem {row.problem_id}", *stored)
    if unsketched == set():
        return
    for problem_id, split, question in lake.read_columns(run_id, "problems", ["problem_id", "split", "question"]):
        if split == "train" and (unsketched is None or problem_id in unsketched):
            repeats.earlier(f"{run_id} problem {problem_id}", question)
