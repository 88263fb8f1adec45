"""MATH500 JSONL (or Parquet) rows -> Problem, and bad rows -> Quarantined with file:line and reason.

Problem has no subject field, so the stage carries both: `"level{level}/{subject}"`, e.g. "level2/Precalculus"
(level first: difficulty is what stages group by; `level_parts` splits it back). The solution is the LaTeX
worked solution (final answer in `\\boxed{}`), the answer the `answer` field as is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mathfactory.tasks.core.records import Problem, Quarantined, stable_id
from mathfactory.tasks.domains.gsm8k import quarantine, read_problems, require_strings, resolve

SOURCE = "math500"
SPLITS = ("test",)  # a test set only: MATH500 is a held-out evaluation and decontamination reference
DEFAULT_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / SOURCE
LEVELS = range(1, 6)
# The original MATH release writes levels as "Level 3"; MATH500 as the integer 3. Accept both.
_LEVEL = re.compile(r"(?:Level\s*)?([0-9]+)")


def parse_level(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        level = value
    elif isinstance(value, str) and (m := _LEVEL.fullmatch(value.strip())):
        level = int(m.group(1))
    else:
        return None
    return level if level in LEVELS else None


def level_parts(stage: str) -> tuple[int, str]:
    """A stage back as (level, subject): "level2/Precalculus" -> (2, "Precalculus")."""
    level, _, subject = stage.partition("/")
    return int(level.removeprefix("level")), subject


def parse_row(row: dict, origin: str, split: str = "test") -> Problem | Quarantined:
    """One MATH500 row -> Problem, or Quarantined naming `origin` and the reason. Pure."""
    fields = require_strings(row, ("problem", "solution", "answer", "subject"))
    if isinstance(fields, str):
        return quarantine(origin, fields, row)
    problem, solution, answer, subject = fields
    if "level" not in row or row["level"] is None:
        return quarantine(origin, "missing field 'level'", row)
    level = parse_level(row["level"])
    if level is None:
        return quarantine(origin, f"field 'level' is {row['level']!r}, expected 1-5", row)
    return Problem(
        problem_id=stable_id(SOURCE, problem),
        source=SOURCE,
        split=split,
        level=f"level{level}/{subject.strip()}",
        question=problem,
        solution=solution,
        answer=answer.strip(),
    )


def load(split: str = "test", path: str | None = None, **storage_options: Any) -> Iterator[Problem | Quarantined]:
    """Stream MATH500 as Problems (bad rows as Quarantined); only a missing file raises DataError.

    `path` is a JSONL/Parquet file (local path or fsspec URL) or a folder holding `test.jsonl`;
    default: the shared reference data.
    """
    if split not in SPLITS:
        raise ValueError(f"MATH500 has only a test split, got {split!r}")
    return read_problems(resolve(path, SOURCE, DEFAULT_DIR, split), split, parse_row, storage_options)
