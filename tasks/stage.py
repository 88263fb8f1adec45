"""A stage declared once (StageSpec) over a Run, and what happens to one shard of it: a landed shard is recounted
from its summary, a missing one is computed, written whole and counted. The executor (flows/executor.py) fans the
shards out and commits; nothing else in the factory skips, recounts or commits a stage.

Two kinds of stage:
- a record stage: `compute(cfg, run, shard, meter)` yields the shard's records (a pure function of its inputs as
  far as it can be); `meter` takes what the shard refused (quarantine) and what it counted beside its rows
  (tokens, costs). The shard's rows are read back before the part appears and folded by `tally`; tally and
  meter go to a summary file beside the part, so a recount says exactly what the first count said.
- a model stage (`record` None): `compute(cfg, run, out_dir)` writes a model directory and returns its metrics;
  the directory is copied into the lake and the metrics kept beside it as its one summary, so a training may run
  anywhere that reaches the lake, and one that landed is not redone.
The marker's metrics are `summarize(cfg, run, shard summaries)`. Each stage says what it `needs` where it runs:
a `gpu` stage (sampling, training) goes where the runner keeps its GPUs; a `cpu` stage (grading) never takes one.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mathfactory.tasks.core.card import SetFacts, dataset_card
from mathfactory.tasks.core.records import Quarantined, derive_seed
from mathfactory.tasks.core.skips import Skip
from mathfactory.tasks.judge import Grading
from mathfactory.tasks.scratch import scratch
from mathfactory.tasks.storage import Lake, Where, hf_features

_GATE_REASON = re.compile(r"^([a-z_]+): ")


def logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task run (so lines reach the UI), a plain logger elsewhere."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("mathfactory")


def config_hash(config: BaseModel | dict | None) -> str:
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else (config or {})
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Run(BaseModel):
    """One run in one lake: what every stage receives. `grading` is how the run grades, in every stage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lake: str = Field(description="The lake's URL: a path or any fsspec URL.")
    run_id: str
    seed: int = Field(0, description="The run's root seed; every random draw derives from it.")
    grading: Grading = Field(default_factory=Grading)

    @field_validator("grading", mode="before")
    @classmethod
    def _only_grading(cls, value: Any) -> Any:
        # A VerifyConfig is a Grading with more (its batch size): a run keeps only how it grades.
        return {k: getattr(value, k) for k in Grading.model_fields} if isinstance(value, Grading) else value

    @cached_property
    def store(self) -> Lake:
        return Lake(self.lake)

    def read(self, spec: StageSpec, shard: int | None = None, where: Where | None = None) -> Iterator[Any]:
        """A finished stage's records (or one of its shards), by its spec: the record type is the spec's; `where`
        (column, values) keeps only the rows a shard needs (the filter runs in Arrow, see Lake.read)."""
        return self.store.read(self.run_id, spec.name, spec.record, shard=shard, where=where)

    def read_columns(self, spec: StageSpec, *columns: str, shard: int | None = None, where: Where | None = None
                     ) -> Iterator[tuple]:
        """A finished stage's values of `columns`, a tuple a row: what a shard reads to find its own rows."""
        return self.store.read_columns(self.run_id, spec.name, list(columns), shard=shard, where=where)

    def landed(self, spec: StageSpec, shards: int) -> Iterator[Any]:
        """The records of shards 0..shards-1 of a stage still being assembled (before its commit)."""
        for shard in range(shards):
            yield from self.store.read_part(self.run_id, spec.name, shard, spec.record)

    def marker(self, stage: str) -> dict | None:
        return self.store.marker(self.run_id, stage)

    def metrics(self, stage: str) -> dict:
        """A finished stage's marker metrics ({} while it is unfinished)."""
        return (self.marker(stage) or {}).get("metrics", {})

    def uri(self, stage: str) -> str:
        return self.store.uri(self.run_id, stage)

    def seed_for(self, *parts: object) -> int:
        """A seed for one random draw of this run, derived from the root seed and what the draw is for."""
        return derive_seed(self.seed, *parts)


@dataclass
class Meter:
    """What a shard's computation reports beside its rows: the rows it refused, and counts (summed over shards;
    a dict value is a tally by key)."""

    stage: str
    quarantined: list[Quarantined] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)

    def refuse(self, origin: str, reason: str, excerpt: str = "") -> None:
        self.quarantined.append(Quarantined(self.stage, origin, reason, excerpt[:200]))

    def add(self, **counts: Any) -> None:
        self.counts = merge([self.counts, counts])


def count_rows(rows: Iterable[Any]) -> dict[str, int]:
    return {"rows": sum(1 for _ in rows)}


def merge(tallies: Iterable[dict]) -> dict[str, Any]:
    """Shard tallies summed key by key: numbers add, dicts merge the same way; `shard` is dropped, anything else
    keeps its first value."""
    out: dict[str, Any] = {}
    for t in tallies:
        out = _add(out, {k: v for k, v in t.items() if k != "shard"})
    return out


