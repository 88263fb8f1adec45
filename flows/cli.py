"""The `mathfactory` command: run the pipeline, list and show what is in the lake, grade your own outputs."""

from __future__ import annotations

import collections
import itertools
import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mathfactory.flows.backfill import DEPLOYMENT
from mathfactory.flows.config import ConfigError, load_preset
from mathfactory.flows.report import print_tables
from mathfactory.tasks.core.records import RECORDS
from mathfactory.tasks.storage import DataError, Lake

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
out = Console(soft_wrap=True)  # paths and file:line messages stay whole, greppable

Preset = Annotated[str, typer.Option("--preset", "-p", help="Preset name or a YAML file.")]
LakeOpt = Annotated[str | None, typer.Option("--lake", help="Lake path or fsspec URL (default: the preset's).")]
Sets = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override, e.g. sample.n=8 (repeatable).")]


def _config(preset: str, lake: str | None, sets: list[str] | None):
    try:
        overrides = list(sets or []) + ([f"lake={lake}"] if lake else [])
        return load_preset(preset, overrides)
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from None


@app.command()
def run(preset: Preset = "toy", lake: LakeOpt = None, sets: Sets = None,
        date: Annotated[str | None, typer.Option(help="Run for a date (YYYY-MM-DD): dated run id and seed.")] = None):
    """Run the pipeline; stages already finished for this config are skipped."""
    from mathfactory.flows.pipeline import pipeline

    cfg = _config(preset, lake, sets)
    try:
        run_id = cfg.run_id(date)
    except ConfigError as e:
        raise typer.BadParameter(str(e), param_hint="--date") from None
    state = pipeline(config=cfg, date=date, return_state=True)
    print_tables(out, Lake(cfg.lake), run_id)
    if not state.is_completed():
        out.print(f"[red]run {run_id} {state.name}:[/] {state.message}", highlight=False)
        raise typer.Exit(1)


@app.command()
def experiment(preset: Annotated[str, typer.Option("--preset", "-p", help="Experiment preset or a YAML file.")]
               = "toy-sweep", lake: LakeOpt = None, sets: Sets = None):
    """Run a scaling experiment (cells already finished are skipped) and write its HTML report to the lake."""
    from mathfactory.flows.experiment import experiment as sweep
    from mathfactory.flows.experiment import load_experiment

    try:
        cfg = load_experiment(preset, list(sets or []) + ([f"lake={lake}"] if lake else []))
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from None
    state = sweep(config=cfg, return_state=True)
    if not state.is_completed():
        out.print(f"[red]experiment {cfg.name} {state.name}:[/] {state.message}", highlight=False)
        raise typer.Exit(1)
    result = state.result()
    from mathfactory.flows.experiment_report import tables

    for title, (headers, rows) in tables(result["summary"]).items():
        table = Table(*headers, title=title)
        for row in rows:
            table.add_row(*row)
        out.print(table)
    out.print(f"report: {result['report']}", highlight=False)
    for cell, error in result["failed"].items():
        out.print(f"[yellow]cell {cell} incomplete:[/] {error}", highlight=False)


@app.command()
def config(preset: Preset = "toy", lake: LakeOpt = None, sets: Sets = None):
    """Print the resolved configuration and the run id it maps to."""
    cfg = _config(preset, lake, sets)
    out.print_json(cfg.model_dump_json())
    out.print(f"run id: {cfg.run_id()}")


@app.command("ls")
def ls(lake: Annotated[str, typer.Option(help="Lake path or fsspec URL.")] = "./lake"):
    """Runs in the lake, with each finished stage's row count."""
    lk = Lake(lake)
    table = Table("run", "stages (rows)")
    for run_id in lk.runs():
        try:
            stages, skipped = lk.stages(run_id), lk.skipped(run_id)
        except DataError as e:  # a damaged marker: say which, and go on to the next run
            table.add_row(run_id, f"[red]error:[/] {e}")
            continue
        finished = "  ".join(f"{s} ({m['rows']})" for s, m in stages.items()) or "(nothing finished)"
        table.add_row(run_id, finished + (f"  skipped: {', '.join(skipped)}" if skipped else ""))
    out.print(table)


