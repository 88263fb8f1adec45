"""Does per-step DPO beat SFT when its pairs come from near-misses? The toy sweep's follow-up (issue 15).

At |D_syn| = 1,024 the toy sweep's per-step DPO was within noise of SFT. Its credit said why: more than half the
wrong rollouts were of questions pi_sft never solved in 4 samples, where Q is 0 from step 1, so the "pit" is step 1
by construction; and M = 4 misplaced more pits (Q rising above 0 after one). This runs the sweep's largest cell
(read from the finished sweep's summary in the lake) beside the same cell with the credit the method assumes:
only questions the policy sometimes solves (`credit.unsolved=false`), M = 8. Both cells train pi_sft with the same seed from the same base,
so their SFT rows should agree; every model is scored on the same 1,002 held-out problems, and each per-step DPO
model's gain over SFT is paired on them, with a bootstrap interval over problems (and seeds).

    .venv/bin/python benchmarks/experiments/nearmiss.py --lake ./lake [--seeds 0 1]   (after the sweep; 14-15 min/seed)
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from prefect import flow  # noqa: E402

from mathfactory.flows.experiment import ExperimentConfig, cell_config, collect  # noqa: E402
from mathfactory.flows.pipeline import pipeline  # noqa: E402
from mathfactory.tasks.core.records import StepCredit  # noqa: E402
from mathfactory.tasks.storage import Lake  # noqa: E402

NEAR_MISS = ["credit.unsolved=false", "credit.m=8", "credit.positives=false",
             "train.methods=[step_dpo, step_dpo_prefix, step_dpo_max_drop]"]
METHODS = ("step_dpo", "step_dpo_prefix", "step_dpo_max_drop")


def paired_gain(sft: np.ndarray, method: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Pass@1 points won over SFT and a 95 % percentile interval: arrays are (seeds, problems) of correctness,
    problems and seeds resampled together for both models."""
    rng = np.random.default_rng(seed)
    diff = method.astype(float) - sft.astype(float)
    k, n = diff.shape
    reps = [diff[rng.integers(0, k, k)][:, rng.integers(0, n, n)].mean() for _ in range(n_boot)]
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return 100 * diff.mean(), 100 * lo, 100 * hi


@flow(name="nearmiss")
def nearmiss(lake: str, experiment: str, seeds: list[int], size: int) -> None:
    """The near-miss cells beside the finished sweep's cells, read by run id from the sweep's summary (so a config
    field added since the sweep ran, which changes every run id, does not redo it)."""
    store = Lake(lake)
    raw = store.read_file(f"experiments/{experiment}/summary.json")
    if raw is None:
        raise SystemExit(f"no experiments/{experiment}/summary.json in {lake}: run "
                         f"`mathfactory experiment --preset {experiment} --lake {lake}` first")
    summary = json.loads(raw)
    cfg = ExperimentConfig.model_validate({**summary["config"], "lake": lake})
    variant = cfg.model_copy(update={"overrides": [*cfg.overrides, *NEAR_MISS]})
    cells = {}
    for seed in seeds:
        if f"{size}/{seed}" not in summary["runs"]:
            raise SystemExit(f"the sweep has no cell {size}/{seed}: its cells are {sorted(summary['runs'])}")
        cells[("sweep", seed)] = summary["runs"][f"{size}/{seed}"]
        run = cell_config(variant, size, seed, summary["base"])
        pipeline(run)
        cells[("near-miss", seed)] = run.run_id()
    results, cost = collect(store, cells)
    print(f"\n|D_syn| = {size}, seeds {seeds}, {cost['problems']} held-out problems, greedy pass@1")
    print(f"{'cell':<10} {'run':<20} {'wrong':>6} {'unsolved':>8} {'pits':>5} {'at step 1':>9} {'final':>6} "
          f"{'contin.':>8} {'minutes':>8}")
    for (name, seed), run_id in cells.items():
        m = store.marker(run_id, "credit")["metrics"]
        at1 = sum(r.is_pit and r.step_index == 1 for r in store.read(run_id, "credit", StepCredit))
        minutes = sum(s["seconds"] for s in cost["cells"][f"{name}/{seed}"].values() if isinstance(s, dict)) / 60
        print(f"{name:<10} {run_id:<20} {m['wrong']:>6} {m['unsolved']:>8} {m['pits']:>5} {at1:>9} "
              f"{m['pit_final']:>6} {m['continuations']:>8} {minutes:>8.1f}")
    sft = np.stack([results["sft"][("sweep", s)] for s in seeds])
    print(f"\nsft {100 * sft.mean():.1f} %; the near-miss cell's own pi_sft "
          f"{100 * np.stack([results['sft'][('near-miss', s)] for s in seeds]).mean():.1f} % (same seed, same base)")
    print(f"{'method':<20} {'cell':<10} {'pass@1':>7} {'gain over sft (95 %)':>26}")
    for method in METHODS:
        for name in ("sweep", "near-miss"):
            if all((name, s) in results.get(method, {}) for s in seeds):
                x = np.stack([results[method][(name, s)] for s in seeds])
                g, lo, hi = paired_gain(sft, x)
                print(f"{method:<20} {name:<10} {100 * x.mean():>6.1f}% {g:>+8.1f} ({lo:+.1f} to {hi:+.1f})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lake", default="./lake")
    ap.add_argument("--experiment", default="toy-sweep", help="the finished sweep to compare with")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--size", type=int, default=1024)
    a = ap.parse_args()
    nearmiss(a.lake, a.experiment, a.seeds, a.size)
