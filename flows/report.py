"""A run's stage markers -> summary tables, for the terminal (rich) and the Prefect UI (a markdown artifact)."""

from __future__ import annotations

import collections
import re

from rich.console import Console
from rich.table import Table

from mathfactory.tasks.core.methods import display_order
from mathfactory.tasks.core.records import Rollout, StepCredit
from mathfactory.tasks.core.steps import Step
from mathfactory.tasks.domains.toy import LEVELS
from mathfactory.tasks.evaluate import STAGE_PREFIX as EVAL_PREFIX
from mathfactory.tasks.evaluate import train_stage
from mathfactory.tasks.storage import Lake

Tables = list[tuple[str, list[str], list[list[str]]]]


def _level_order(group: str) -> tuple:
    """`split/level` sorted by split, then by education level (toy) or name."""
    split, _, level = group.partition("/")
    return (split, LEVELS.index(level) if level in LEVELS else len(LEVELS), level)


def tables(lake: Lake, run_id: str) -> Tables:
    """Every finished stage's rows, time and location; verdict reasons; sampled accuracy by split and level."""
    stages = lake.stages(run_id)
    out: Tables = [(f"run {run_id}", ["stage", "rows", "quarantined", "seconds", "where"], [
        [name, str(m["rows"]) if m["record"] else "model",  # a model directory, not a table
         str(m.get("quarantined", 0)), str(m.get("seconds")), lake.uri(run_id, name)]
        for name, m in stages.items()
    ])]
    if "gates" in stages.get("problems", {}).get("metrics", {}):
        out.append(problem_gates_table(stages["problems"]["metrics"]["gates"]))
    if "synth_problems" in stages:
        out += synthesis_tables(stages)
    if "verdicts" in stages:
        v = stages["verdicts"]["metrics"]
        out.append(("verdicts by reason", ["reason", "rollouts"], [[r, str(k)] for r, k in v["reasons"].items()]))
        out.append((f"sampled accuracy ({v['mixed']} of {v['problems']} problems have both correct and wrong samples)",
                    ["split/level", "correct", "samples", "accuracy"],
                    [[g, str(c), str(k), f"{c / k:.1%}"]
                     for g, (c, k) in sorted(v["groups"].items(), key=lambda g: _level_order(g[0]))]))
    if "credit" in stages:
        c = stages["credit"]["metrics"]
        how = f"{c.get('strategy', '?')}, M={c.get('m', '?')}, K={c.get('k', '?')}, pit {c.get('pit', 'first_zero')}"
        out.append((f"step credit ({how})",
                    ["rollouts credited", "wrong", "of never-solved questions", "pits", "pit = last step",
                     "continuations", "tokens/s", "not credited"],
                    [[str(c.get(k, "-")) for k in ("rollouts", "wrong", "unsolved", "pits", "pit_final",
                                                     "continuations", "tokens_per_s")]
                     + [_counts(c.get("not_credited", {}))]]))
    built = [(name, m["rows"], m["metrics"]) for name, m in stages.items() if "skipped" in m.get("metrics", {})]
    if built:
        covered = next((m["covered"] for _, _, m in built if "covered" in m), None)
        out.append((f"training sets{'' if covered is None else f' (from the {covered} problems credit covered; sft is D_syn whole)'}",
                    ["dataset", "rows", "problems", "chosen from", "pit = last step", "inputs left out (why)"],
                    [[name, str(rows), str(m.get("problems", "-")), _counts(m.get("chosen_sources", {})),
                      str(m["pit_final"]) if "pit_final" in m else "-", _counts(m["skipped"])]
                     for name, rows, m in built]))
    if any(name.startswith(EVAL_PREFIX) for name in stages):
        out.append(_comparison(stages))
    if skipped := lake.skipped(run_id):
        out.append(skipped_table(skipped))
    return out


def skipped_table(skipped: dict[str, dict]) -> tuple[str, list[str], list[list[str]]]:
    """The optional stages the run did not run, with why (and the rows against the minimum, where that was why)."""
    return ("skipped (not failed): optional stages the run's inputs or settings left out",
            ["stage", "why", "rows", "minimum"],
            [[stage, why["reason"], *("-" if why.get(k) is None else str(why[k]) for k in ("rows", "minimum"))]
             for stage, why in skipped.items()])


