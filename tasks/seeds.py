"""Stage `seeds`: a corpus of math text (the toy domain's, GSM8K train, or the user's JSONL/Parquet) -> SeedText
chunks with ids. An empty or non-text row is skipped, counted and quarantined with its file:line."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mathfactory.tasks.core.records import Quarantined, SeedText, stable_id
from mathfactory.tasks.core.synthesis import chunk
from mathfactory.tasks.domains import toy
from mathfactory.tasks.stage import Meter, Run, StageSpec, summed
from mathfactory.tasks.storage import iter_file_rows

STAGE = "seeds"


class SeedsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["toy", "gsm8k", "files"] = Field("toy", description="toy: the toy domain's corpus; gsm8k: "
                                                     "GSM8K train (question + worked answer); files: `files`.")
    n: int | None = Field(600, ge=1, description="Seed texts to make (toy) or read at most (None: all).")
    files: list[str] = Field([], description="source=files: JSONL/Parquet files, one text per row in `text_field`.")
    text_field: str = Field("text", description="source=files: the column holding the text.")
    path: str | None = Field(None, description="source=gsm8k: folder or file (None: ../shared/data/gsm8k).")
    max_chars: int = Field(1200, ge=16, description="Longest chunk; longer texts are cut at sentence boundaries.")


def _texts(cfg: SeedsConfig, seed: int) -> Iterator[tuple[str, str, str | ValueError]]:
    """(origin, kind, text) per corpus row, or the reason in place of the text when the row has none."""
    if cfg.source == "toy":
        for i, (kind, text) in enumerate(toy.corpus(cfg.n or 0, seed)):
            yield f"toy-corpus:{i}", kind, text
        return
    if cfg.source == "gsm8k":
        from mathfactory.tasks.domains import gsm8k

        path = gsm8k.resolve(cfg.path, gsm8k.SOURCE, gsm8k.DEFAULT_DIR, "train")
        rows = ((origin, row, error, ("question", "answer")) for origin, row, error in iter_file_rows(path))
    else:
        rows = ((origin, row, error, (cfg.text_field,)) for f in cfg.files for origin, row, error in iter_file_rows(f))
    for origin, row, error, fields in rows:
        if error is not None:
            yield origin, "", ValueError(error)
            continue
        bad = next((f for f in fields if not isinstance(row.get(f), str)), None)
        if bad is None:
            yield origin, "", "\n".join(row[f] for f in fields)
        else:
            yield origin, "", ValueError(f"{bad!r} is missing" if row.get(bad) is None
                                         else f"{bad!r} is not text ({type(row[bad]).__name__})")


def seed_texts(cfg: SeedsConfig, seed: int, quarantined: list[Quarantined]) -> Iterator[SeedText]:
    """The corpus as chunks, at most `cfg.n` of them; bad rows go to `quarantined`."""
    def chunks() -> Iterator[SeedText]:
        for origin, kind, text in _texts(cfg, seed):
            reason = str(text) if isinstance(text, ValueError) else "empty text" if not text.strip() else None
            if reason:
                quarantined.append(Quarantined(STAGE, origin, reason, repr(text)[:200]))
                continue
            for k, piece in enumerate(chunk(text, cfg.max_chars)):
                where = f"{origin}#{k}"
                yield SeedText(stable_id(cfg.source, where, piece), cfg.source, where, kind, piece)

    return itertools.islice(chunks(), cfg.n)


def seeds(cfg: SeedsConfig, run: Run, shard: int, meter: Meter) -> Iterator[SeedText]:
    quarantined: list[Quarantined] = []
    yield from seed_texts(cfg, run.seed, quarantined)
    for q in quarantined:
        meter.refuse(q.origin, q.reason, q.excerpt)


def _summarize(cfg: SeedsConfig, run: Run, shards: list[dict]) -> dict:
    total = summed(cfg, run, shards)
    unusable = sum(total.get("refused", {}).values())
    if total["rows"] == 0:
        raise ValueError(f"seeds: the {cfg.source} corpus gave no usable text ({unusable} rows skipped)")
    return {**total, "unusable_rows": unusable}


def _sources(cfg: SeedsConfig) -> list[str]:
    from mathfactory.tasks.domains import gsm8k

    return {"toy": [], "files": list(cfg.files),
            "gsm8k": [gsm8k.resolve(cfg.path, gsm8k.SOURCE, gsm8k.DEFAULT_DIR, "train")]}[cfg.source]


SEEDS = StageSpec(STAGE, SeedText, SeedsConfig, seeds, summarize=_summarize, sources=_sources)
SPECS = {SEEDS.name: SEEDS}
