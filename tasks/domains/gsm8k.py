"""GSM8K JSONL (or Parquet) rows -> Problem, and bad rows -> Quarantined with file:line and reason.

A GSM8K answer is a worked solution, one step per line with calculator annotations `<<48/2=24>>`, ending with
`#### N`. The solution is kept as is (annotations and `####` line included: later stages grade and split it in
that format); the stage is `"{n}-step"`, n the number of non-blank lines before `####`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mathfactory.tasks.core.records import Problem, Quarantined, stable_id
from mathfactory.tasks.storage import iter_file_rows

SOURCE = "gsm8k"
SPLITS = ("train", "test")
# The checkout sits beside shared/ (see README); MATHFACTORY_DATA (pointing at shared/data) overrides it.
DEFAULT_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / SOURCE
EXCERPT_CHARS = 200


def parse_row(row: dict, origin: str, split: str) -> Problem | Quarantined:
    """One GSM8K row -> Problem, or Quarantined naming `origin` and the reason. Pure."""
    fields = require_strings(row, ("question", "answer"))
    if isinstance(fields, str):
        return quarantine(origin, fields, row)
    question, answer = fields
    body, sep, final = answer.rpartition("####")
    if not sep:
        return quarantine(origin, "answer has no '####' final-answer line", row)
    if "####" in body:
        return quarantine(origin, "answer has more than one '####' line", row)
    if not final.strip():
        return quarantine(origin, "answer has nothing after '####'", row)
    n_steps = sum(1 for line in body.split("\n") if line.strip())
    if n_steps == 0:
        return quarantine(origin, "answer has no solution steps before '####'", row)
    return Problem(
        problem_id=stable_id(SOURCE, question),
        source=SOURCE,
        split=split,
        level=f"{n_steps}-step",
        question=question,
        solution=answer,
        answer=final.strip(),
    )


def load(split: str = "train", path: str | None = None, **storage_options: Any) -> Iterator[Problem | Quarantined]:
    """Stream a GSM8K split as Problems (bad rows as Quarantined); only a missing file raises DataError.

    `path` is a JSONL/Parquet file (local path or fsspec URL) or a folder holding `{split}.jsonl`;
    default: the shared reference data.
    """
    if split not in SPLITS:
        raise ValueError(f"GSM8K split must be one of {SPLITS}, got {split!r}")
    return read_problems(resolve(path, SOURCE, DEFAULT_DIR, split), split, parse_row, storage_options)


# -- shared with the MATH500 loader ------------------------------------------------------------------------


def resolve(path: str | None, source: str, default_dir: Path, split: str) -> str:
    """The file to read: `path` if it names a file, else `{folder}/{split}.jsonl` (a string rule, no I/O)."""
    if path is None:
        env = os.environ.get("MATHFACTORY_DATA")
        folder = str(Path(env) / source) if env else str(default_dir)
    elif path.endswith((".jsonl", ".json", ".parquet")):
        return path
    else:
        folder = path.rstrip("/")
    return f"{folder}/{split}.jsonl"


def read_problems(
    url: str, split: str, parse: Callable[[dict, str, str], Problem | Quarantined], storage_options: dict
) -> Iterator[Problem | Quarantined]:
    for origin, row, error in iter_file_rows(url, **storage_options):
        if error is not None:  # an unreadable line: no row to excerpt, the reason says what is wrong with it
            yield Quarantined(stage="problems", origin=origin, reason=error, excerpt="")
        else:
            yield parse(row, origin, split)


def require_strings(row: dict, names: tuple[str, ...]) -> tuple[str, ...] | str:
    """The named fields if each is a non-blank string, else the reason the first bad one is refused."""
    values = []
    for name in names:
        if name not in row or row[name] is None:
            return f"missing field {name!r}"
        value = row[name]
        if not isinstance(value, str):
            return f"field {name!r} is {type(value).__name__}, expected a string"
        if not value.strip():
            return f"field {name!r} is empty"
        values.append(value)
    return tuple(values)


def quarantine(origin: str, reason: str, row: dict) -> Quarantined:
    excerpt = json.dumps(row, ensure_ascii=False, default=str)[:EXCERPT_CHARS]
    return Quarantined(stage="problems", origin=origin, reason=reason, excerpt=excerpt)
