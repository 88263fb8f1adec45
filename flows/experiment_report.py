"""An experiment's summary -> figures (PNG) and one self-contained HTML report (figures inlined as data: URIs, no
network needed to open it), written beside the experiment in the lake and published as a Prefect artifact."""

from __future__ import annotations

import base64
import html
import io
import json
import re

from mathfactory.flows.report import markdown_table
from mathfactory.tasks.storage import Lake


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None or x != x else ("inf" if x == float("inf") else format(x, spec))


def _interval(point, lo, hi, spec=".2f") -> str:
    return f"{_fmt(point, spec)} ({_fmt(lo, spec)}-{_fmt(hi, spec)})"


def scaling_png(summary: dict) -> bytes:
    """Test error vs |D_syn| per method in log-log: the cell means with bootstrap intervals and the fitted power
    law (the paper's Figures 2 and 5)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for method in summary["methods"]:
        fit = summary["fit"]["methods"][method]
        xs = sorted(fit["error"], key=float)
        ys = [fit["error"][x] for x in xs]
        err = [[y - fit["error_ci"][x][0] for x, y in zip(xs, ys, strict=True)],
               [fit["error_ci"][x][1] - y for x, y in zip(xs, ys, strict=True)]]
        line = ax.errorbar([float(x) for x in xs], ys, yerr=err, fmt="o", capsize=3,
                           label=f"{method} (b={_fmt(fit['b'])})")
        lo, hi = float(xs[0]), float(xs[-1])  # the fitted line only where the method was evaluated
        grid = [lo * (hi / lo) ** (i / 40) for i in range(41)]
        ax.plot(grid, [fit["a"] * x ** -fit["b"] for x in grid], "-", color=line[0].get_color(), alpha=0.7)
    ax.set(xscale="log", yscale="log", xlabel="|D_syn| (problems)", ylabel="test error (1 - greedy pass@1)",
           title=f"{summary['name']}: test error vs synthetic data")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def nll_png(diag: dict) -> bytes:
    """Figure 3: per-token NLL of D_syn's solutions vs the policy's own correct ones, under the model RFT starts
    from."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    for key, label in (("nll_d_syn", "D_syn (reference solutions)"), ("nll_self", "self-generated positives")):
        values = diag[key]
        ax.hist(values, bins=30, alpha=0.55, label=f"{label}: mean {sum(values) / len(values):.3f} (n={len(values)})")
    ax.set(xlabel="NLL per completion token (nats)", ylabel="solutions",
           title=f"Likelihood under {diag['model']} ({diag['problems']} problems with both)")
    ax.legend(fontsize=8)
    return _png(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a worker
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    _pyplot().close(fig)
    return buf.getvalue()


def checkpoints_png(summary: dict) -> bytes:
    """Figure 8a: pi_sft's SFT loss over its steps, one curve per checkpoint cell (seed of the first)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    seed = str(summary["config"]["seeds"][0])
    for key, c in summary["checkpoints"].items():
        if key.endswith(f"/{seed}") and c["losses"]:
            n = len(c["losses"])
            ax.plot([c["steps"] * (i + 1) / n for i in range(n)], c["losses"], label=f"{c['steps']} steps "
                    f"(Q_1 {_fmt(c['q1'])})")
    ax.set(xlabel="SFT step", ylabel="training loss", yscale="log", title="pi_sft's SFT loss per checkpoint")
    ax.legend(fontsize=8)
    return _png(fig)


def from_checkpoints_png(summary: dict) -> bytes:
    """Figures 8b/8c: each method's greedy pass@1 when started from pi_sft after N steps (pi_sft itself as `sft`),
    with bootstrap intervals."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    values = _axis(summary)[1]
    for method in summary["methods"]:
        f = summary["fit"]["methods"][method]
        ys = [1 - f["error"][v] for v in values]
        err = [[y - (1 - f["error_ci"][v][1]) for v, y in zip(values, ys, strict=True)],
               [(1 - f["error_ci"][v][0]) - y for v, y in zip(values, ys, strict=True)]]
        ax.errorbar([float(v) for v in values], ys, yerr=err, fmt="o-", capsize=3, label=method)
    ax.set(xscale="log", xlabel="pi_sft's SFT steps (the checkpoint each method starts from)",
           ylabel="greedy pass@1 (held-out)", title="Each method from each SFT checkpoint")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def q_png(q: dict) -> bytes:
    """Figure 7: each model's mean Q per step along the reference solutions of held-out problems."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    for method, rows in q["curves"].items():
        ax.plot([r["step"] for r in rows], [r["q"] for r in rows], "o-", label=method)
    ax.set(xlabel="reference steps given (0: the question alone)", ylabel="mean Q (continuations correct)",
           ylim=(-0.02, 1.02), title=f"Q along the reference ({q['problems']} held-out problems, M={q['m']})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _axis(summary: dict) -> tuple[str, list[str]]:
    """The axis's label and its values as the summary's keys (strings)."""
    cfg = summary["config"]
    if cfg.get("axis", "size") == "size":
        return "|D_syn|", [str(v) for v in sorted(cfg["sizes"])]
    return "SFT steps", [str(v) for v in sorted(cfg["sft_steps"])]


def tables(summary: dict) -> dict[str, tuple[list[str], list[list[str]]]]:
    """The report's tables: pass@1 and paired gains over SFT per cell value; on a size sweep the fitted exponents
    and the multipliers, on a checkpoint sweep what credit says of step 1; cost per cell. All with intervals."""
    fit, (label, values) = summary["fit"], _axis(summary)
    sizes = label == "|D_syn|"
    out = {}
    if fit:
        rows = [[m, *([_interval(f["b"], *f["b_ci"])] if sizes else []),
                 *(_interval(1 - f["error"][v], 1 - f["error_ci"][v][1], 1 - f["error_ci"][v][0], ".1%")
                   if v in f["error"] else "-" for v in values)] for m in summary["methods"] if (f := fit["methods"][m])]
        out["Greedy pass@1" + (" and the fitted exponent b (error = a * D^-b)" if sizes else "")
            + ", with 95 % bootstrap intervals"] = (
            ["method", *(["exponent b"] if sizes else []), *(f"{label} {v}" for v in values)], rows)
        rows = [[m, *(_interval(f["gain"][v] * 100, *(100 * x for x in f["gain_ci"][v]), "+.1f") if v in f["gain"]
                      else "-" for v in values)]
                for m in summary["methods"] if "gain" in (f := fit["methods"][m])]
        out["Paired gain over SFT in greedy pass@1 (points; same problems and seeds), 95 % bootstrap intervals"] = (
            ["method", *(f"{label} {v}" for v in values)], rows)
    if partial := summary.get("partial_pass"):
        keys = sorted(summary["runs"], key=lambda k: tuple(int(x) for x in k.split("/")))
        out["Methods missing from some cells (no positives or pairs there): greedy pass@1 where trained, "
            "left out of the fits and intervals"] = (
            ["method", *(f"{label}/seed {k}" for k in keys)],
            [[m, *(_fmt(per.get(k), ".1%") for k in keys)] for m, per in sorted(partial.items())])
    if fit and sizes:
        at = [str(s) for s in (summary["config"]["multiplier_at"] or values)]
        rows = [[m, *(_interval(f["multiplier"][s], *f["multiplier_ci"][s])
                      + (f" [{f['multiplier_finite'][s]:.0%} finite]" if f["multiplier_finite"][s] < 1 else "")
                      if s in f["multiplier"] else "-" for s in at)]
                for m in summary["methods"] if "multiplier" in (f := fit["methods"][m])]
        out["Data multipliers vs SFT: how many times more D_syn the SFT fit needs for the method's error"] = (
            ["method", *(f"at |D_syn|={s}" for s in at)], rows)
    if checkpoints := summary.get("checkpoints"):
        out["The critical step per checkpoint (cell = SFT steps/seed): credit on pi_sft's wrong rollouts"] = (
            ["cell", "final SFT loss", "mean Q_1", "estimates", "pits", "pits at step 1"],
            [[k, _fmt(c["losses"][-1] if c["losses"] else None, ".3f"), _fmt(c["q1"]), str(c["q1_n"]),
              str(c["pits"]), str(c["pit_at_1"])] for k, c in checkpoints.items()])
    if q := summary.get("q_values"):
        steps = sorted({r["step"] for rows in q["curves"].values() for r in rows})
        out[f"Q along the reference solutions (Figure 7; cell {q['run']}): mean share of M={q['m']} continuations "
            "that end correct, after the reference's first i steps (problems with that step)"] = (
            ["method", *(f"i={i}" for i in steps)],
            [[m, *(next((f"{r['q']:.2f} ({r['problems']})" for r in rows if r["step"] == i), "-") for i in steps)]
             for m, rows in q["curves"].items()])
    cost_rows = []
    for key, cell in summary["cells"].items():
        kinds: dict[str, float] = {}
        for stage, c in cell.items():
            if isinstance(c, dict):
                kind = re.sub(r"_.*", "", stage) if stage.startswith(("train_", "eval_")) else stage
                kinds[kind] = kinds.get(kind, 0.0) + c["seconds"]
        tokens = sum(c.get("tokens", 0) for c in cell.values() if isinstance(c, dict))
        cost_rows.append([key, f"{sum(kinds.values()) / 60:.1f}", *(f"{kinds.get(k, 0):.0f}" for k in
                                                                     ("policy", "rollouts", "credit", "train", "eval")),
                          f"{cell.get('continuations', 0):,}", f"{tokens:,}"])
    out["Cost per cell (value/seed): minutes, seconds per stage kind, credit continuations, tokens generated"] = (
        ["cell", "minutes", "policy s", "rollouts s", "credit s", "train s", "eval s", "continuations", "tokens"],
        cost_rows)
    return out


def render(summary: dict, figures: dict[str, bytes]) -> str:
    parts = [f"<h1>mathfactory experiment {html.escape(summary['name'])}</h1>",
             f"<p>{summary['problems']} held-out problems shared by every cell; cells "
             f"{html.escape(', '.join(summary['runs']))} ({_axis(summary)[0]}/seed); base model: "
             f"{html.escape(str(summary['base']))}.</p>"]
    if summary["failed"]:
        parts.append("<p><b>Incomplete cells:</b> " + html.escape("; ".join(f"{k}: {v}" for k, v in
                                                                               summary["failed"].items())) + "</p>")
    for name, png in figures.items():
        parts.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
                     f'{base64.b64encode(png).decode()}"><figcaption>{html.escape(name)}</figcaption></figure>')
    for title, (headers, rows) in tables(summary).items():
        parts.append(f"<h2>{html.escape(title)}</h2>{_table(headers, rows)}")
    if diag := summary.get("diagnostics"):
        parts.append(f"<h2>Credited rollouts of {html.escape(diag['run'])}, the pit marked</h2>")
        parts += [f"<pre>{html.escape(text)}</pre>" for text in diag["credit_examples"]]
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(summary['name'])}</title>" \
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"


def write(lake: Lake, summary: dict) -> str:
    """summary.json, the PNGs and report.html under `experiments/{name}/`; returns the report's URL."""
    folder = f"experiments/{summary['name']}"
    figures = {"scaling.png": scaling_png(summary)} if summary["fit"] and _axis(summary)[0] == "|D_syn|" else {}
    if summary.get("checkpoints"):
        figures["checkpoints.png"] = checkpoints_png(summary)
        if summary["fit"]:
            figures["from_checkpoints.png"] = from_checkpoints_png(summary)
    if summary.get("q_values"):
        figures["q_values.png"] = q_png(summary["q_values"])
    if (diag := summary.get("diagnostics")) and diag["nll_self"]:
        figures["nll.png"] = nll_png(diag)
    for name, png in figures.items():
        lake.write_file(f"{folder}/{name}", png)
    lake.write_file(f"{folder}/summary.json", json.dumps(summary, indent=2, sort_keys=True).encode())
    return lake.write_file(f"{folder}/report.html", render(summary, figures).encode())


def markdown(summary: dict, url: str) -> str:
    """The report's tables as markdown, pointing at the HTML report."""
    lines = [f"# experiment {summary['name']}", f"report: `{url}`", ""]
    for title, (headers, rows) in tables(summary).items():
        lines += [f"## {title}", "", *markdown_table(headers, rows), ""]
    return "\n".join(lines)


def publish(summary: dict, url: str) -> str:
    """The tables as a markdown artifact in the Prefect UI."""
    from prefect.artifacts import create_markdown_artifact

    key = re.sub(r"[^a-z0-9-]", "-", f"mathfactory-experiment-{summary['name']}".lower())
    create_markdown_artifact(key=key, markdown=markdown(summary, url), description=f"experiment {summary['name']}")
    return key
