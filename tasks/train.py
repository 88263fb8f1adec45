"""Stages `train_{method}`: a method's training sets -> a model, trained by TRL in a process of its own.

The methods (trainer, sets, order) are declared once in tasks/core/methods.py. pi_sft (method `sft`) is the
`policy` stage; it runs through the same entry point (tasks/trainer.py). DPO-family methods start from pi_sft,
which is also their reference; RFT-family ones from pi_sft or `train.base`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mathfactory.tasks.core import methods
from mathfactory.tasks.core.methods import TRAINED
from mathfactory.tasks.core.skips import Skip, too_few_rows
from mathfactory.tasks.pairs import SETS
from mathfactory.tasks.policy import POLICY, policy_dir, policy_ref
from mathfactory.tasks.scratch import scratch
from mathfactory.tasks.stage import Run, StageSpec
from mathfactory.tasks.trainer import TrainJob, check_size, launch, recipe, write_rows

STAGE_PREFIX = "train_"
Trained = Literal[TRAINED]  # type: ignore[valid-type]


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    methods: list[Trained] = Field(["rft", "af_rft", "dpo", "step_dpo"],
                                  description="Models to train after pi_sft, each on its own dataset; each is "
                                  "evaluated beside pi_sft.")
    base: str | None = Field(None, description="The model RFT-family methods start from, as in the paper (a base "
                             "model directory or URL), training on D_syn plus their own set. None: pi_sft, on "
                             "their set alone; on the embedded default the base is a random init that cannot learn "
                             "from a few dozen rows.")
    trl_args: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per method, trl.SFTConfig / DPOConfig keywords that override its "
        "recipe (tasks/recipes/{sft,dpo}.yaml), passed through verbatim.")
    num_processes: int = Field(1, ge=1, description="Processes per training run: more than 1 runs the trainer "
                               "under `accelerate launch`, one per GPU.")


def stage_name(method: str) -> str:
    if method not in TRAINED:
        raise ValueError(f"unknown training method {method!r}; valid: {', '.join(TRAINED)} "
                         "(sft is the policy stage)")
    return f"{STAGE_PREFIX}{method}"


def trl_args(cfg: TrainConfig, method: str, seed: int) -> dict[str, Any]:
    """Recipe, then the run's seed, then the config's overrides for `method`."""
    return {**recipe(methods.method(method).trainer), "seed": seed, "data_seed": seed,
            **cfg.trl_args.get(method, {})}


def from_base(cfg: TrainConfig, method: str) -> bool:
    return methods.method(method).trainer == "sft" and cfg.base is not None


def train_sets(cfg: TrainConfig, method: str) -> tuple[str, ...]:
    """The training sets `method` reads. From the base, RFT is SFT on D_syn plus the positives (the paper's
    D_syn u D+), not the positives alone."""
    return ("sft",) * from_base(cfg, method) + methods.datasets_for(method)


def min_rows(cfg: TrainConfig, method: str) -> int:
    """One optimizer step's rows: the batch per device times accumulation times processes (TRL's default batch
    is 8)."""
    args = trl_args(cfg, method, 0)
    return args.get("per_device_train_batch_size", 8) * args.get("gradient_accumulation_steps", 1) * cfg.num_processes


def _ready(method: str):
    def too_small(cfg: TrainConfig, run: Run) -> Skip | None:
        """Skipped, not failed, when the sets (counted from their markers) hold less than one batch."""
        names = train_sets(cfg, method)
        rows = sum(run.marker(ds)["rows"] for ds in names)
        return too_few_rows(" + ".join(names), rows, min_rows(cfg, method))

    return too_small


def _trainer(method: str):
    def train(cfg: TrainConfig, run: Run, out_dir: Path) -> dict[str, Any]:
        """The method's dataset(s) -> a model directory, with its metrics."""
        names, args = train_sets(cfg, method), trl_args(cfg, method, run.seed)
        rows = [asdict(r) for ds in names for r in run.read(SETS[ds])]
        uris = [run.uri(ds) for ds in names]
        # Checked here too, so a set that is too small fails before a process starts.
        check_size(" + ".join(uris), len(rows), min_rows(cfg, method))
        init = run.store.model(cfg.base) if from_base(cfg, method) else policy_dir(run)
        with scratch(method) as tmp:
            job = TrainJob(methods.method(method).trainer, write_rows(Path(tmp) / "rows.jsonl", rows), str(out_dir),
                           " + ".join(uris), str(init), args)
            metrics = launch(job, cfg.num_processes)
        return {"method": method, "datasets": uris, "init": cfg.base if from_base(cfg, method) else policy_ref(run),
                **metrics}

    return train


def _identity(method: str):
    return lambda cfg: {"method": method, "args": trl_args(cfg, method, 0), "base": cfg.base,
                        "pairs": methods.datasets_for(method)}


def _reads(method: str):
    return lambda cfg: (POLICY.name, *train_sets(cfg, method))


SPECS = {stage_name(m): StageSpec(stage_name(m), None, TrainConfig, _trainer(m), identity=_identity(m),
                                  reads=_reads(m), sources=lambda cfg, m=m: [cfg.base] * from_base(cfg, m),
                                  skip=_ready(m), retries=0, needs="gpu", gpus=lambda cfg: cfg.num_processes)
         for m in TRAINED}
