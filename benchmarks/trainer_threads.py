"""Two trainings at once on one machine: each with a thread per core (torch's default; what two flow runs on a
plain `prefect worker start` get) vs each with its share of the cores (MATHFACTORY_JOBS=2; what `mathfactory worker
--jobs 2` gives), beside one training alone. Prints each variant's wall seconds per training and for both.

The trainings are pi_sft's own (the trainer process, tasks/trainer.py), from scratch on toy problems, with the
policy's architecture, narrower (--hidden) and with fewer steps (--steps).

    .venv/bin/python benchmarks/trainer_threads.py [--steps 40 --hidden 128]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mathfactory.tasks.domains import toy  # noqa: E402
from mathfactory.tasks.policy import PolicyConfig, sft_rows  # noqa: E402
from mathfactory.tasks.trainer import JOBS_ENV, TrainJob, launch, usable_cores, write_rows  # noqa: E402


def train(tmp: Path, name: str, rows: list[dict], cfg: PolicyConfig) -> tuple[float, int]:
    """One training in its own process (its own rows file: the job spec is written beside it); its wall seconds
    and the torch threads it ran with."""
    (tmp / name).mkdir()
    data = write_rows(tmp / name / "rows.jsonl", rows)
    t0 = time.perf_counter()
    metrics = launch(TrainJob("scratch", data, str(tmp / name / "model"), "toy", None,
                              args=cfg.model_dump(mode="json")))
    return time.perf_counter() - t0, metrics["threads"]


def variant(tmp: Path, name: str, rows: list[dict], cfg: PolicyConfig, jobs: int, at_once: int) -> dict:
    os.environ[JOBS_ENV] = str(jobs)  # read by launch() when it starts each trainer
    t0 = time.perf_counter()
    with ThreadPoolExecutor(at_once) as pool:
        done = list(pool.map(lambda i: train(tmp, f"{name}-{i}", rows, cfg), range(at_once)))
    return {"name": name, "each_s": [round(s, 1) for s, _ in done], "threads": done[0][1],
            "all_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=128, help="model width (the policy's default: 192)")
    args = parser.parse_args()
    os.environ.pop("OMP_NUM_THREADS", None)  # it would win over the share
    cfg = PolicyConfig(max_steps=args.steps, hidden_size=args.hidden)
    print(f"{usable_cores()} usable cores, load average {os.getloadavg()[0]:.1f}; pi_sft's architecture at width "
          f"{args.hidden}, {args.steps} steps of {cfg.batch_size}")
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        rows = sft_rows(toy.generate(512, "train", seed=0))
        alone = variant(Path(tmp), "one alone", rows, cfg, jobs=1, at_once=1)
        every = variant(Path(tmp), "two at once, a thread per core each", rows, cfg, jobs=1, at_once=2)
        share = variant(Path(tmp), "two at once, a share each", rows, cfg, jobs=2, at_once=2)
    for v in (alone, every, share):
        print(f"{v['name']:40s} threads {v['threads']}  each {v['each_s']} s  both done in {v['all_s']} s")
    print(f"two at once, per training vs alone: {max(every['each_s']) / alone['all_s']:.2f}x with a thread per "
          f"core, {max(share['each_s']) / alone['all_s']:.2f}x with a share; both done: "
          f"{every['all_s'] / share['all_s']:.2f}x longer with a thread per core than with a share "
          f"(one after the other: {2 * alone['all_s']:.1f} s)")


if __name__ == "__main__":
    main()
