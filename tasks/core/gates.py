"""Synthesized problem text -> keep or drop: test-set decontamination and MinHash near-duplicate removal.

Memory: a Decontaminator holds 12 bytes per (test-set n-gram, item) pair (65k, 0.75 MiB for GSM8K + MATH500 test), and
nothing per problem checked beyond a word-hash cache capped at 16k words; NearDuplicates grows with the problems it
keeps (sketch + LSH band keys, ~2.4 KB each).
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # datasketch is imported where a gate is built: it costs ~1 s, and the own-files commands
    from datasketch import LeanMinHash  # reach this module without deduplicating anything

_NOT_WORD = re.compile(r"[\W_]+")
_BASE = 0x9E3779B97F4A7C15  # odd, so invertible mod 2^64: every word position counts, windows can be shifted
_BASE_INVERSE = pow(_BASE, -1, 1 << 64)


def normalize(text: str) -> list[str]:
    """Words of `text` after NFKC and lowercasing, every run of characters other than letters and digits (punctuation,
    symbols such as `$ + ^`, whitespace) read as one space: so "day.She" (a missing space) and "x-axis" vs "x axis"
    give the same words."""
    return _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).split()


def _grams(words: list[str], n: int) -> Iterator[list[str]]:
    for i in range(len(words) - n + 1):
        yield words[i : i + n]


@functools.lru_cache(maxsize=1 << 14)  # few words cover most text: word hashing ~5x faster
def _word_hash(word: str) -> bytes:
    return hashlib.blake2b(word.encode(), digest_size=8).digest()


def _word_hashes(words: list[str]) -> np.ndarray:
    return np.frombuffer(b"".join(map(_word_hash, words)), "<u8")


def _gram_hashes(word_hashes: np.ndarray, sizes: Iterable[int]) -> np.ndarray:
    """64-bit hash of every run of k words, for each k in `sizes` in that order: sum_j w[i+j] * B^j mod 2^64 over
    the words' blake2b hashes w, read off the prefix sums of w[t] * B^t times B^-i (uint64 arithmetic wraps).
    One blake2b per word instead of one per gram, and a handful of vectorized operations per gram size."""
    length = len(word_hashes)
    powers = np.cumprod(np.full(length, _BASE, np.uint64)) * np.uint64(_BASE_INVERSE)  # B^0 .. B^(length-1)
    inverses = np.cumprod(np.full(length, _BASE_INVERSE, np.uint64)) * np.uint64(_BASE)  # B^0 .. B^-(length-1)
    prefix = np.concatenate([np.zeros(1, np.uint64), np.cumsum(word_hashes * powers)])
    return np.concatenate([np.empty(0, np.uint64)] + [(prefix[k:] - prefix[:-k]) * inverses[: length - k + 1]
                                                      for k in sizes if k <= length])


class Decontaminator:
    """Hashed word n-grams of test items -> the test item a text overlaps, if any.

    A test item shorter than `n` words is one gram, its whole text, and matches any text holding it as a run of
    words: short problems ("Simplify sqrt 242") are contaminated by exactly that text.

    `coverage` 0 (the synthesis gate's rule): one shared gram is contamination. Above 0: the shared grams must be
    at least that fraction of the smaller of the two texts' gram sets (their overlap coefficient), i.e. one text is
    mostly in the other. Templated problems (the toy domain) share 10-grams by chance, so one gram proves nothing.
    """

    def __init__(self, items: Iterable[tuple[str, str]], n: int = 10, coverage: float = 0.0):
        if n < 1:
            raise ValueError(f"n must be positive, got {n}")
        if not 0 <= coverage <= 1:
            raise ValueError(f"coverage must be in [0, 1], got {coverage}")
        self.n, self.coverage = n, coverage
        self.origins: list[str] = []
        hashes, owners, sizes = [], [], set()
        for origin, text in items:
            words = normalize(text)
            if not words:
                continue
            size = min(n, len(words))
            sizes.add(size)
            grams = np.unique(_gram_hashes(_word_hashes(words), [size]))
            hashes.append(grams)
            owners.append(np.full(len(grams), len(self.origins), np.int32))
            self.origins.append(origin)
        # Every (gram, item) pair once, sorted by gram then item: 12 bytes a pair. The first pair of a gram names
        # the earliest item holding it.
        hashes_, owners_ = (np.concatenate(hashes or [np.empty(0, np.uint64)]),
                            np.concatenate(owners or [np.empty(0, np.int32)]))
        order = np.lexsort((owners_, hashes_))
        self._hashes, self._owners = hashes_[order], owners_[order]
        self._grams = np.bincount(self._owners, minlength=len(self.origins))  # distinct grams per item
        self._sizes = sorted(sizes, reverse=True)  # n, then the word counts of shorter items

    def __len__(self) -> int:
        """The number of distinct hashed n-grams stored."""
        return int(np.count_nonzero(np.diff(self._hashes))) + 1 if len(self._hashes) else 0

    def match(self, text: str) -> str | None:
        """Origin of the test item `text` overlaps by the rule (with coverage 0: the longest shared gram's
        earliest item), or None if `text` is clean."""
        if self.coverage > 0:
            found = self.overlap(text)
            return found[0] if found is not None else None
        grams = _gram_hashes(_word_hashes(normalize(text)), self._sizes)
        if not len(grams) or not len(self._hashes):
            return None
        at = np.searchsorted(self._hashes, grams).clip(max=len(self._hashes) - 1)
        hits = np.flatnonzero(self._hashes[at] == grams)
        return self.origins[self._owners[at[hits[0]]]] if len(hits) else None

    def overlap(self, text: str) -> tuple[str, int, int] | None:
        """(origin, shared grams, grams of the smaller text) for the test item `text` overlaps most (ties: the
        earliest), if that is at least `coverage` of the smaller text (and at least one gram); else None."""
        words = normalize(text)
        grams = np.unique(_gram_hashes(_word_hashes(words), self._sizes))
        if not len(grams) or not len(self._hashes):
            return None
        lo, hi = np.searchsorted(self._hashes, grams, "left"), np.searchsorted(self._hashes, grams, "right")
        runs = hi - lo
        if not runs.sum():
            return None
        starts = np.repeat(lo - np.cumsum(runs) + runs, runs)  # every pair of every shared gram
        items, shared = np.unique(self._owners[starts + np.arange(runs.sum())], return_counts=True)
        # The text's own grams at size n (a short text is one gram), as the items count theirs.
        own = len(np.unique(_gram_hashes(_word_hashes(words), [min(self.n, len(words))])))
        smaller = np.minimum(self._grams[items], own)
        best = int(np.argmax(shared / smaller))  # argmax takes the first (earliest item) of equal fractions
        if shared[best] / smaller[best] < max(self.coverage, 1e-12):
            return None
        return self.origins[items[best]], int(shared[best]), int(smaller[best])


class NearDuplicates:
    """Stream of (key, text) -> for each text, the key of an earlier near-duplicate, else None (and it is kept).

    Near-duplicate: MinHash-estimated Jaccard similarity of `shingle`-word shingles >= `threshold`. LSH only
    proposes candidates; each is confirmed against its stored sketch, so LSH's false positives never drop a text.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 64, shingle: int = 3, seed: int = 1):
        """threshold: Jaccard above which two texts are one (0.8: one changed word in a 40-word problem passes).
        num_perm: sketch length (64: Jaccard estimated to about +-0.05, 4x lighter than datasketch's 256 default).
        shingle: words per shingle (3: one changed word breaks 3 shingles, templated problems still differ).
        seed: permutation seed; equal seeds give equal sketches across runs and machines."""
        from datasketch import LeanMinHash, MinHash, MinHashLSH

        self.threshold, self.num_perm, self.shingle, self.seed = threshold, num_perm, shingle, seed
        self._lean = LeanMinHash
        # LSH only proposes candidates and each is checked against its sketch, so tune it for recall: weights
        # (false positives 0.1, false negatives 0.9) give 9 bands of 7 rows at 64 perms, which propose a pair at
        # Jaccard 0.8 88 % of the time, at 0.9 always; datasketch's even weights (5 x 11) proposed it 36 % / 85 %.
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.1, 0.9))
        self._kept: dict[str, tuple[int, LeanMinHash]] = {}  # key -> (insertion rank, sketch)
        self._empty = MinHash(num_perm=num_perm, seed=seed)  # copied per text: drawing permutations costs ~8x more

    def __len__(self) -> int:
        """The number of texts kept so far."""
        return len(self._kept)

    def sketch(self, text: str) -> LeanMinHash:
        """MinHash of the word shingles of `text` (a text shorter than `shingle` words is one shingle)."""
        words = normalize(text)
        size = max(1, min(self.shingle, len(words)))
        minhash = self._empty.copy()
        minhash.update_batch({" ".join(g).encode() for g in _grams(words, size)})
        return self._lean(minhash)

    def similar(self, sketch: LeanMinHash) -> list[tuple[str, float]]:
        """Every kept text at least `threshold` similar to `sketch` as (key, estimated Jaccard), the most similar
        first, ties to the earliest kept. Keeps nothing."""
        found = []
        for candidate in self._lsh.query(sketch):
            rank, other = self._kept[candidate]
            similarity = sketch.jaccard(other)
            if similarity >= self.threshold:
                found.append((-similarity, rank, candidate))
        return [(key, -negative) for negative, _, key in sorted(found)]

    def restore(self, hashvalues: list[int]) -> LeanMinHash:
        """A sketch from its stored hash values (drawn with this instance's permutations)."""
        return self._lean(seed=self.seed, hashvalues=np.array(hashvalues, self._empty.hashvalues.dtype),
                           scheme=self._empty.scheme)

    def kept(self, key: str) -> LeanMinHash:
        return self._kept[key][1]

    def keep(self, key: str, sketch: LeanMinHash) -> None:
        self._lsh.insert(key, sketch)
        self._kept[key] = (len(self._kept), sketch)

    def first_seen(self, key: str, text: str) -> str | None:
        """Key of the earlier text `text` nearly duplicates (then `text` is not kept), else None after keeping it.

        Of several earlier matches, the most similar wins, ties to the earliest kept: the answer does not depend
        on set order (string hashing is randomized per process)."""
        sketch = self.sketch(text)
        found = self.similar(sketch)
        if found:
            return found[0][0]
        self.keep(key, sketch)
        return None