@app.command()
def show(run_id: str, stage: str, lake: Annotated[str, typer.Option(help="Lake path or fsspec URL.")] = "./lake",
         n: Annotated[int, typer.Option("-n", help="Rows to print.")] = 3,
         quarantine: Annotated[bool, typer.Option(help="The rows the stage refused, with why.")] = False):
    """A few rows of a stage (or of its quarantine), and its counts."""
    try:
        _show(Lake(lake), run_id, stage, n, quarantine)
    except DataError as e:  # a damaged part or marker: its path and row, not a traceback
        out.print(f"[red]error:[/] {e}", highlight=False)
        raise typer.Exit(1) from None


def _show(lk: Lake, run_id: str, stage: str, n: int, quarantine: bool) -> None:
    marker = lk.marker(run_id, stage)
    if marker is None:
        why = lk.skipped(run_id).get(stage)
        raise typer.BadParameter(f"{lk.uri(run_id, stage)} is not a finished stage"
                                 + (f": skipped, {why['reason']}" if why else " (see `mathfactory ls`)"))
    out.print_json(json.dumps({k: marker[k] for k in ("rows", "quarantined", "seconds", "metrics") if k in marker}))
    if quarantine:
        for q in itertools.islice(lk.read_quarantine(run_id, stage), n):
            out.print(f"{q.origin}: {q.reason}\n  {q.excerpt!r}", highlight=False, markup=False)
    elif stage == "credit":
        _show_credit(lk, run_id, n)
    elif marker.get("record"):
        for row in itertools.islice(lk.read(run_id, stage, RECORDS[marker["record"]]), n):
            out.rule()
            for field, value in vars(row).items():
                out.print(f"[bold]{field}[/]: {value}", highlight=False)


def _show_credit(lk: Lake, run_id: str, n: int) -> None:
    """n credited rollouts, those with a pit first: steps with Q and advantage, the pit marked."""
    from mathfactory.flows.report import credit_examples

    for text in credit_examples(lk, run_id, n):
        out.rule()
        out.print(text, highlight=False, markup=False)


@app.command()
def verify(file: str, gold: Annotated[str, typer.Option(help="Column with the reference answer.")],
           pred: Annotated[str, typer.Option(help="Column with the model output (or bare answer).")],
           out_file: Annotated[str | None, typer.Option("--out", help="Write graded rows (.jsonl/.parquet).")] = None,
           timeout: Annotated[float, typer.Option(help="Seconds per LaTeX comparison.")] = 5.0):
    """Grade any JSONL/Parquet of predictions against references; prints counts by reason."""
    from mathfactory.tasks.judge import Grading
    from mathfactory.tasks.storage import write_file_rows
    from mathfactory.tasks.verify import grade_file

    results = []
    try:
        for origin, row, problem in grade_file(file, gold, pred, Grading(timeout_s=timeout)):
            if problem is not None:
                out.print(f"[yellow]{origin}: {problem}[/]", highlight=False)
            results.append(row)
    except DataError as e:
        raise typer.BadParameter(str(e), param_hint="FILE") from None
    table = Table("reason", "rows")
    for reason, k in collections.Counter(r["reason"] for r in results).most_common():
        table.add_row(reason, str(k))
    out.print(table)
    if out_file:
        write_file_rows(out_file, results)
        out.print(f"wrote {len(results)} rows to {out_file}")


