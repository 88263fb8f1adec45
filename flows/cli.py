"""The `mathfactory` command: run the pipeline, list and show what is in the lake, grade your own outputs.

Each command imports what it needs in its body: importing this module (and `mathfactory --help`) must not pull in
prefect, torch or Ray, so a command that only grades starts in a fraction of a second.
"""

from __future__ import annotations

import collections
import itertools
import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
out = Console(soft_wrap=True)  # paths and file:line messages stay whole, greppable

Preset = Annotated[str, typer.Option("--preset", "-p", help="Preset name or a YAML file.")]
LakeOpt = Annotated[str | None, typer.Option("--lake", help="Lake path or fsspec URL (default: the preset's).")]
Sets = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override, e.g. sample.n=8 (repeatable).")]


def _config(preset: str, lake: str | None, sets: list[str] | None):
    from mathfactory.flows.config import ConfigError, load_preset

    try:
        overrides = list(sets or []) + ([f"lake={lake}"] if lake else [])
        return load_preset(preset, overrides)
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from None


@app.command()
def run(preset: Preset = "toy", lake: LakeOpt = None, sets: Sets = None,
        date: Annotated[str | None, typer.Option(help="Run for a date (YYYY-MM-DD): dated run id and seed.")] = None):
    """Run the pipeline; stages already finished for this config are skipped."""
    from mathfactory.flows.config import ConfigError
    from mathfactory.flows.pipeline import pipeline
    from mathfactory.flows.report import print_tables
    from mathfactory.tasks.storage import Lake

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
    from mathfactory.flows.config import ConfigError
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
    from mathfactory.tasks.storage import DataError, Lake

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
    from mathfactory.tasks.storage import DataError, Lake

    try:
        _show(Lake(lake), run_id, stage, n, quarantine)
    except DataError as e:  # a damaged part or marker: its path and row, not a traceback
        out.print(f"[red]error:[/] {e}", highlight=False)
        raise typer.Exit(1) from None


def _show(lk, run_id: str, stage: str, n: int, quarantine: bool) -> None:
    from mathfactory.tasks.core.records import RECORDS

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


def _show_credit(lk, run_id: str, n: int) -> None:
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
    from mathfactory.tasks.storage import DataError, write_file_rows
    from mathfactory.tasks.verify_file import grade_file

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


# -- the stages on a user's own files ----------------------------------------------------------------------

Policy = Annotated[str, typer.Option(help="The policy: a model directory (path or fsspec URL) or an "
                                          "OpenAI-compatible server's base URL (http://HOST:PORT/v1).")]
Model = Annotated[str | None, typer.Option(help="The served model's name, where the server needs one.")]
Cache = Annotated[str | None, typer.Option(help="Folder (path or URL) of the policy's cached answers "
                                                "(default: $MATHFACTORY_CACHE/requests/policy, "
                                                "MATHFACTORY_CACHE defaulting to ~/.cache/mathfactory).")]
Seed = Annotated[int, typer.Option(help="Sampling seed: the same seed asks the same requests (answered from "
                                        "the cache on a rerun).")]
Question = Annotated[str, typer.Option(help="Column with the question.")]
Gold = Annotated[str, typer.Option(help="Column with the reference final answer.")]
OutFile = Annotated[str, typer.Option("--out", help="Output file (.jsonl/.parquet), written whole or not at all.")]
Temperature = Annotated[float, typer.Option(min=0, help="Sampling temperature.")]
MaxNew = Annotated[int, typer.Option(min=1, help="Generation budget per completion, in tokens.")]
Timeout = Annotated[float, typer.Option(help="Seconds per LaTeX comparison.")]


def _own_rows(file: str, columns: list[str]):
    """The file's usable rows; every other row is printed with file:line and why."""
    from mathfactory.tasks.own_files import read_rows
    from mathfactory.tasks.storage import DataError

    try:
        rows, problems = read_rows(file, columns)
    except DataError as e:
        raise typer.BadParameter(str(e), param_hint="FILE") from None
    _print_problems(problems)
    return rows


def _print_problems(problems: list[tuple[str, str]]) -> None:
    for origin, why in problems:
        out.print(f"[yellow]{origin}: {why}[/]", highlight=False)


def _policy(policy: str, model: str | None, cache: str | None, seed: int):
    from mathfactory.tasks.own_files import open_policy
    from mathfactory.tasks.storage import DataError, RequestCache, user_cache

    try:
        return open_policy(policy, model, RequestCache(cache) if cache else user_cache("policy"), seed)
    except (DataError, OSError, ValueError) as e:
        raise typer.BadParameter(str(e), param_hint="--policy") from None


