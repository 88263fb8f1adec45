"""Records <-> Parquet on any fsspec URL. The ONLY module that touches fsspec or pyarrow.

Layout: {lake}/runs/{run_id}/{stage}/part-{shard:05d}.parquet, plus {stage}/_SUCCESS.json written last.
A part file appears whole or not at all (local: temp name + rename; object stores: a local spool uploaded
only once complete), so an existing part is its own shard marker and a retry redoes only missing shards.
Readers trust only stages whose _SUCCESS.json exists.

Credentials never travel in URLs, configs or task parameters: they come from each store's own chain (for S3,
botocore's: env, profile, IAM role; endpoint from AWS_ENDPOINT_URL_S3), or from the Prefect Secret block named
by $MATHFACTORY_STORAGE_SECRET, whose JSON value maps protocol -> fsspec options, as fsspec's own config does:
{"s3": {"key": "...", "secret": "...", "endpoint_url": "https://minio.example:9000"}}.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
import types
import typing
import uuid
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import fsspec
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mathfactory.tasks import scratch
from mathfactory.tasks.core.records import RENAMED, SCHEMA_VERSION, Quarantined

R = TypeVar("R")
Where = tuple[str, Collection[Any]]  # (column, values): keep the rows whose column holds one of the values
MARKER = "_SUCCESS.json"
FILTER_BATCH = 16_384  # rows per Arrow batch when a read filters (see Lake.read)
TMP = "_tmp-"  # a file being written: `_tmp-{host}.{pid}-{uuid}`, renamed when whole (readers skip `_` names)
SKIPPED = "_SKIPPED.json"  # an optional stage whose inputs could not make it: why (tasks/core/skips.py)
SECRET_ENV = "MATHFACTORY_STORAGE_SECRET"
_CONTENTS = ("record", "rows", "parts", "quarantined", "schema_version", "config_hash")  # what a marker vouches for
_ARROW = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}
_CACHE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]+")  # a file name on every store, never a temp file's
# An object store that restarts or sheds load (refused connections, 500, 503 SlowDown) is waited out for about a
# minute on every call, reads and commits too, before a task fails: botocore's standard mode, 12 attempts with
# jittered backoff capped at 20 s. Its default (legacy, 5 attempts) gave up ~7 s into a store's restart.
S3_RETRIES = {"mode": "standard", "total_max_attempts": 12}


class DataError(ValueError):
    """Input that cannot be read; the message names the file (and line) and the reason."""


@functools.cache
def arrow_schema(cls: type) -> pa.Schema:
    """The Arrow schema of a record dataclass, derived from its type hints (the one declaration)."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        t, nullable = _optional(hints[f.name])
        if typing.get_origin(t) is list:
            # pa.list_ items are nullable either way: list[T] and list[T | None] share one Arrow type.
            arrow_type = pa.list_(_ARROW[_optional(typing.get_args(t)[0])[0]])
        else:
            arrow_type = _ARROW[t]
        fields.append(pa.field(f.name, arrow_type, nullable=nullable))
    return pa.schema(fields, metadata={"record": cls.__name__, "schema_version": str(SCHEMA_VERSION)})


@functools.cache
def _defaults(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING)


def _optional(t: Any) -> tuple[Any, bool]:
    """(T, True) for `T | None`, else (t, False)."""
    if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
        return next(a for a in typing.get_args(t) if a is not type(None)), True
    return t, False


@functools.cache
def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("mathfactory")
    except PackageNotFoundError:
        v = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{v}+g{sha}" if sha else v


