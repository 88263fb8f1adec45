"""Stages `synthesizer_round1`, `synthesizer`: the teacher's outputs (kd_round1, kd_round2) -> a small model that
writes problems the way the teacher does (JiuZhang3.0's synthesizer), trained by TRL in a process of its own.

Round 1 trains from `base` (SFT recipe) or, on the embedded default, a tiny model from scratch; gradient influence
is measured with it. Round 2 continues it on the distillation of the selected seed texts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mathfactory.tasks.core.records import TeacherCall
from mathfactory.tasks.distill import SPECS as DISTILLED
from mathfactory.tasks.distill import stage_name as kd_stage
from mathfactory.tasks.models.config import TinyConfig
from mathfactory.tasks.scratch import scratch
from mathfactory.tasks.stage import Run, StageSpec
from mathfactory.tasks.storage import fetch_dir
from mathfactory.tasks.trainer import TrainJob, check_size, launch, recipe, write_rows

STAGES = {1: "synthesizer_round1", 2: "synthesizer"}


class TinySynthesizer(TinyConfig):
    """The embedded default's synthesizer: pi_sft's architecture, sized for teacher outputs (defaults declared
    here, so overriding one field keeps the others)."""

    vocab_size: int = Field(512, ge=260, description="BPE vocabulary size (256 bytes + specials + merges).")
    max_length: int = Field(640, ge=16, description="Tokens per row (prompt + teacher output); longer rows are "
                                                    "truncated and lose their final answer.")
    max_steps: int = Field(400, ge=1, description="Optimizer steps of round 1.")


class SynthesizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str | None = Field(None, description="A pretrained model directory or URL to fine-tune (e.g. a 7B base, "
                             "with the SFT recipe); None: a tiny model from scratch (`tiny`).")
    tiny: TinySynthesizer = Field(default_factory=TinySynthesizer, description="The from-scratch model and its "
                                  "SFT (round 1).")
    trl_args: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"round2": {"num_train_epochs": 1, "max_length": 640}},
        description="Per round ('round1' with `base`, 'round2'), trl.SFTConfig keywords over the SFT recipe.")


def sft_rows(calls: list[TeacherCall]) -> list[dict[str, str]]:
    """The teacher's usable outputs as TRL prompt/completion rows (failed requests have none)."""
    return [{"prompt": c.prompt, "completion": c.completion} for c in calls if c.ok]


def synthesizer_dir(run: Run, round: int = 2) -> Path:
    return run.store.local_dir(run.run_id, STAGES[round])


def _round(round: int):
    def train(cfg: SynthesizerConfig, run: Run, out_dir: Path) -> dict[str, Any]:
        kd = DISTILLED[kd_stage(round)]
        rows, dataset = sft_rows(list(run.read(kd))), run.uri(kd.name)
        args = {**recipe("sft"), "seed": run.seed, "data_seed": run.seed, **cfg.trl_args.get(f"round{round}", {})}
        if round == 2:
            trainer, init = "sft", synthesizer_dir(run, 1)
        elif cfg.base:
            trainer, init = "sft", fetch_dir(cfg.base)
        else:
            trainer, init, args = "scratch", None, cfg.tiny.model_dump(mode="json")
        check_size(dataset, len(rows), args.get("batch_size") or args.get("per_device_train_batch_size", 8))
        with scratch(STAGES[round]) as tmp:
            job = TrainJob(trainer, write_rows(Path(tmp) / "rows.jsonl", rows), str(out_dir), dataset,
                           str(init) if init else None, args)
            metrics = launch(job)
        return {"round": round, "dataset": dataset, "init": str(init) if init else None, **metrics}

    return train


SPECS = {STAGES[r]: StageSpec(STAGES[r], None, SynthesizerConfig, _round(r),
                              reads=(kd_stage(r),) + (("synthesizer_round1",) if r == 2 else ()), retries=0,
                              needs="gpu")
         for r in (1, 2)}
