"""A date range + a FactoryConfig -> one run of the `pipeline` deployment per date (or in-process runs), watched.

Each date's run is found again by an idempotency key, so a repeated backfill creates no new flow runs: finished
dates are left alone, unfinished ones watched, failed or crashed ones retried in place (same flow run, same run
id; the stages already in the lake are skipped). A run whose worker died is Crashed by the heartbeat automation
that `mathfactory deploy` installs (infra/automations.yaml).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from rich.console import Console
from rich.live import Live
from rich.table import Table

from mathfactory.flows.config import ConfigError, FactoryConfig, check_date
from mathfactory.flows.deploy import DeployError, api_url, connect

DEPLOYMENT = "mathfactory-pipeline/pipeline"
POLL_SECONDS = 2.0
PAGE = 200  # the server's default cap on rows per read


class ArgumentError(ValueError):
    """A bad command-line argument; `param` names it."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


@dataclass
class DatedRun:
    date: str
    run_id: str
    flow_run_id: UUID | None = None
    state: str = "Pending"
    note: str = ""
    final: bool = False
    ok: bool = False


def date_range(start: str, end: str) -> list[str]:
    """Every date from `start` to `end`, both included."""
    days = []
    for param, value in (("--start", start), ("--end", end)):
        try:
            days.append(dt.date.fromisoformat(check_date(value)))
        except ConfigError as e:
            raise ArgumentError(param, str(e)) from None
    first, last = days
    if last < first:
        raise ArgumentError("--end", f"end {last} is before start {first}")
    return [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


def with_absolute_lake(cfg: FactoryConfig) -> FactoryConfig:
    """A worker runs in its own checkout: a relative local lake must mean the directory the user meant."""
    if "://" in cfg.lake:
        return cfg
    return cfg.model_copy(update={"lake": str(Path(cfg.lake).resolve())})


def idempotency_key(deployment: str, date: str, cfg: FactoryConfig) -> str:
    """Same deployment, date, config and lake -> same key -> the server hands back the run it already has.
    The lake is not in the config hash but is in the key: the same backfill into another lake is new work."""
    lake = hashlib.sha256(cfg.lake.encode()).hexdigest()[:8]
    return f"backfill:{deployment}:{date}:{cfg.config_hash()}:{lake}"


def _batches(items: list, size: int = PAGE) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _update(row: DatedRun, flow_run: Any) -> None:
    row.flow_run_id = flow_run.id
    state = flow_run.state
    row.state = state.name if state else "Pending"
    row.final, row.ok = bool(state and state.is_final()), bool(state and state.is_completed())


def _check_target(client: Any, deployment: str) -> Any:
    """The deployment and its work pool must exist; returns the pool."""
    from prefect.exceptions import ObjectNotFound

    if deployment.count("/") != 1:
        raise ArgumentError("--deployment", f"{deployment!r}: expected FLOW/DEPLOYMENT, e.g. {DEPLOYMENT}")
    try:
        dep = client.read_deployment_by_name(deployment)
    except ObjectNotFound:
        raise ArgumentError("--deployment", f"no deployment {deployment!r} at {api_url()} "
                                            "(run `mathfactory deploy`)") from None
    if dep.work_pool_name:  # None once its pool was deleted
        try:
            return client.read_work_pool(dep.work_pool_name)
        except ObjectNotFound:
            pass
    raise ArgumentError("--deployment", f"{deployment}: its work pool {dep.work_pool_name!r} does not exist "
                                        "(run `mathfactory deploy`)")


def _create(deployment: str, cfg: FactoryConfig, date: str, key: str, run_id: str) -> Any:
    from prefect.deployments import run_deployment
    from prefect.exceptions import PrefectHTTPStatusError

    try:
        return run_deployment(deployment, parameters={"config": cfg.model_dump(mode="json"), "date": date},
                              idempotency_key=key, timeout=0, flow_run_name=run_id, tags=["backfill"],
                              as_subflow=False)
    except PrefectHTTPStatusError as e:
        if e.response.status_code != 409:
            raise
        # The server checks parameters against the schema stored at deploy time: stale after a config change.
        raise DeployError(f"{deployment} refused the parameters ({e.response.json().get('detail')}); "
                          "redeploy this checkout with `mathfactory deploy`") from None


def trigger(cfg: FactoryConfig, dates: list[str], deployment: str = DEPLOYMENT,
            console: Console | None = None) -> list[DatedRun]:
    """One flow run per date: created if the key is new, retried in place if it failed, else left as it is."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterIdempotencyKey
    from prefect.states import Scheduled

    cfg = with_absolute_lake(cfg)
    keys = {d: idempotency_key(deployment, d, cfg) for d in dates}
    with connect() as client:
        pool = _check_target(client, deployment)
        if console and str(pool.status).upper().endswith("NOT_READY"):
            console.print(f"[yellow]no worker is polling pool {pool.name!r}: runs wait until one starts "
                          f"(prefect worker start --pool {pool.name})[/]")
        known = {r.idempotency_key: r for batch in _batches(list(keys.values())) for r in client.read_flow_runs(
            flow_run_filter=FlowRunFilter(idempotency_key=FlowRunFilterIdempotencyKey(any_=batch)), limit=len(batch))}
        rows = []
        for date in dates:
            row = DatedRun(date, cfg.run_id(date))
            flow_run = known.get(keys[date])
            if flow_run is None:
                flow_run = _create(deployment, cfg, date, keys[date], row.run_id)
                row.note = "new"
            elif flow_run.state and flow_run.state.is_final() and not flow_run.state.is_completed():
                client.set_flow_run_state(flow_run.id, Scheduled(name="AwaitingRetry",
                                                                 message="retried by mathfactory backfill"),
                                          force=True)
                flow_run = client.read_flow_run(flow_run.id)
                row.note = "retried"
            else:
                row.note = "existing"
            _update(row, flow_run)
            rows.append(row)
    return rows


def table(rows: list[DatedRun]) -> Table:
    out = Table("date", "run id (flow run name)", "state", "", title="backfill")
    colors = {True: "green", False: "red"}
    for r in rows:
        state = f"[{colors[r.ok]}]{r.state}[/]" if r.final else r.state
        out.add_row(r.date, r.run_id, state, r.note)
    return out


def watch(rows: list[DatedRun], console: Console, poll: float = POLL_SECONDS) -> list[DatedRun]:
    """Redraw every date's state until all are final."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    by_id = {r.flow_run_id: r for r in rows}
    with connect() as client, Live(table(rows), console=console, auto_refresh=False, transient=True) as live:
        while not all(r.final for r in rows):
            time.sleep(poll)
            for batch in _batches([r.flow_run_id for r in rows if not r.final]):
                for flow_run in client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=batch)),
                                                      limit=len(batch)):
                    _update(by_id[flow_run.id], flow_run)
            live.update(table(rows), refresh=True)
    console.print(table(rows))
    return rows


def run_local(cfg: FactoryConfig, dates: list[str], console: Console) -> list[DatedRun]:
    """The dates one after another in this process (Prefect's local API; no server, no worker)."""
    from mathfactory.flows.pipeline import pipeline

    rows = []
    for date in dates:
        run_id = cfg.run_id(date)
        state = pipeline.with_options(flow_run_name=run_id)(config=cfg, date=date, return_state=True)
        row = DatedRun(date, run_id, state=state.name, final=True, ok=state.is_completed(), note="local")
        rows.append(row)
        console.print(f"{date}: {row.run_id} {row.state}")
    return rows


def backfill(cfg: FactoryConfig, start: str, end: str, deployment: str = DEPLOYMENT, wait: bool = True,
             local: bool = False, console: Console | None = None) -> list[DatedRun]:
    """The dates' runs: in-process (`local`), or triggered on the server and, with `wait`, watched to the end."""
    console = console or Console()
    dates = date_range(start, end)
    if local:
        return run_local(cfg, dates, console)
    rows = trigger(cfg, dates, deployment, console)
    if wait:
        return watch(rows, console)
    console.print(table(rows))
    return rows