def _url_to_fs(url: str, **storage_options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec's url_to_fs, with the options of the secret block (if one is named) under the given ones."""
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    name = os.environ.get(SECRET_ENV)
    if name:
        storage_options = {**_secret_options(name).get(protocol, {}), **storage_options}
    if protocol in ("s3", "s3a"):
        config = storage_options.get("config_kwargs", {})
        storage_options = {**storage_options, "config_kwargs": {"retries": S3_RETRIES, **config}}
    return fsspec.core.url_to_fs(url, **storage_options)


@functools.cache
def _secret_options(name: str) -> dict[str, dict]:
    """The block's value, read once per process (a flow run is one process; rotate by starting new runs)."""
    from prefect.blocks.system import Secret

    value = Secret.load(name).get()
    if not (isinstance(value, dict) and all(isinstance(v, dict) for v in value.values())):
        # Name the shape, never the value: it holds the keys.
        raise DataError(f"Secret block {name!r} (from ${SECRET_ENV}): expected a JSON object of "
                        'protocol -> storage options, e.g. {"s3": {"key": ..., "secret": ...}}')
    return value


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in fs.protocol or "local" in fs.protocol


class Lake:
    """A lake of runs at an fsspec URL: `./lake`, `s3://bucket/prefix`, `memory://name`."""

    def __init__(self, url: str = "./lake", **storage_options: Any):
        self.url = url
        self.fs, self.root = _url_to_fs(url, **storage_options)
        self.root = self.root.rstrip("/")
        self.storage_options = storage_options
        # What reads turned into Python objects, by stage: whole records, and rows of a few columns (read_columns).
        self.rows_read: Counter[str] = Counter()
        self.column_rows_read: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"Lake({self.url!r})"

    def stage_path(self, run_id: str, stage: str) -> str:
        return f"{self.root}/runs/{run_id}/{stage}"

    def uri(self, run_id: str, stage: str) -> str:
        """The stage's address as a URL a user (or pyarrow, DuckDB, datasets) can open."""
        path = self.stage_path(run_id, stage)
        return path if _is_local(self.fs) else self.fs.unstrip_protocol(path)

    def stage_url(self, run_id: str, stage: str) -> str:
        """The stage's address as an absolute URL with a scheme, `file://` for a local lake: a Prefect asset key."""
        return as_url(self.uri(run_id, stage))

    # -- writing ---------------------------------------------------------------------------------------

    def part_path(self, run_id: str, stage: str, shard: int) -> str:
        return f"{self.stage_path(run_id, stage)}/part-{shard:05d}.parquet"

    def has_part(self, run_id: str, stage: str, shard: int) -> bool:
        return self.fs.exists(self.part_path(run_id, stage, shard))

    def write_part(
        self, run_id: str, stage: str, shard: int, cls: type, rows: Iterable[Any], row_group_size: int = 4096,
        before_publish: typing.Callable[[Iterator[Any]], None] | None = None,
    ) -> int:
        """Write one shard of records; returns its row count. Streams: at most one row group in memory.
        `before_publish` gets the written rows, read back from the unpublished file, before the part appears."""
        schema = arrow_schema(cls)
        names = schema.names
        count = 0

        def write(f: typing.BinaryIO) -> None:
            nonlocal count
            with pq.ParquetWriter(f, schema, compression="zstd") as writer:
                batch: list[Any] = []
                for row in rows:
                    batch.append(row)
                    if len(batch) == row_group_size:
                        writer.write_table(_to_table(batch, names, schema))
                        count += len(batch)
                        batch = []
                if batch or count == 0:
                    writer.write_table(_to_table(batch, names, schema))
                    count += len(batch)

        def check(local: str) -> None:
            if before_publish is not None:
                before_publish(_read_local(local, cls, 1024))

        _atomic_write(self.fs, self.part_path(run_id, stage, shard), write, check)
        return count

    def write_quarantine(self, run_id: str, stage: str, shard: int, rows: list[Quarantined]) -> int:
        if not rows:
            return 0
        return self.write_part(run_id, f"{stage}/_quarantine", shard, Quarantined, rows)

    def shard_summary_path(self, run_id: str, stage: str, shard: int) -> str:
        return f"{self.stage_path(run_id, stage)}/_shards/part-{shard:05d}.json"

    def write_shard_summary(self, run_id: str, stage: str, shard: int, summary: dict) -> None:
        """What a shard's computation counted, kept beside it so a recount of a landed shard says the same."""
        data = json.dumps(summary, sort_keys=True, default=str).encode()
        _atomic_write(self.fs, self.shard_summary_path(run_id, stage, shard), lambda f: f.write(data))

    def shard_summary(self, run_id: str, stage: str, shard: int) -> dict | None:
        try:
            with self.fs.open(self.shard_summary_path(run_id, stage, shard), "rb") as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def commit(self, run_id: str, stage: str, cls: type | None,
               before_marker: typing.Callable[[dict], None] | None = None, **meta: Any) -> dict:
        """Write the stage's _SUCCESS.json, last: row counts read from the parts' footers, plus `meta`.
        `before_marker` gets the marker before it is written (to write what must exist once the stage does).
        The first commit stands: a marker is only ever created, never replaced, so of two runs committing the same
        stage at once one writes it and the other gets it back, or an error if they made different contents."""
        parts = sorted(p.rsplit("/", 1)[1] for p in self.fs.glob(f"{self.stage_path(run_id, stage)}/part-*.parquet"))
        rows = sum(self._num_rows(f"{self.stage_path(run_id, stage)}/{p}") for p in parts)
        q_parts = self.fs.glob(f"{self.stage_path(run_id, stage)}/_quarantine/part-*.parquet")
        marker = {
            "run_id": run_id,
            "stage": stage,
            "record": cls.__name__ if cls else None,
            "rows": rows,
            "parts": parts,
            "quarantined": sum(self._num_rows(p) for p in q_parts),
            "schema_version": SCHEMA_VERSION,
            "code_version": code_version(),
            "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **meta,
        }
        earlier = self._settled_marker(run_id, stage)
        if earlier is None:
            if before_marker is not None:
                before_marker(marker)
            data = json.dumps(marker, indent=2, sort_keys=True, default=str).encode()
            try:
                _atomic_write(self.fs, f"{self.stage_path(run_id, stage)}/{MARKER}", lambda f: f.write(data),
                              exclusive=True)
                return marker
            except FileExistsError:  # another run won the race (or our own PUT whose answer was lost)
                self.fs.invalidate_cache(self.stage_path(run_id, stage))  # listed before it was there
                earlier = self._settled_marker(run_id, stage)
        return self._agreed(run_id, stage, earlier, marker)

    def _settled_marker(self, run_id: str, stage: str, tries: int = 20) -> dict | None:
        """The marker, waiting out another committer's write in progress: a store that publishes a file on open
        (memory://) shows a marker being created empty for a moment; local and S3 creates are atomic."""
        for attempt in range(tries):
            try:
                return self.marker(run_id, stage)
            except DataError:
                if attempt == tries - 1:
                    raise
                time.sleep(0.05)

    def _agreed(self, run_id: str, stage: str, earlier: dict, marker: dict) -> dict:
        """The marker already there, if it says the stage holds what `marker` would have said."""
        differ = {k: (earlier.get(k), marker.get(k)) for k in _CONTENTS if earlier.get(k) != marker.get(k)}
        if differ:
            said = "; ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in differ.items())
            raise DataError(f"{self.uri(run_id, stage)}: committed at {earlier.get('committed_at')} by another run "
                            f"with other contents ({said}); two runs of one run id must make the same data")
        return earlier

    def write_card(self, run_id: str, stage: str, text: str) -> str:
        """The stage's dataset card, `{stage}/README.md` (where `datasets` and the Hub look for it); its URL."""
        path = f"{self.stage_path(run_id, stage)}/README.md"
        data = text.encode()
        _atomic_write(self.fs, path, lambda f: f.write(data))
        return self.fs.unstrip_protocol(path)

    def _num_rows(self, path: str) -> int:
        with self.fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows

    def sweep(self, run_id: str) -> int:
        """Remove the temporary files that killed processes of this host left in a local run (a SIGKILL skips
        their clean-up; a remote store never holds one: files are spooled locally); how many."""
        if not _is_local(self.fs):
            return 0
        folders = {p.parent for p in Path(self.root, "runs", run_id).glob(f"**/{TMP}*")}
        return sum(len(scratch.sweep(f, TMP)) for f in folders)

    # -- reading ---------------------------------------------------------------------------------------

    def marker(self, run_id: str, stage: str) -> dict | None:
        """The stage's _SUCCESS.json, or None while the stage is unfinished."""
        path = f"{self.stage_path(run_id, stage)}/{MARKER}"
        try:
            with self.fs.open(path, "rb") as f:
                marker = json.load(f)
        except FileNotFoundError:
            return None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:  # written whole, so damaged by hand or by the disk
            raise DataError(f"{path}: not a readable marker ({e})") from None
        if not isinstance(marker, dict) or not isinstance(marker.get("parts"), list):
            raise DataError(f"{path}: not a readable marker (no list of parts)")
        return marker

    def read(self, run_id: str, stage: str, cls: type[R], batch_size: int = 1024, shard: int | None = None,
             where: Where | None = None) -> Iterator[R]:
        """Stream a finished stage's records (or one shard's) row group by row group; refuses unmarked stages.
        `where=(column, values)` keeps the rows whose column is one of `values`, filtered in Arrow as each batch
        is decoded: the rows left out never become Python objects (rows_read counts those that do)."""
        marker = self.marker(run_id, stage)
        if marker is None:
            raise DataError(f"{self.uri(run_id, stage)}: no {MARKER}; the stage has not finished")
        parts = marker["parts"] if shard is None else [f"part-{shard:05d}.parquet"]
        where = _value_set(where)
        for part in parts:
            yield from self._read_file(f"{self.stage_path(run_id, stage)}/{part}", cls, batch_size, where)

    def read_columns(self, run_id: str, stage: str, columns: list[str], batch_size: int = 4096,
                     shard: int | None = None, where: Where | None = None) -> Iterator[tuple]:
        """A finished stage's values of `columns`, one tuple a row, streamed row group by row group (a scan of a
        large stage that needs a few columns reads only those); `shard` and `where` as for read."""
        marker = self.marker(run_id, stage)
        if marker is None:
            raise DataError(f"{self.uri(run_id, stage)}: no {MARKER}; the stage has not finished")
        read = columns if where is None or where[0] in columns else [*columns, where[0]]
        where = _value_set(where)
        for part in marker["parts"] if shard is None else [f"part-{shard:05d}.parquet"]:
            path = f"{self.stage_path(run_id, stage)}/{part}"
            with self.fs.open(path, "rb") as f:
                for batch in _parquet(f, path).iter_batches(batch_size=batch_size, columns=read):
                    batch = _keep(batch, where)
                    self.column_rows_read[stage] += batch.num_rows
                    yield from zip(*(batch.column(c).to_pylist() for c in columns), strict=True)

    def read_quarantine(self, run_id: str, stage: str) -> Iterator[Quarantined]:
        """The rows a stage refused, each with its origin and reason, shard by shard."""
        for path in sorted(self.fs.glob(f"{self.stage_path(run_id, stage)}/_quarantine/part-*.parquet")):
            yield from self._read_file(path, Quarantined, 1024)

    def read_part(self, run_id: str, stage: str, shard: int, cls: type[R], batch_size: int = 1024) -> Iterator[R]:
        """One finished shard of a stage still being assembled (a part file is whole once it exists)."""
        yield from self._read_file(self.part_path(run_id, stage, shard), cls, batch_size)

    def read_quarantine_part(self, run_id: str, stage: str, shard: int) -> Iterator[Quarantined]:
        """What one shard refused (nothing if it refused nothing)."""
        if self.has_part(run_id, f"{stage}/_quarantine", shard):
            yield from self.read_part(run_id, f"{stage}/_quarantine", shard, Quarantined)

    def _read_file(self, path: str, cls: type[R], batch_size: int, where: Where | None = None) -> Iterator[R]:
        names = arrow_schema(cls).names
        with self.fs.open(path, "rb") as f:
            file = _parquet(f, path)
            present = file.schema_arrow.names
            # A renamed column is read under its old name from older files; a column added later with a default
            # reads as that default; any other absent column would be skipped by pyarrow silently, and the
            # record fail with a bare TypeError.
            renamed = {n: RENAMED[n] for n in names if n not in present and RENAMED.get(n) in present}
            absent = [n for n in names if n not in present and n not in renamed]
            missing = [n for n in absent if n not in _defaults(cls)]
            columns = [renamed.get(n, n) for n in names if n not in absent]
            new_name = {old: new for new, old in renamed.items()}
            if missing:
                written = (file.schema_arrow.metadata or {}).get(b"schema_version", b"?").decode()
                raise DataError(f"{path}: no column {', '.join(missing)} for {cls.__name__}: written by another "
                                f"version of mathfactory (schema {written}, this one reads {SCHEMA_VERSION}); "
                                "rerun the stage into a new lake or run id")
            if wrong := [f"{c} is {file.schema_arrow.field(c).type}, expected {arrow_schema(cls).field(n).type}"
                         for n, c in zip(names, [renamed.get(n, n) for n in names], strict=True)
                         if n not in absent and not _same_type(file.schema_arrow.field(c).type,
                                                                arrow_schema(cls).field(n).type)]:
                raise DataError(f"{path}: column {'; '.join(wrong)} for {cls.__name__}")
            stage = path.rsplit("/", 2)[-2]
            if where is not None:
                where = (renamed.get(where[0], where[0]), where[1])
            # A filter builds its hash of the values once per batch: larger batches, and only kept rows decoded.
            size = batch_size if where is None else max(batch_size, FILTER_BATCH)
            for n, row in _batched_rows(file, path, size, columns, where):
                self.rows_read[stage] += 1
                try:
                    yield cls(**{new_name.get(k, k): v for k, v in row.items()})
                except TypeError as e:
                    raise DataError(f"{path}:{n}: not a {cls.__name__} ({e})") from None

    def runs(self) -> list[str]:
        base = f"{self.root}/runs"
        if not self.fs.exists(base):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[1] for p in self.fs.ls(base, detail=False))

    def stages(self, run_id: str) -> dict[str, dict]:
        """Finished stages of a run with their markers, in commit order."""
        found = {}
        for path in self.fs.glob(f"{self.root}/runs/{run_id}/*/{MARKER}"):
            stage = path.rsplit("/", 2)[1]
            found[stage] = self.marker(run_id, stage)
        return dict(sorted(found.items(), key=lambda kv: kv[1]["committed_at"]))

    def skip(self, run_id: str, stage: str, why: dict) -> None:
        """Record why `stage` was not run, where it would have been (replaced by the next check)."""
        data = json.dumps({"run_id": run_id, "stage": stage, **why, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                          time.gmtime())}, indent=2, sort_keys=True).encode()
        _atomic_write(self.fs, f"{self.stage_path(run_id, stage)}/{SKIPPED}", lambda f: f.write(data))

    def skipped(self, run_id: str) -> dict[str, dict]:
        """The run's skipped stages with why, by stage name (a stage committed since is not skipped)."""
        found = {}
        for path in sorted(self.fs.glob(f"{self.root}/runs/{run_id}/*/{SKIPPED}")):
            stage = path.rsplit("/", 2)[1]
            if self.marker(run_id, stage) is None:
                with self.fs.open(path, "rb") as f:
                    found[stage] = json.load(f)
        return found

    # -- directories (model checkpoints) ----------------------------------------------------------------

    def put_dir(self, local_dir: str | Path, run_id: str, stage: str) -> str:
        """Copy a local directory (e.g. a save_pretrained model) into the stage; commit separately."""
        dest = f"{self.stage_path(run_id, stage)}/model"
        names = {src.relative_to(local_dir).as_posix(): src for src in sorted(Path(local_dir).rglob("*")) if src.is_file()}
        for name, src in names.items():
            data = src.read_bytes()
            _atomic_write(self.fs, f"{dest}/{name}", lambda f, d=data: f.write(d))
        # No file of an earlier attempt's partial copy may outlive this one. Removed after the copy, not before: a
        # run of the same run id at the same time may be reading the directory, and must never miss a file of it.
        for path in self.fs.find(dest):
            name = path.removeprefix(f"{dest}/")
            if name not in names and not name.rsplit("/", 1)[-1].startswith(TMP):
                self.fs.rm(path)
        return dest

    def local_dir(self, run_id: str, stage: str) -> Path:
        """A local path to a stage's model directory, downloading it once from remote lakes."""
        if self.marker(run_id, stage) is None:
            raise DataError(f"{self.uri(run_id, stage)}: no {MARKER}; the model has not finished")
        return fetch_dir(self.fs.unstrip_protocol(f"{self.stage_path(run_id, stage)}/model"), **self.storage_options)

    def model(self, ref: str) -> Path:
        """A local model directory by reference: `runs/{run_id}/{stage}` in this lake (how runs name the models
        they trained, so a config that names one does not depend on where the lake is), else a path or URL."""
        parts = ref.split("/")
        if len(parts) == 3 and parts[0] == "runs" and "://" not in ref:
            return self.local_dir(parts[1], parts[2])
        return fetch_dir(ref)

    # -- small JSON documents (the nightly refresh's watermark) -----------------------------------------

    def read_state(self, key: str) -> dict | None:
        """The JSON document `{lake}/state/{key}.json`, or None if it was never written."""
        try:
            with self.fs.open(f"{self.root}/state/{key}.json", "rb") as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def write_state(self, key: str, value: dict) -> None:
        """Replace `{lake}/state/{key}.json` whole: a reader sees the old document or the new one."""
        data = json.dumps(value, indent=2, sort_keys=True).encode()
        _atomic_write(self.fs, f"{self.root}/state/{key}.json", lambda f: f.write(data))

    def write_file(self, path: str, data: bytes) -> str:
        """`{lake}/{path}` (an experiment's report, its figures) whole or not at all; returns its URL."""
        _atomic_write(self.fs, f"{self.root}/{path}", lambda f: f.write(data))
        return self.fs.unstrip_protocol(f"{self.root}/{path}")

    def read_file(self, path: str) -> bytes | None:
        try:
            with self.fs.open(f"{self.root}/{path}", "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def request_cache(self, name: str) -> RequestCache:
        """The cache `{lake}/cache/{name}`, shared by every run in the lake: the same request is the same request."""
        path = f"{self.root}/cache/{name}"
        return RequestCache(path if _is_local(self.fs) else self.fs.unstrip_protocol(path), **self.storage_options)


class RequestCache:
    """Finished requests at any fsspec URL, one JSON document each at `{folder}/{key[:2]}/{key}.json`.

    A document is written whole or not at all the moment its request finishes, so a killed run keeps every
    answer it paid for; the two-character fan-out keeps local directories small.
    """

    def __init__(self, url: str, **storage_options: Any):
        self.url = url
        self.fs, root = _url_to_fs(url, **storage_options)
        self.root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"RequestCache({self.url!r})"

    def _path(self, key: str) -> str:
        if not _CACHE_KEY.fullmatch(key):
            raise ValueError(f"request cache key must be a plain name (letters, digits, - and _), got {key!r}")
        return f"{self.root}/{key[:2]}/{key}.json"

    def keys(self) -> set[str]:
        """Every stored key, from one recursive listing; a missing folder holds none."""
        self.fs.invalidate_cache(self.root)  # s3fs keeps listings; another process may have written since
        try:
            paths = self.fs.find(self.root)
        except FileNotFoundError:
            return set()
        names = (p.rsplit("/", 1)[-1] for p in paths)
        return {n[: -len(".json")] for n in names if n.endswith(".json") and not n.startswith(("_", "."))}

    def get(self, key: str) -> dict | None:
        try:
            with self.fs.open(self._path(key), "rb") as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def put(self, key: str, value: dict) -> None:
        data = json.dumps(value, ensure_ascii=False, sort_keys=True).encode()
        _atomic_write(self.fs, self._path(key), lambda f: f.write(data))


def as_url(path: str) -> str:
    """A path or URL as an absolute URL with a scheme: a local path becomes `file:///abs/path`, a URL is kept."""
    if "://" in path:
        return path
    return "file://" + os.path.abspath(os.path.expanduser(path))


# Hugging Face `datasets` feature dtypes of the Arrow types records use (arrow_schema).
_HF_DTYPES = {pa.string(): "string", pa.int64(): "int64", pa.float64(): "float64", pa.bool_(): "bool"}


def hf_features(cls: type) -> list[dict[str, str]]:
    """A record's columns as a dataset card's `dataset_info.features`: [{name, dtype}] or [{name, list}]."""
    features = []
    for f in arrow_schema(cls):
        if pa.types.is_list(f.type):
            features.append({"name": f.name, "list": _HF_DTYPES[f.type.value_type]})
        else:
            features.append({"name": f.name, "dtype": _HF_DTYPES[f.type]})
    return features


def _cache_root() -> Path:
    return Path(os.environ.get("MATHFACTORY_CACHE", Path.home() / ".cache" / "mathfactory"))


def user_cache(name: str) -> RequestCache:
    """The request cache `name` of commands run outside a lake: `$MATHFACTORY_CACHE/requests/{name}` (default
    ~/.cache/mathfactory), shared by every run on the machine as a lake's `cache/` is by its runs."""
    return RequestCache(str(_cache_root() / "requests" / name))


def dir_version(path: Path) -> str:
    """A digest of a local directory's file names, sizes and modification times: it changes when a model saved
    there is replaced, so answers cached for the old one are not taken for the new one's."""
    h = hashlib.blake2b(digest_size=8)
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def fetch_dir(url: str, **storage_options: Any) -> Path:
    """A local copy of a directory at any fsspec URL (a local path is returned as is), downloaded once."""
    fs, path = _url_to_fs(url, **storage_options)
    if _is_local(fs):
        if not Path(path).is_dir():
            raise DataError(f"{url}: no such directory")
        return Path(path)
    cache = _cache_root()
    dest = cache / hashlib.sha1(fs.unstrip_protocol(path).encode()).hexdigest()[:16]
    if not (dest / ".complete").exists():
        if not fs.isdir(path):
            raise DataError(f"{url}: no such directory")
        scratch.sweep(cache, TMP)  # downloads a killed process left half done
        tmp = cache / f"{TMP}{scratch.owner()}-{uuid.uuid4().hex}"
        fs.get(path.rstrip("/") + "/", str(tmp), recursive=True)
        (tmp / ".complete").touch()
        if dest.exists():  # another process finished first; its copy is as good as ours
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, dest)
    return dest


