"""A committed stage -> a Prefect asset: keyed by its lake URL, with what it read upstream of it (the run's stages it
reads, and files or models outside the run) and its marker's figures as metadata. Prefect records a materialization
event per stage (`prefect.asset.materialization.succeeded`, the upstream assets as related resources, the metadata
as payload): Prefect Cloud draws the lineage graph from them (seed texts -> problems -> rollouts -> verdicts ->
credit -> training sets -> models -> evaluations); a self-hosted server lists them in its Event Feed."""

from __future__ import annotations

from typing import Any

from prefect import Task
from prefect.assets import Asset, AssetProperties, add_asset_metadata, materialize
from prefect.cache_policies import NO_CACHE
from prefect.context import AssetContext
from pydantic import ValidationError

from mathfactory.tasks.stage import Run, StageSpec, logger
from mathfactory.tasks.storage import as_url


def asset(key: str, properties: AssetProperties | None = None) -> Asset | None:
    """The asset at `key`, or None where the URL is not a valid asset key (a space or `%` in a local path,
    more than 512 characters): lineage is a view of the run, never a reason to fail it."""
    try:
        return Asset(key=key, properties=properties)
    except ValidationError as e:
        logger().warning("no Prefect asset for %s: %s", key, e.errors()[0]["msg"])
        return None


def stage_asset(spec: StageSpec, run: Run) -> Asset | None:
    what = f"{spec.record.__name__} dataset" if spec.record else "model directory"
    return asset(run.store.stage_url(run.run_id, spec.name),
                 AssetProperties(name=f"{run.run_id}/{spec.name}", description=f"mathfactory {what}, stage "
                                 f"`{spec.name}` of run `{run.run_id}`"))


def source_url(run: Run, ref: str) -> str:
    """A file or model a stage reads from outside its run, as a URL. A model of another run in the same lake is
    that run's stage asset, whether named `runs/{run_id}/{stage}` or by its directory (`.../{stage}/model`)."""
    parts = ref.split("/")
    if len(parts) == 3 and parts[0] == "runs" and "://" not in ref:
        return run.store.stage_url(parts[1], parts[2])
    url = as_url(ref).rstrip("/")
    runs = run.store.stage_url(run.run_id, "-").rsplit("/", 2)[0] + "/"  # {lake}/runs/
    return url.removesuffix("/model") if url.startswith(runs) else url


def upstream(spec: StageSpec, cfg: Any, run: Run) -> list[Asset]:
    keys = [run.store.stage_url(run.run_id, s) for s in spec.reads_for(cfg)]
    keys += [source_url(run, ref) for ref in spec.sources(cfg)]
    return [a for a in map(asset, dict.fromkeys(keys)) if a is not None]


def materializing(t: Task, spec: StageSpec, cfg: Any, run: Run, retries: int) -> Task:
    """Task `t` (one that commits `spec`) as a materialization of the stage's asset, with its upstream."""
    target = stage_asset(spec, run)
    if target is None:
        return t.with_options(retries=retries)
    return materialize(target, asset_deps=upstream(spec, cfg, run), name=t.name, task_run_name=t.task_run_name,
                       cache_policy=NO_CACHE, retries=retries)(t.fn)


def describe(spec: StageSpec, run: Run) -> None:
    """The committed stage's figures as its asset's metadata (inside its materializing task; else nothing)."""
    ctx, key = AssetContext.get(), run.store.stage_url(run.run_id, spec.name)
    if ctx is not None and key in {a.key for a in ctx.downstream_assets}:
        add_asset_metadata(key, metadata(run.marker(spec.name) or {}))


def metadata(marker: dict) -> dict[str, Any]:
    """What the UI shows beside a materialization: rows, schema version and config hash, as in _SUCCESS.json; for a
    model, its metrics that are single values (losses, steps, what it was trained from)."""
    keep = ("run_id", "schema_version", "config_hash", "code_version", "seconds")
    out = {k: marker[k] for k in keep if k in marker}
    if marker.get("record"):
        out.update(record=marker["record"], rows=marker["rows"], parts=len(marker["parts"]),
                   quarantined=marker.get("quarantined", 0))
    else:
        out["kind"] = "model"
        out.update({k: v for k, v in marker.get("metrics", {}).items() if isinstance(v, str | int | float | bool)})
    return out