def _add(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict):
            out[k] = _add(out.get(k, {}), v)
        elif isinstance(v, int | float) and not isinstance(v, bool) and isinstance(out.get(k, 0), int | float):
            out[k] = out.get(k, 0) + v
        else:
            out.setdefault(k, v)
    return out


def token_rate(shards: list[dict]) -> dict[str, float | None]:
    """Generated tokens and tokens/s over the shards that generated in the attempt that wrote them (busy time,
    not wall time)."""
    sampled = [s for s in shards if "tokens" in s]
    tokens, busy = sum(s["tokens"] for s in sampled), sum(s.get("seconds", 0) for s in sampled)
    return {"tokens": tokens, "tokens_per_s": round(tokens / busy, 1) if busy else None}


def summed(cfg: Any, run: Run, shards: list[dict]) -> dict[str, Any]:
    """The default marker metrics: the shards' tallies summed, tokens/s where they generated."""
    total = merge(shards)
    return {**total, **token_rate(shards)} if "tokens" in total else total


Need = Literal["cpu", "gpu"]


@dataclass(frozen=True)
class StageSpec:
    """A stage, declared once in its module."""

    name: str  # the lake stage it writes
    record: type | None  # its record; None: a model directory
    config: type[BaseModel] | str  # its config, or "module:Name" where importing it here would be circular
    compute: Callable[..., Any]  # record: (cfg, run, shard, meter) -> records; model: (cfg, run, out_dir) -> metrics
    reads: tuple[str, ...] | Callable[[Any], Iterable[str]] = ()  # the run's stages it reads (or: config -> them)
    shards: Callable[[Any, Run], int] | None = None  # sharded stages: how many shards (config, run) ask for
    tally: Callable[[Iterable[Any]], dict] = count_rows  # a shard's figures, from its records
    summarize: Callable[[Any, Run, list[dict]], dict] = summed  # the marker's metrics, from the shards' summaries
    identity: Callable[[Any], Any] = lambda cfg: cfg  # what of the config the marker's config hash covers
    skip: Callable[[Any, Run], Skip | None] | None = None  # an optional stage: why its inputs cannot make it
    retries: int = 1
    needs: Need = "cpu"  # what one shard or training needs where it runs (flows/fanout.py honours it)
    gpus: Callable[[Any], int] = lambda cfg: 1  # a gpu stage: GPUs one shard or training asks for under a config
    sources: Callable[[Any], Iterable[str]] = lambda cfg: ()  # what it reads from outside the run: files, models
    card: str | None = None  # a training set's "how it was made": its commit writes a dataset card (README.md)

    def reads_for(self, cfg: Any) -> tuple[str, ...]:
        return tuple(self.reads(cfg) if callable(self.reads) else self.reads)

    @property
    def config_type(self) -> type[BaseModel]:
        if isinstance(self.config, str):
            module, _, name = self.config.partition(":")
            return getattr(importlib.import_module(module), name)
        return self.config

    @property
    def sharded(self) -> bool:
        return self.shards is not None

    def n_shards(self, cfg: Any, run: Run) -> int:
        return self.shards(cfg, run) if self.shards is not None else 1

    def gpus_for(self, cfg: Any) -> int:
        """GPUs one shard or training asks for under `cfg`: 0 for a cpu stage, or a config with nothing to
        train (a pretrained policy), which then stays in the flow's own run."""
        return self.gpus(cfg) if self.needs == "gpu" else 0


def write_shard(spec: StageSpec, cfg: Any, run: Run, shard: int) -> dict:
    """Shard `shard` of a record stage in the lake, and its summary: recounted if it landed earlier (a retry, or a
    run resumed after a crash), else computed and written whole (quarantine and summary before the part)."""
    lake = run.store
    if lake.has_part(run.run_id, spec.name, shard):
        summary = lake.shard_summary(run.run_id, spec.name, shard)
        if summary is None:  # written before shards kept summaries: count its rows again
            summary = {"shard": shard, **spec.tally(lake.read_part(run.run_id, spec.name, shard, spec.record)),
                       **_refused(lake.read_quarantine_part(run.run_id, spec.name, shard))}
        logger().info("%s: shard %d landed earlier, recounted", spec.name, shard)
        return summary
    meter, t0 = Meter(spec.name), time.perf_counter()
    summary: dict[str, Any] = {"shard": shard}

    def before_publish(rows: Iterator[Any]) -> None:
        summary.update(spec.tally(rows), **meter.counts, **_refused(meter.quarantined),
                       seconds=round(time.perf_counter() - t0, 2))
        lake.write_quarantine(run.run_id, spec.name, shard, meter.quarantined)
        lake.write_shard_summary(run.run_id, spec.name, shard, summary)

    lake.write_part(run.run_id, spec.name, shard, spec.record, spec.compute(cfg, run, shard, meter),
                    before_publish=before_publish)
    if meter.quarantined:
        q = meter.quarantined[0]
        logger().warning("%s: %d rows quarantined in shard %d, e.g. %s: %s", spec.name, len(meter.quarantined),
                         shard, q.origin, q.reason)
    return summary