_IN_PROCESS = threading.Lock()


def _atomic_write(fs: fsspec.AbstractFileSystem, path: str, write: typing.Callable[[typing.BinaryIO], None],
                  before_publish: typing.Callable[[str], None] | None = None, exclusive: bool = False) -> None:
    """Make `path` appear whole or not at all; `before_publish` gets the finished file's local path first.
    `exclusive`: only if `path` does not exist yet, else FileExistsError (a hard link locally, a conditional PUT,
    If-None-Match, on S3): of two writers racing, exactly one wins."""
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    if not _is_local(fs):
        # An fsspec file publishes on close, and `with` closes it even when `write` raised (memory:// even
        # publishes on open), leaving a valid but short part that a retry would take for a finished shard.
        # So spool locally and upload only a complete file (one PUT, or a multipart upload s3fs aborts on error).
        with scratch.scratch("spool") as spool:
            tmp = os.path.join(spool, path.rsplit("/", 1)[1])
            with open(tmp, "wb") as f:
                write(f)
            if before_publish is not None:
                before_publish(tmp)
            if exclusive and "memory" in fs.protocol:
                with _IN_PROCESS:  # memory:// lives in this process: a lock makes its check-and-create one step
                    if fs.exists(path):
                        raise FileExistsError(path)
                    fs.put_file(tmp, path)
            else:
                fs.put_file(tmp, path, **({"mode": "create"} if exclusive else {}))
        return
    tmp = f"{path.rsplit('/', 1)[0]}/{TMP}{scratch.owner()}-{uuid.uuid4().hex}"
    try:
        with fs.open(tmp, "wb") as f:
            write(f)
        if before_publish is not None:
            before_publish(tmp)
        if exclusive:
            os.link(tmp, path)  # atomic, and refuses an existing name (a rename would replace it)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_local(path: str, cls: type[R], batch_size: int) -> Iterator[R]:
    """Records from a local Parquet file this process just wrote (the schema is this version's own)."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        for row in batch.to_pylist():
            yield cls(**row)


def _parquet(f: typing.BinaryIO, name: str) -> pq.ParquetFile:
    """An open Parquet file, or DataError naming it (truncated, not Parquet at all)."""
    try:
        return pq.ParquetFile(f)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{name}: not a readable Parquet file ({e})") from None


def _batched_rows(file: pq.ParquetFile, name: str, batch_size: int, columns: list[str] | None = None,
                  where: Where | None = None) -> Iterator[tuple[int, dict]]:
    """(row number in the file from 1, row) of a Parquet file, streamed, those `where` keeps; a damaged page raises
    DataError naming the file and the first row that could not be read (the rows before it were yielded whole)."""
    n = 0
    batches = file.iter_batches(batch_size=batch_size, columns=columns)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{name}:{n + 1}: unreadable from this row on ({e})") from None
        if batch is None:
            return
        if where is None:
            for row in batch.to_pylist():
                n += 1
                yield n, row
            continue
        kept = _mask(batch, where)
        rows = batch.filter(kept).to_pylist()
        for i, row in zip(pc.indices_nonzero(kept).to_pylist(), rows, strict=True):
            yield n + i + 1, row
        n += batch.num_rows


def _value_set(where: Where | None) -> Where | None:
    """`where` with its values as one Arrow array, built once per read rather than once per batch."""
    return None if where is None or isinstance(where[1], pa.Array) else (where[0], pa.array(list(where[1])))


def _mask(batch: pa.RecordBatch, where: Where) -> pa.Array:
    column, values = where
    kind = batch.schema.field(column).type
    return pc.is_in(batch.column(column), value_set=values if values.type == kind else values.cast(kind))


def _keep(batch: pa.RecordBatch, where: Where | None) -> pa.RecordBatch:
    return batch if where is None else batch.filter(_mask(batch, where))


def _same_type(found: pa.DataType, expected: pa.DataType) -> bool:
    """Whether a column read back has the record's type (a list's item field may be named `element` or `item`)."""
    if pa.types.is_list(found) and pa.types.is_list(expected):
        return _same_type(found.value_type, expected.value_type)
    return found == expected or pa.types.is_null(found)


def _to_table(rows: list[Any], names: list[str], schema: pa.Schema) -> pa.Table:
    cols = {n: [getattr(r, n) for r in rows] for n in names}
    return pa.table(cols, schema=schema)


# -- user files (JSONL / Parquet) --------------------------------------------------------------------------


_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def _loads(raw: bytes) -> Any:
    """One JSON line, exactly as json reads it. orjson is ~3x faster but reads an integer past 64 bits as a float
    (a gold answer must not change), so such lines, and those it refuses (NaN; json says better what is wrong),
    go to json."""
    if _LONG_DIGITS.search(raw) is None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw.decode("utf-8"))


def iter_file_rows(url: str, **storage_options: Any) -> Iterator[tuple[str, dict | None, str | None]]:
    """Rows of a user's JSONL or Parquet file as (origin "file:line", row or None, error or None).

    A bad line (not UTF-8, not JSON, not an object) is yielded with its error instead of a row, so a caller
    can quarantine it and go on.
    """
    fs, path = _url_to_fs(url, **storage_options)
    if not fs.exists(path):
        raise DataError(f"{url}: no such file")
    if path.endswith(".parquet"):
        with fs.open(path, "rb") as f:
            for n, row in _batched_rows(_parquet(f, url), url, 1024):
                yield f"{url}:{n}", row, None
        return
    with fs.open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            origin = f"{url}:{n}"
            if not raw.strip():
                continue
            try:
                row = _loads(raw)
            except UnicodeDecodeError as e:
                yield origin, None, f"not UTF-8 ({e.reason} at byte {e.start})"
                continue
            except json.JSONDecodeError as e:
                yield origin, None, f"malformed JSON ({e.msg} at column {e.colno})"
                continue
            if not isinstance(row, dict):
                yield origin, None, f"expected a JSON object, got {type(row).__name__}"
                continue
            yield origin, row, None


def write_file_rows(url: str, rows: Iterable[dict], **storage_options: Any) -> int:
    """Write dict rows to a JSONL or Parquet file (by extension), whole or not at all."""
    rows = list(rows)
    fs, path = _url_to_fs(url, **storage_options)
    if path.endswith(".parquet"):
        try:
            table = pa.Table.from_pylist(rows)
        except pa.ArrowException as e:  # a column whose values change type from row to row
            raise DataError(f"{url}: cannot write Parquet ({e}); a .jsonl output takes mixed types") from None
        _atomic_write(fs, path, lambda f: pq.write_table(table, f))
    else:
        data = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows).encode()
        _atomic_write(fs, path, lambda f: f.write(data))
    return len(rows)


def list_files(folder: str, suffixes: tuple[str, ...], **storage_options: Any) -> dict[str, str]:
    """Files directly in `folder` named `*{suffix}` -> URL: version. The version (size plus ETag, or mtime where
    the store has none) changes when a file is replaced. A missing folder has no files."""
    fs, root = _url_to_fs(folder, **storage_options)
    if not fs.isdir(root):
        return {}
    found = {}
    for info in fs.ls(root, detail=True):
        name = info["name"]
        if info.get("type") != "file" or not name.endswith(suffixes) or name.rsplit("/", 1)[-1].startswith((".", "_")):
            continue
        stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or info.get("created")
        found[name if _is_local(fs) else fs.unstrip_protocol(name)] = f"{info.get('size')}-{stamp}"
    return dict(sorted(found.items()))