def _served(call):
    """call(), with a policy request that failed for good reported, not raised: the answers so far are cached."""
    from mathfactory.tasks.engines.openai_engine import EngineHTTPError

    try:
        return call()
    except EngineHTTPError as e:
        out.print(f"[red]error:[/] {e}\nThe answers received so far are cached: rerun to go on from there.",
                  highlight=False)
        raise typer.Exit(1) from None


def _write(out_file: str, rows: list[dict]) -> None:
    from mathfactory.tasks.storage import DataError, write_file_rows

    try:
        write_file_rows(out_file, rows)
    except DataError as e:
        raise typer.BadParameter(str(e), param_hint="--out") from None


def _asked(engine) -> str:
    return f"policy requests: {engine.usage.asked} sent, {engine.usage.cached} answered from {engine.cache.url}"


@app.command()
def sample(file: str, question: Question, gold: Gold, policy: Policy, out_file: OutFile,
           n: Annotated[int, typer.Option(min=1, help="Completions per question.")] = 4, model: Model = None,
           temperature: Temperature = 0.8, max_new_tokens: MaxNew = 320, seed: Seed = 0, cache: Cache = None,
           timeout: Timeout = 5.0):
    """Sample N completions of every question of a JSONL/Parquet file from a policy and grade them: the rows
    with `row` (0-based input row), `sample_index`, `completion`, `correct`, `reason`; ready for `credit`."""
    from mathfactory.tasks import own_files
    from mathfactory.tasks.core.formatting import STOP
    from mathfactory.tasks.engines.base import SamplingParams
    from mathfactory.tasks.judge import Grading

    rows = _own_rows(file, [question, gold])
    engine = _policy(policy, model, cache, seed)
    params = SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens, stop=STOP, seed=seed)
    with Grading(timeout_s=timeout).judge() as judge:
        results, problems = _served(lambda: own_files.sample(rows, question, gold, engine, params, judge))
    _print_problems(problems)
    _write(out_file, results)
    solved = sum(r["correct"] for r in results)
    out.print(f"wrote {len(results)} completions of {len(rows) - len(problems)} rows ({solved} correct) to {out_file}\n"
              + _asked(engine), highlight=False)


@app.command()
def credit(file: str, question: Question, gold: Gold,
           completion: Annotated[str, typer.Option(help="Column with the completion to credit.")],
           policy: Policy, out_file: OutFile, model: Model = None,
           strategy: Annotated[str, typer.Option(help="binary (OmegaPRM), scan (Self-Explore) or linear "
                                                      "(Math-Shepherd): which steps of a wrong completion are "
                                                      "continued.")] = "binary",
           m: Annotated[int, typer.Option("--m", min=1, help="Continuations per step prefix (M).")] = 8,
           k: Annotated[int, typer.Option("--k", min=1, help="Best-of-K Q (K <= M).")] = 1,
           pit: Annotated[str, typer.Option(help="first_zero, or max_drop (needs --strategy linear).")] = "first_zero",
           steps: Annotated[str, typer.Option(help="Step split: lines (GSM8K-style), math (LaTeX prose), or auto "
                                                   "(math where a completion writes LaTeX).")] = "auto",
           positives: Annotated[bool, typer.Option(help="Also credit the correct completions, every step "
                                                        "(rft_advantage and chosen sides from the file need "
                                                        "them).")] = True,
           max_steps: Annotated[int, typer.Option(min=1, help="Completions with more steps are not credited.")] = 16,
           temperature: Annotated[float, typer.Option(help="Continuation temperature (> 0).")] = 0.8,
           max_new_tokens: MaxNew = 320, seed: Seed = 0, cache: Cache = None, timeout: Timeout = 5.0):
    """Per-step Monte-Carlo credit of the completions of a JSONL/Parquet file: the StepCredit rows of every
    credited completion, with `row` (0-based input row) and `steps` (the split used); rows that cannot be
    credited are printed with file:line and why."""
    from pydantic import ValidationError

    from mathfactory.tasks import own_files
    from mathfactory.tasks.credit import CreditConfig
    from mathfactory.tasks.judge import Grading

    if steps not in ("auto", "lines", "math"):
        raise typer.BadParameter(f"must be auto, lines or math, got {steps!r}", param_hint="--steps")
    try:
        cfg = CreditConfig(strategy=strategy, m=m, k=k, pit=pit, positives=positives, max_steps=max_steps,
                           temperature=temperature, max_new_tokens=max_new_tokens)
    except ValidationError as e:
        raise typer.BadParameter("; ".join(f"{'.'.join(map(str, x['loc'])) or 'options'}: {x['msg']}"
                                           for x in e.errors())) from None
    rows = _own_rows(file, [question, gold, completion])
    engine = _policy(policy, model, cache, seed)
    with Grading(timeout_s=timeout).judge() as judge:
        results, problems = _served(lambda: own_files.credit(rows, question, gold, completion, steps, engine,
                                                             judge, cfg, seed))
    _print_problems(problems)
    _write(out_file, results)
    credited = {r["row"] for r in results}
    pits = sum(r["is_pit"] for r in results)
    out.print(f"wrote {len(results)} step rows of {len(credited)} credited completions ({pits} pits) to {out_file};"
              f" {len(problems)} rows not credited\n" + _asked(engine), highlight=False)