@app.command()
def deploy(gpus: Annotated[int, typer.Option(min=0, help="GPUs in the cluster: slots of the `gpu` tag limit.")] = 1,
           checkout: Annotated[str | None, typer.Option(envvar="MATHFACTORY_CHECKOUT",
                                                        help="Checkout cpu workers run (default: this one).")] = None,
           nightly_policy: Annotated[str | None, typer.Option(envvar="MATHFACTORY_NIGHTLY_POLICY",
                                                              help="Model directory (path or URL) the nightly "
                                                                   "refresh samples with.")] = None,
           crash_after: Annotated[float | None, typer.Option(min=90, help="Seconds without a heartbeat before a "
                                                             "flow run is marked Crashed (infra/automations.yaml: "
                                                             "150; at least 3 heartbeats).")] = None):
    """Create or update the work pools, the gpu limit, the automations of infra/automations.yaml and the
    deployments of infra/prefect.yaml on the Prefect API in PREFECT_API_URL. Safe to rerun."""
    from mathfactory.flows import deploy as dep

    try:
        dep.deploy(gpus, checkout or dep.REPO, nightly_policy, crash_after, echo=out.print)
    except dep.DeployError as e:
        out.print(f"[red]error:[/] {e}", highlight=False)
        raise typer.Exit(1) from None


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(ctx: typer.Context, pool: Annotated[str, typer.Option(help="Work pool to poll.")] = "cpu",
           jobs: Annotated[int, typer.Option(min=1, help="Flow runs at once on this machine; each trainer gets "
                                                       "cores/jobs torch threads.")] = 1):
    """Start a Prefect worker (`prefect worker start --limit JOBS`) whose flow runs share this machine's cores:
    $MATHFACTORY_JOBS tells each trainer its share. Other options go to `prefect worker start`."""
    import os
    import sys

    from mathfactory.tasks.trainer import JOBS_ENV

    cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--limit", str(jobs), *ctx.args]
    os.execve(sys.executable, cmd, {**os.environ, JOBS_ENV: str(jobs)})


@app.command()
def backfill(start: Annotated[str, typer.Option(help="First date, YYYY-MM-DD.")],
             end: Annotated[str, typer.Option(help="Last date, YYYY-MM-DD (included).")],
             preset: Preset = "toy", lake: LakeOpt = None, sets: Sets = None,
             deployment: Annotated[str, typer.Option(help="FLOW/DEPLOYMENT to run.")] = DEPLOYMENT,
             wait: Annotated[bool, typer.Option(help="Show each date's state until all finish.")] = True,
             local: Annotated[bool, typer.Option(help="Run the dates here, one after another, no server.")] = False):
    """One pipeline run per date (dated run ids and seeds); rerunning a finished backfill creates nothing new."""
    from mathfactory.flows import backfill as bf
    from mathfactory.flows.deploy import DeployError

    cfg = _config(preset, lake, sets)
    try:
        rows = bf.backfill(cfg, start, end, deployment, wait=wait, local=local, console=out)
    except bf.ArgumentError as e:
        raise typer.BadParameter(str(e), param_hint=e.param) from None
    except DeployError as e:
        out.print(f"[red]error:[/] {e}", highlight=False)
        raise typer.Exit(1) from None
    if (wait or local) and not all(r.ok for r in rows):
        raise typer.Exit(1)


@app.command()
def nightly(preset: Preset = "toy", lake: LakeOpt = None, sets: Sets = None,
            date: Annotated[str | None, typer.Option(help="The night (YYYY-MM-DD; default today, UTC).")] = None,
            incoming: Annotated[str | None, typer.Option(help="Seed-file folder (default {lake}/incoming).")] = None,
            train: Annotated[bool, typer.Option(help="Also train train.methods and evaluate (too-small sets and "
                                                     "a missing test split are skipped).")] = False):
    """Run the nightly refresh here: seed files new since the last good night -> a dated run of the data stages."""
    from mathfactory.flows.config import check_date
    from mathfactory.flows.nightly import nightly as refresh
    from mathfactory.flows.nightly import require_policy

    cfg = _config(preset, lake, sets)
    try:
        require_policy(cfg)
    except ConfigError as e:
        raise typer.BadParameter(str(e), param_hint="--set policy.pretrained") from None
    try:
        date = check_date(date) if date else None
    except ConfigError as e:
        raise typer.BadParameter(str(e), param_hint="--date") from None
    result = refresh(config=cfg, date=date, incoming=incoming, train=train)
    out.print(f"{result['date']}: {result['status']}" + (f" -> {result['run_id']}" if result["run_id"] else ""))
    for stage, why in result.get("skipped", {}).items():
        out.print(f"  {stage} skipped: {why}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
