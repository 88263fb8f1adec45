"""One stage of one run in the lake: skip when already marked, write shards, commit with provenance and timing."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from mathfactory.tasks.core.records import Quarantined
from mathfactory.tasks.storage import Lake


def config_hash(config: BaseModel | dict | None) -> str:
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else (config or {})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task run (so lines reach the UI), a plain logger elsewhere."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("mathfactory")


class Stage:
    def __init__(self, lake: str, run_id: str, name: str, record: type | None, config: Any = None):
        self.lake = Lake(lake)
        self.run_id, self.name, self.record = run_id, name, record
        self.config_hash = config_hash(config)
        self.marker = self.lake.marker(run_id, name)
        self.started = time.time()
        if self.marker is not None:
            logger().info("%s: already done (%d rows), skipping", name, self.marker["rows"])

    @property
    def done(self) -> bool:
        return self.marker is not None

    @property
    def uri(self) -> str:
        return self.lake.uri(self.run_id, self.name)

    def has_shard(self, shard: int) -> bool:
        return self.lake.has_part(self.run_id, self.name, shard)

    def write(self, shard: int, rows: Iterable[Any], quarantined: list[Quarantined] | None = None) -> int:
        """Write shard `shard`; `quarantined` may be filled while `rows` is consumed, so it is written after."""
        n = self.lake.write_part(self.run_id, self.name, shard, self.record, rows)
        if quarantined:
            self.lake.write_quarantine(self.run_id, self.name, shard, quarantined)
            logger().warning("%s: %d rows quarantined in shard %d, e.g. %s: %s", self.name, len(quarantined),
                             shard, quarantined[0].origin, quarantined[0].reason)
        return n

    def commit(self, started: float | None = None, **metrics: Any) -> str:
        seconds = round(time.time() - (started or self.started), 2)
        self.marker = self.lake.commit(self.run_id, self.name, self.record, config_hash=self.config_hash,
                                       seconds=seconds, metrics=metrics)
        logger().info("%s: %d rows in %.1f s -> %s", self.name, self.marker["rows"], seconds, self.uri)
        return self.uri


def token_rate(shards: list[dict]) -> dict[str, float | None]:
    """Generated tokens and tokens/s over the shards that sampled in this attempt (busy time, not wall time): a
    shard that landed in an earlier attempt reports no `tokens`, or 0 seconds."""
    sampled = [s for s in shards if "tokens" in s]
    tokens, busy = sum(s["tokens"] for s in sampled), sum(s["seconds"] for s in sampled)
    return {"tokens": tokens, "tokens_per_s": round(tokens / busy, 1) if busy else None}
