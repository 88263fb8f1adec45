"""The nightly refresh: seed files that arrived since the last good night -> a dated pipeline run. Composition only."""

from __future__ import annotations

import datetime as dt

from prefect import flow
from prefect.runtime import flow_run

from mathfactory.flows.config import ConfigError, FactoryConfig, check_date
from mathfactory.flows.pipeline import pipeline
from mathfactory.tasks.incoming import advance_watermark, find_new_seed_files
from mathfactory.tasks.stage import logger


def require_policy(config: FactoryConfig) -> None:
    if not config.policy.pretrained:
        raise ConfigError("nightly refresh: policy.pretrained is not set; the refresh samples with an existing "
                          "model (deploy with `mathfactory deploy --nightly-policy URL`)")


@flow(name="mathfactory-nightly-refresh")
def nightly(config: FactoryConfig | None = None, date: str | None = None, incoming: str | None = None) -> dict:
    """Process only the seed files (GSM8K-format JSONL/Parquet) new in `incoming` (default `{lake}/incoming`)
    since the last successful night, sampled by the existing model `config.policy.pretrained`, as the run for
    `date` (default: the scheduled day, UTC). Every row of a new file is taken and sampled: a capped night would
    mark unread rows as processed. Rerunning a finished date does nothing."""
    config = config or FactoryConfig()
    require_policy(config)
    date = check_date(date) if date else flow_run.scheduled_start_time.astimezone(dt.timezone.utc).date().isoformat()
    folder = incoming or f"{config.lake.rstrip('/')}/incoming"
    log = logger()

    found = find_new_seed_files(config.lake, config.name, folder, date)
    if found["done"] is not None:
        log.info("%s: already refreshed (watermark at %s), nothing to do", date, found["last_date"])
        return {"date": date, "status": "already done", **found["done"]}
    if not found["files"]:
        advance_watermark(config.lake, config.name, date, {}, None)
        log.info("%s: no new seed files in %s", date, folder)
        return {"date": date, "status": "nothing new", "run_id": None, "files": []}

    tonight = config.model_copy(update={
        "problems": config.problems.model_copy(update={"source": "files", "files": sorted(found["files"]),
                                                       "n_train": None}),
        "sample": config.sample.model_copy(update={"problems_per_split": None}),  # every new problem, whole
        "credit": config.credit.model_copy(update={"problems": None}),
    })
    run_id = pipeline(config=tonight, date=date)["run_id"]
    advance_watermark(config.lake, config.name, date, found["files"], run_id)
    return {"date": date, "status": "refreshed", "run_id": run_id, "files": sorted(found["files"])}