def _counts(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def problem_gates_table(g: dict) -> tuple[str, list[str], list[list[str]]]:
    """What decontamination and deduplication dropped from the run's train problems, gate by gate."""
    left, rows = g["checked"], []
    for gate, dropped in g["dropped"].items():
        rows.append([gate, str(left), str(dropped), f"{1 - dropped / left:.1%}" if left else "-"])
        left -= dropped
    return (f"problem gates: {g['kept']} of {g['checked']} train problems kept ({g['test_items']} test items; "
            f"{g['earlier_problems']} problems of {g['earlier_runs']} earlier runs)",
            ["gate", "in", "dropped", "survived"], rows)


def synthesis_tables(stages: dict[str, dict]) -> Tables:
    """What each quality gate dropped, which seed texts influence chose, and what the synthesis path cost."""
    g = stages["synth_problems"]["metrics"]
    left, rows = g["written"], []
    for gate in g.get("gate_order", g["dropped"]):
        dropped = g["dropped"][gate]
        rows.append([gate, str(left), str(dropped), f"{1 - dropped / left:.0%}" if left else "-"])
        left -= dropped
    out: Tables = [(f"quality gates: {g['kept']} of {g['written']} synthesized problems kept",
                    ["gate", "in", "dropped", "survived"], rows)]
    if "influence" in stages:
        inf = stages["influence"]["metrics"]
        out.append((f"seed texts by gradient influence: {inf['selected']} selected for round 2",
                    ["kind", "mean score", "selected"],
                    [[k, f"{v:+.3f}", str(inf["selected_by_kind"].get(k, 0))]
                     for k, v in inf["mean_score_by_kind"].items()]))
    out.append(("cost", ["what", "teacher calls", "cached", "failed", "prompt tokens", "completion tokens"],
                [cost_row(name, stages[stage]["metrics"], "")
                 for name, stage in (("distillation round 1", "kd_round1"), ("distillation round 2", "kd_round2"))
                 if stage in stages] + ([cost_row("solvable gate", g, "solve_")] if "solve_requests" in g else [])))
    return out


def cost_row(name: str, m: dict, prefix: str) -> list[str]:
    return [name] + [f"{m.get(prefix + k, 0):,}" for k in ("teacher_calls", "cached", "failed", "prompt_tokens",
                                                          "completion_tokens")]


def cost_line(stages: dict[str, dict]) -> str | None:
    """The run's synthesis bill in one line, the way JiuZhang3.0 reports "9.3k GPT-4 calls"."""
    kd = [stages[s]["metrics"] for s in ("kd_round1", "kd_round2") if s in stages]
    if not kd or "synth_outputs" not in stages:
        return None
    g = stages.get("synth_problems", {}).get("metrics", {})
    distil, solve = sum(m["teacher_calls"] for m in kd), g.get("solve_teacher_calls", 0)
    tokens = sum(m["prompt_tokens"] + m["completion_tokens"] for m in kd) + g.get("solve_prompt_tokens", 0) \
        + g.get("solve_completion_tokens", 0)
    out = stages["synth_outputs"]
    return (f"cost: {distil + solve:,} teacher calls ({distil:,} to distil, {solve:,} to solve; {tokens:,} tokens; "
            f"{sum(m['cached'] for m in kd):,} more answered from cache); the synthesizer wrote {out['rows']:,} "
            f"problems ({out['metrics'].get('tokens', 0):,} tokens); {g.get('kept', 0):,} passed the gates")


def _with_ci(rate: float | None, ci: list[float] | None) -> str:
    """0.233, [0.161, 0.324] -> "23.3% (16-32)"."""
    return "-" if rate is None or ci is None else f"{rate:.1%} ({100 * ci[0]:.0f}-{100 * ci[1]:.0f})"


def comparison(lake: Lake, run_id: str) -> tuple[str, list[str], list[list[str]]]:
    """One row per evaluated model: its training rows, pass@1 and maj@k with 95 % intervals, pass@1 by education level."""
    return _comparison(lake.stages(run_id))


def _comparison(stages: dict[str, dict]) -> tuple[str, list[str], list[list[str]]]:
    evals = {name.removeprefix(EVAL_PREFIX): m["metrics"] for name, m in stages.items() if name.startswith(EVAL_PREFIX)}
    methods = display_order(set(evals))
    ks = {evals[m].get("k") for m in methods}
    maj = f"maj@{next(iter(ks))}" if len(ks) == 1 else "maj@k"
    rows = []
    for method in methods:
        e = evals[method]
        train_rows = (stages.get(train_stage(method)) or {}).get("metrics", {}).get("train_rows")
        by_level = sorted(e.get("by_level", e.get("by_stage", {})).items(),  # by_stage: lakes before schema 4
                          key=lambda kv: _level_order(f"/{kv[0]}"))
        rows.append([
            method, "-" if train_rows is None else str(train_rows), str(e.get("n")),
            _with_ci(e.get("pass@1"), e.get("pass@1_ci")),
            _with_ci(e.get("maj@k"), e.get("maj@k_ci")) + ("" if len(ks) == 1 else f" (k={e.get('k')})"),
            "/".join(f"{100 * g['pass@1']:.0f}" for _, g in by_level if g.get("pass@1") is not None) or "-",
        ])
    splits = sorted({str(evals[m].get("split")) for m in methods})
    return (f"models on the {'/'.join(splits)} split: greedy pass@1, {maj} of samples (95% Wilson intervals); "
            "by level: pass@1 % from the easiest level up",
            ["method", "trained on", "problems", "pass@1", maj, "by level"], rows)


def render_credit(rollout: Rollout, steps: list[Step], rows: list[StepCredit]) -> str:
    """A rollout step by step, with Q and advantage on the steps credit labelled, and the pit marked."""
    by_step = {r.step_index: r for r in rows}
    lines = [f"rollout {rollout.rollout_id} ({rollout.level}, strategy {rows[0].strategy})", rollout.prompt.rstrip()]
    if 0 in by_step:
        zero = by_step[0]
        lines.append(f"  Q_0: {zero.n_correct if zero.n_correct is not None else '?'} of the question's "
                     f"{zero.n_continuations} samples verified" + ("" if zero.q is None else f", Q_0 = {zero.q:.2f}"))
    for i, step in enumerate(steps, 1):
        r = by_step.get(i)
        label = " " * 15 if r is None else _q(r) + ("" if r.advantage is None else f" A={r.advantage:+.2f}")
        first, *rest = step.text.split("\n")
        lines.append(f"  step {i:>2} {label:<15} | {first}" + ("  <-- pit" if r and r.is_pit else ""))
        lines += [" " * 26 + "| " + line.strip() for line in rest]  # e.g. the answer line, kept with its step
    return "\n".join(lines)


def credit_examples(lake: Lake, run_id: str, n: int) -> list[str]:
    """n credited rollouts rendered (render_credit), those with a pit first."""
    from mathfactory.tasks.core.steps import split_steps, style_for
    from mathfactory.tasks.credit import CREDIT
    from mathfactory.tasks.problems import PROBLEMS
    from mathfactory.tasks.sample import ROLLOUTS
    from mathfactory.tasks.stage import Run

    run = Run(lake=lake.url, run_id=run_id)
    rows = collections.defaultdict(list)
    for r in run.read(CREDIT):
        rows[r.rollout_id].append(r)
    chosen = sorted(rows, key=lambda rid: (not any(r.is_pit for r in rows[rid]), rid))[:n]
    rollouts = {r.rollout_id: r for r in run.read(ROLLOUTS) if r.rollout_id in chosen}
    sources = {p.problem_id: p.source for p in run.read(PROBLEMS)}
    style = run.metrics(CREDIT.name).get("style", "auto")  # how the credit stage split the steps
    return [render_credit(rollouts[rid], split_steps(rollouts[rid].completion,
                                                     style_for(style, sources.get(rollouts[rid].problem_id, ""))),
                          rows[rid]) for rid in chosen]


def _q(r: StepCredit) -> str:
    """The step's Q, or what a probe stopped at its first success learned: Q > 0, from j draws."""
    return f"Q={r.q:.2f}" if r.q is not None else f"Q>0 ({r.n_correct}/{r.n_continuations})"


def print_tables(console: Console, lake: Lake, run_id: str) -> None:
    for title, headers, rows in tables(lake, run_id):
        table = Table(*headers, title=title)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    line = cost_line(lake.stages(run_id))
    if line:
        console.print(line, highlight=False)


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """A GitHub-flavoured markdown table's lines. A `|` inside a cell (`|D_syn| 64`) is escaped: unescaped, it
    splits the cell, the header no longer matches the separator, and the Prefect UI shows the rows as text."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(headers), "|" + "---|" * len(headers), *map(line, rows)]


def markdown(lake: Lake, run_id: str) -> str:
    parts = []
    for title, headers, rows in tables(lake, run_id):
        parts.append("\n".join([f"### {title}", "", *markdown_table(headers, rows)]))
    line = cost_line(lake.stages(run_id))
    return "\n\n".join(parts + ([line] if line else [])) + "\n"


def publish(lake: Lake, run_id: str) -> str:
    """The run's summary as a markdown artifact in the Prefect UI (keyed by run id, so reruns add versions)."""
    from prefect.artifacts import create_markdown_artifact

    key = re.sub(r"[^a-z0-9-]", "-", f"mathfactory-{run_id}".lower())
    create_markdown_artifact(key=key, markdown=markdown(lake, run_id), description=f"mathfactory run {run_id}")
    return key
