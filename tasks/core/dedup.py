"""A run's problems -> the ones that repeat an earlier problem of the run, or one already in the lake: the same
words after `normalize` (exact), or a MinHash-estimated Jaccard similarity at or above a threshold (near).

Memory stays bounded by the run, not the lake: the run's problems are indexed (an exact-key dict and a MinHash LSH,
~3.6 KB a problem), and the lake's problems stream past that index one at a time (`earlier`), never held.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from mathfactory.tasks.core.gates import NearDuplicates, normalize
from mathfactory.tasks.core.records import ProblemSketch

if TYPE_CHECKING:
    from datasketch import LeanMinHash

# A dated run's id: {name}-{YYYY-MM-DD}-{config hash} (flows/config.py:FactoryConfig.run_id).
DATED_RUN = re.compile(r"^(?P<name>[a-z0-9][a-z0-9_-]*)-(?P<date>\d{4}-\d{2}-\d{2})-[0-9a-f]{8}$")


def exact_key(text: str) -> bytes:
    """The same key for texts with the same words (case, whitespace and punctuation aside)."""
    return hashlib.blake2b(" ".join(normalize(text)).encode(), digest_size=8).digest()


def earlier_runs(run_id: str, runs: Iterable[str], against: str) -> list[str]:
    """The runs whose problems `run_id`'s must not repeat: `earlier_dates`, the dated runs of the same preset
    name on earlier dates (earlier nights of a nightly refresh or a backfill), oldest first; `lake`, every other
    run; `none`, none. An undated run has no earlier dates."""
    if against == "none":
        return []
    if against == "lake":
        return sorted(r for r in runs if r != run_id)
    if against != "earlier_dates":
        raise ValueError(f"against must be earlier_dates, lake or none, got {against!r}")
    this = DATED_RUN.match(run_id)
    if this is None:
        return []
    dated = ((m["date"], r) for r in runs if (m := DATED_RUN.match(r)) and m["name"] == this["name"])
    return [r for date, r in sorted(dated) if date < this["date"]]


class Repeats:
    """Problems of one run, added in order (`add`), then earlier problems streamed past them (`earlier`).

    `add` keeps a problem unless it repeats one kept before it; `earlier` marks every kept problem an earlier one
    repeats (`repeated`: key -> reason). Reasons read `duplicate: ...` or `near_duplicate: ...`.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 64, shingle: int = 3, seed: int = 1):
        self.near = NearDuplicates(threshold=threshold, num_perm=num_perm, shingle=shingle, seed=seed)
        self._exact: dict[bytes, str] = {}
        self.repeated: dict[str, str] = {}
        self.streamed = 0

    def __len__(self) -> int:
        """Problems kept by `add`."""
        return len(self._exact)

    def add(self, key: str, text: str) -> str | None:
        """Why `text` is not kept (it repeats a problem kept before it), or None after keeping it."""
        exact = exact_key(text)
        if exact in self._exact:
            return f"duplicate: same question as {self._exact[exact]} in this run"
        sketch = self.near.sketch(text)
        found = self.near.similar(sketch)
        if found:
            (other, similarity), *_ = found
            return f"near_duplicate: Jaccard ~{similarity:.2f} with {other} in this run"
        self._exact[exact] = key
        self.near.keep(key, sketch)
        return None

    def earlier(self, origin: str, text: str) -> None:
        """One earlier problem (named `origin`): each kept problem it repeats is marked, once, by the first
        earlier problem found."""
        self.earlier_sketch(origin, exact_key(text), self.near.sketch(text))

    def earlier_sketch(self, origin: str, exact: bytes, sketch: LeanMinHash) -> None:
        """`earlier` from a problem's keys (as `sketches` gives them), without its text."""
        self.streamed += 1
        if exact in self._exact:
            self.repeated.setdefault(self._exact[exact], f"duplicate: same question as {origin}")
        for key, similarity in self.near.similar(sketch):
            self.repeated.setdefault(key, f"near_duplicate: Jaccard ~{similarity:.2f} with {origin}")

    def sketches(self, keys: Iterable[str]) -> Iterator[ProblemSketch]:
        """The keys of the named kept problems, to store beside them."""
        exact_of = {key: exact for exact, key in self._exact.items()}
        for key in keys:
            sketch = self.near.kept(key)
            yield ProblemSketch(key, int.from_bytes(exact_of[key], "little", signed=True),
                                sketch.hashvalues.astype(np.int64).tolist())

    def stored(self, row: ProblemSketch) -> tuple[bytes, LeanMinHash] | None:
        """A stored ProblemSketch as `earlier_sketch` takes it; None if it was drawn with other permutations."""
        if len(row.minhash) != self.near.num_perm:
            return None
        return row.exact.to_bytes(8, "little", signed=True), self.near.restore(row.minhash)
