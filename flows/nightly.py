"""The nightly refresh: seed files that arrived since the last good night -> a dated run of the data stages (training
and evaluation opt-in). Composition only."""

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


def scheduled_date() -> str:
    """The day the flow run was scheduled for, UTC."""
    return flow_run.scheduled_start_time.astimezone(dt.timezone.utc).date().isoformat()


def night_name() -> str:
    """The flow run's name: the config's name and the night, e.g. `toy-nightly-2026-11-01`."""
    params = flow_run.parameters
    name = FactoryConfig.model_validate(params.get("config") or {}).name
    return f"{name}-nightly-{params.get('date') or scheduled_date()}"


@flow(name="mathfactory-nightly-refresh", flow_run_name=night_name)
def nightly(config: FactoryConfig | None = None, date: str | None = None, incoming: str | None = None,
            train: bool = False) -> dict:
    """A data refresh: the seed files (GSM8K-format JSONL/Parquet) new in `incoming` (default `{lake}/incoming`)
    since the last successful night, sampled by the existing model `config.policy.pretrained`, verified, credited
    and made into training sets, as the run for `date` (default: the scheduled day, UTC). `train` (opt-in): also
    train `config.train.methods` and evaluate; a set smaller than a batch, or a night without a test split, is then
    skipped with its reason, not failed. Every row of a new file is taken and sampled: a capped night would mark
    unread rows as processed. Rerunning a finished date does nothing."""
    config = config or FactoryConfig()
    require_policy(config)
    date = check_date(date) if date else scheduled_date()
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
    done = pipeline(config=tonight, date=date, train=train)
    advance_watermark(config.lake, config.name, date, found["files"], done["run_id"], done["skipped"])
    log.info("%s: %s committed; skipped: %s", date, done["run_id"], ", ".join(done["skipped"]) or "nothing")
    return {"date": date, "status": "refreshed", "run_id": done["run_id"], "files": sorted(found["files"]),
            "skipped": done["skipped"]}