def _refused(quarantined: Iterable[Quarantined]) -> dict[str, dict[str, int]]:
    # A gate's reason `gate: detail` names what it matched; tallied by gate, a marker stays small.
    reasons = Counter(m[1] if (m := _GATE_REASON.match(q.reason)) else q.reason for q in quarantined)
    return {"refused": dict(reasons)} if reasons else {}


def skipped(spec: StageSpec, cfg: Any, run: Run, why: Skip | None = None) -> Skip | None:
    """Why an optional stage is not run (`why`, or its own check), recorded in the lake and logged; None: run it."""
    why = why or (spec.skip(cfg, run) if spec.skip is not None else None)
    if why is not None:
        run.store.skip(run.run_id, spec.name, asdict(why))
        logger().warning("%s: skipped: %s", spec.name, why.reason)
    return why


def build(spec: StageSpec, cfg: Any, run: Run) -> str | None:
    """A stage built in this process, shard after shard, with no orchestration (tests, benchmarks): what the
    executor does, minus fan-out and Prefect. A committed stage is left as it is; a skipped one gives None."""
    if run.marker(spec.name) is None:
        if skipped(spec, cfg, run):
            return None
        started = time.time()
        if spec.record is None:
            return commit(spec, cfg, run, [write_model(spec, cfg, run)], started)
        commit(spec, cfg, run, [write_shard(spec, cfg, run, s) for s in range(spec.n_shards(cfg, run))], started)
    return run.uri(spec.name)


def write_model(spec: StageSpec, cfg: Any, run: Run) -> dict:
    """A model stage's directory, made in a temporary folder and copied into the lake, and its metrics, kept
    beside it (written last, so they mean the directory is whole): a training that landed earlier (a retry, a run
    resumed after a crash) is kept. Not committed; the caller commits, wherever this ran."""
    lake = run.store
    metrics = lake.shard_summary(run.run_id, spec.name, 0)
    if metrics is not None:
        logger().info("%s: the model landed earlier, kept", spec.name)
        return metrics
    with scratch(spec.name) as tmp:
        metrics = spec.compute(cfg, run, Path(tmp))
        if any(Path(tmp).iterdir()):  # a referenced model (policy.pretrained) writes nothing
            lake.put_dir(tmp, run.run_id, spec.name)
    lake.write_shard_summary(run.run_id, spec.name, 0, metrics)
    return metrics


def commit(spec: StageSpec, cfg: Any, run: Run, shards: list[dict], started: float) -> str:
    """Write the stage's marker, last: its metrics from the shards' summaries, the config hash, the time."""
    metrics = spec.summarize(cfg, run, shards)
    card = (lambda m: run.store.write_card(run.run_id, spec.name, card_text(spec, cfg, run, m))) if spec.card else None
    marker = run.store.commit(run.run_id, spec.name, spec.record, config_hash=config_hash(spec.identity(cfg)),
                              seconds=round(time.time() - started, 2), metrics=metrics, before_marker=card)
    logger().info("%s: %s in %.1f s -> %s", spec.name, made(marker), marker["seconds"], run.uri(spec.name))
    return run.uri(spec.name)


def made(marker: dict) -> str:
    """What a committed stage holds, in a few words: its rows, or the model and what it was trained on."""
    if marker["record"]:
        return f"{marker['rows']} rows"
    m = marker.get("metrics", {})
    if "pretrained" in m:
        return f"the pretrained model {m['pretrained']} (referenced, not copied)"
    if "steps" not in m:
        return "a model"
    on = " + ".join(d.rsplit("/", 1)[-1] for d in m.get("datasets", [])) or m.get("dataset", "").rsplit("/", 1)[-1]
    loss = f", loss {m['first_loss']:.3f} -> {m['final_loss']:.3f}" if "final_loss" in m else ""
    return f"a model trained on {m.get('train_rows', '?')} rows{f' of {on}' if on else ''} ({m['steps']} steps{loss})"


def card_text(spec: StageSpec, cfg: Any, run: Run, marker: dict) -> str:
    """A training set's dataset card, from its spec, config and the marker about to be written."""
    url = functools.partial(run.store.stage_url, run.run_id)
    return dataset_card(SetFacts(
        name=spec.name, about=spec.card or "", record=spec.record.__name__, row_doc=spec.record.__doc__ or "",
        features=hf_features(spec.record), marker=marker, run_id=run.run_id, url=url(spec.name),
        config=cfg.model_dump(mode="json"), upstream={s: url(s) for s in spec.reads_for(cfg)}))