@app.command()
def pairs(credit: Annotated[str, typer.Argument(help="A file `mathfactory credit` wrote.")],
          kind: Annotated[str, typer.Option(help="step_cut | step_prefix | outcome | edit (DPO pairs), rft | "
                                                 "rft_advantage (SFT rows), stepwise (PRM labels).")],
          out_file: OutFile,
          reference: Annotated[str | None, typer.Option(help="Column with a reference solution of the question, "
                                                              "for chosen sides.")] = None,
          chosen: Annotated[str | None, typer.Option(help="Chosen sides from: policy (the file's correct "
                                                          "completions), reference, both (default: reference "
                                                          "with --reference, else policy).")] = None,
          pit: Annotated[str | None, typer.Option(help="Re-choose each wrong rollout's pit: first_zero | max_drop "
                                                       "(max_drop needs --strategy linear credit; default: as "
                                                       "credited).")] = None,
          seed: Seed = 0):
    """A training set from a credit file, in TRL's columns (prompt/chosen/rejected, prompt/completion or
    prompt/completions/labels), built as the pipeline builds its sets; prints what was left out and why."""
    from mathfactory.tasks.own_pairs import KINDS, as_rows, build_set, read_credit
    from mathfactory.tasks.pairs import PairsConfig
    from mathfactory.tasks.storage import DataError

    if kind not in KINDS:
        raise typer.BadParameter(f"must be one of {', '.join(KINDS)}, got {kind!r}", param_hint="--kind")
    chosen = chosen or ("reference" if reference else "policy")
    if chosen not in ("policy", "reference", "both"):
        raise typer.BadParameter(f"must be policy, reference or both, got {chosen!r}", param_hint="--chosen")
    try:
        rows, problems = read_credit(credit)
    except DataError as e:
        raise typer.BadParameter(str(e), param_hint="CREDIT") from None
    _print_problems(problems)
    if pit not in (None, "first_zero", "max_drop"):
        raise typer.BadParameter(f"must be first_zero or max_drop, got {pit!r}", param_hint="--pit")
    try:
        built = build_set(rows, kind, PairsConfig(chosen=chosen), reference, seed, pit)
    except ValueError as e:  # max_drop of scan or binary credit
        raise typer.BadParameter(str(e), param_hint="--pit") from None
    if built.skipped:
        table = Table("left out", "rollouts")
        for reason, count in built.skipped.most_common():
            table.add_row(reason, str(count))
        out.print(table)
    _write(out_file, as_rows(built))
    out.print(f"wrote {len(built.rows)} {kind} rows to {out_file}", highlight=False)


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
             deployment: Annotated[str | None, typer.Option(help="FLOW/DEPLOYMENT to run (default: the pipeline's "
                                                                   "deployment, mathfactory-pipeline/pipeline).")] = None,
             wait: Annotated[bool, typer.Option(help="Show each date's state until all finish.")] = True,
             local: Annotated[bool, typer.Option(help="Run the dates here, one after another, no server.")] = False):
    """One pipeline run per date (dated run ids and seeds); rerunning a finished backfill creates nothing new."""
    from mathfactory.flows import backfill as bf
    from mathfactory.flows.deploy import DeployError

    cfg = _config(preset, lake, sets)
    try:
        rows = bf.backfill(cfg, start, end, deployment or bf.DEPLOYMENT, wait=wait, local=local, console=out)
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
    from mathfactory.flows.config import ConfigError, check_date
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
