"""Stages `train_{method}`: a training set of the run -> a model, trained by TRL in a process of its own.

The methods the paper compares, each one TRL trainer on one dataset of the `pairs` stage:
  rft       SFT on self-generated positives (rft)          af_rft    advantage-filtered positives (rft_advantage)
  dpo       DPO on naive correct x incorrect pairs           edit_dpo  DPO on correct x most distant incorrect
  step_dpo  per-step DPO (dpo_step_cut, dpo_step_prefix or both)
pi_sft (method `sft`, SFT on D_syn) is the `policy` stage; it runs through the same entry point (tasks/trainer.py).
DPO-family methods start from pi_sft, which is also their reference.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from mathfactory.tasks.pairs import DATASETS
from mathfactory.tasks.policy import policy_dir, policy_ref
from mathfactory.tasks.stage import Stage
from mathfactory.tasks.storage import fetch_dir
from mathfactory.tasks.trainer import Spec, check_size, launch, write_rows

STAGE_PREFIX = "train_"
RECIPES = Path(__file__).parent / "recipes"
Method = Literal["rft", "af_rft", "dpo", "step_dpo", "edit_dpo"]
TRAINED = get_args(Method)
TRAINER = {"rft": "sft", "af_rft": "sft", "dpo": "dpo", "step_dpo": "dpo", "edit_dpo": "dpo"}
STEP_PAIRS = {"step_cut": ("dpo_step_cut",), "step_prefix": ("dpo_step_prefix",),
              "both": ("dpo_step_cut", "dpo_step_prefix")}


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    methods: list[Method] = Field(["rft", "af_rft", "dpo", "step_dpo"],
                                  description="Models to train after pi_sft, each on its own dataset; each is "
                                  "evaluated beside pi_sft.")
    step_dpo_pairs: Literal["step_cut", "step_prefix", "both"] = Field(
        "step_cut", description="Per-step pairs: the incorrect solution cut after its first pit (Setlur et al.), "
        "the prefix before the pit with a good vs the pit step (Self-Explore), or both.")
    base: str | None = Field(None, description="The model RFT-family methods start from, as in the paper (a base "
                             "model directory or URL). None: pi_sft; on the embedded default the base is a random "
                             "init that cannot learn from a few dozen rows.")
    trl_args: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per method, trl.SFTConfig / DPOConfig keywords that override its "
        "recipe (tasks/recipes/{sft,dpo}.yaml), passed through verbatim.")
    num_processes: int = Field(1, ge=1, description="Processes per training run: more than 1 runs the trainer "
                               "under `accelerate launch`, one per GPU.")


def stage_name(method: str) -> str:
    check_method(method)
    return f"{STAGE_PREFIX}{method}"


def check_method(method: str) -> None:
    if method not in TRAINED:
        raise ValueError(f"unknown training method {method!r}; valid: {', '.join(TRAINED)} "
                         "(sft is the policy stage)")


def datasets_for(cfg: TrainConfig, method: str) -> tuple[str, ...]:
    check_method(method)
    return {"rft": ("rft",), "af_rft": ("rft_advantage",), "dpo": ("dpo_outcome",), "edit_dpo": ("dpo_edit",),
            "step_dpo": STEP_PAIRS[cfg.step_dpo_pairs]}[method]


@cache
def recipe(trainer: str) -> dict[str, Any]:
    """The TRL arguments of a trainer's recipe file."""
    return yaml.safe_load((RECIPES / f"{trainer}.yaml").read_text()) or {}


def trl_args(cfg: TrainConfig, method: str, seed: int) -> dict[str, Any]:
    """Recipe, then the run's seed, then the config's overrides for `method`."""
    return {**recipe(TRAINER[method]), "seed": seed, "data_seed": seed, **cfg.trl_args.get(method, {})}


@task(name="train", task_run_name="train-{method}", cache_policy=NO_CACHE)
def train_model(cfg: TrainConfig, method: str, lake: str, run_id: str, seed: int) -> str:
    """Stage `train_{method}`: the method's dataset(s) -> a model directory in the lake, with its metrics."""
    name, args = stage_name(method), trl_args(cfg, method, seed)
    st = Stage(lake, run_id, name, None, config={"method": method, "args": args, "base": cfg.base,
                                                 "pairs": datasets_for(cfg, method)})
    if st.done:
        return st.uri
    names = datasets_for(cfg, method)
    rows = [asdict(r) for ds in names for r in st.lake.read(run_id, ds, DATASETS[ds])]
    uris = [st.lake.uri(run_id, ds) for ds in names]
    # Checked here too, so a set that is too small fails before a process starts (TRL's default batch is 8).
    check_size(" + ".join(uris), len(rows), args.get("per_device_train_batch_size", 8)
               * args.get("gradient_accumulation_steps", 1) * cfg.num_processes)
    from_base = TRAINER[method] == "sft" and cfg.base
    init = fetch_dir(cfg.base) if from_base else policy_dir(lake, run_id)
    with tempfile.TemporaryDirectory(prefix=f"mathfactory-{name}-") as tmp:
        data = write_rows(Path(tmp) / "rows.jsonl", rows)
        spec = Spec(TRAINER[method], data, str(Path(tmp) / "model"), " + ".join(uris), str(init), args)
        metrics = launch(spec, cfg.num_processes)
        st.lake.put_dir(spec.out_dir, run_id, name)
    return st.commit(method=method, datasets=uris, init=cfg.base if from_base else policy_ref(lake, run_id),
                     **metrics)
