"""Seed files in an incoming folder + the nightly watermark -> tonight's new files; a finished night -> the watermark.

The watermark, `{lake}/state/nightly/{config name}.json`, records every file already processed (with the version
it had then) and every night's outcome (its run, and the optional stages it skipped, with why). It advances only
after the night's run has committed its data (verdicts, credit, every training set), so a failed night leaves it
as it was and the next attempt sees the same new files.
"""

from __future__ import annotations

import datetime as dt

from prefect import task
from prefect.cache_policies import NO_CACHE

from mathfactory.tasks.pairs import SETS
from mathfactory.tasks.stage import logger
from mathfactory.tasks.storage import Lake, list_files

SEED_SUFFIXES = (".jsonl", ".parquet")  # GSM8K-format rows, what ProblemsConfig(source="files") reads
DATA_STAGES = ("verdicts", "credit", *SETS)  # a night's data, whole


def watermark_key(name: str) -> str:
    return f"nightly/{name}"


def new_files(seen: dict[str, dict], present: dict[str, str]) -> dict[str, str]:
    """Files not processed before, or replaced since (their version changed). Pure."""
    return {url: v for url, v in present.items() if seen.get(url, {}).get("version") != v}


@task(name="find-new-seed-files", cache_policy=NO_CACHE, retries=1)
def find_new_seed_files(lake: str, name: str, folder: str, date: str) -> dict:
    """{"done": the night's record if `date` is not after the watermark (a rerun), else None;
    "files": URL -> version of the seed files that are new since the last successful night}."""
    mark = Lake(lake).read_state(watermark_key(name)) or {}
    last = mark.get("last_date")
    if last is not None and date <= last:
        return {"done": mark["nights"].get(date, {"run_id": None, "files": []}), "last_date": last, "files": {}}
    files = new_files(mark.get("files", {}), list_files(folder, SEED_SUFFIXES))
    logger().info("%d new seed file(s) in %s since %s", len(files), folder, last or "the first night")
    return {"done": None, "last_date": last, "files": files}


@task(name="advance-watermark", cache_policy=NO_CACHE, retries=1)
def advance_watermark(lake: str, name: str, date: str, files: dict[str, str], run_id: str | None,
                      skipped: dict[str, str] | None = None) -> dict:
    """Record the night: `files` (at the versions found before the run) are processed by `run_id`, which skipped
    the stages in `skipped` (stage -> why). Refuses while a stage of the night's data is not committed, so the
    watermark never runs ahead of the data."""
    lk = Lake(lake)
    if run_id is not None and (missing := [s for s in DATA_STAGES if lk.marker(run_id, s) is None]):
        raise RuntimeError(f"{lk.uri(run_id, missing[0])} is not committed; the watermark stays where it is")
    key = watermark_key(name)
    mark = lk.read_state(key) or {"files": {}, "nights": {}}
    mark["files"].update({url: {"version": v, "date": date, "run_id": run_id} for url, v in files.items()})
    mark["nights"][date] = {"run_id": run_id, "files": sorted(files), "skipped": skipped or {},
                            "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    mark["last_date"] = max(date, mark.get("last_date") or date)
    lk.write_state(key, mark)
    return mark["nights"][date]
