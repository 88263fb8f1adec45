"""Problems -> pi_sft: a tiny Llama policy trained from scratch by SFT on prompt/completion rows."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import Field

from mathfactory.tasks.core import formatting
from mathfactory.tasks.core.records import Problem
from mathfactory.tasks.models.config import TinyConfig
from mathfactory.tasks.problems import PROBLEMS
from mathfactory.tasks.scratch import scratch
from mathfactory.tasks.stage import Run, StageSpec
from mathfactory.tasks.storage import fetch_dir
from mathfactory.tasks.trainer import TrainJob, check_model_dir, launch, write_rows


class PolicyConfig(TinyConfig):
    """The policy stage's knobs: an existing model, or the tiny model to train from scratch (tasks/models/config.py;
    its defaults are calibrated for the embedded default: about 4 minutes of SFT on 2 CPU cores, leaving the toy
    policy neither always right nor always wrong)."""

    pretrained: str | None = Field(None, description="An existing model directory (path or fsspec URL) to use "
                                   "as the policy instead of training one; the tiny model's fields are then unused.")
    base: str | None = Field(None, description="A model (directory, fsspec URL or `runs/{run_id}/policy` in this "
                             "lake) that pi_sft is fine-tuned "
                             "from by SFT on D_syn, as the paper fine-tunes a pretrained base; its tokenizer and "
                             "architecture are kept (the size fields are then unused). None: from scratch.")


def sft_rows(problems: Iterable[Problem]) -> list[dict[str, str]]:
    """TRL prompt/completion rows in the one format every model sees (EOS is appended by the trainer)."""
    return [{"prompt": formatting.prompt(p.question), "completion": formatting.completion(p.solution)} for p in problems]


def train_scratch(cfg: TinyConfig, rows: list[dict[str, str]], out_dir: Path, base: str | None = None
                  ) -> dict[str, Any]:
    """Train a tokenizer and a tiny Llama from scratch (or continue the model in the local directory `base`) on
    prompt/completion rows; save both to `out_dir`; return metrics. The policy and the embedded default's
    synthesizer are both made this way."""
    from mathfactory.tasks.models import tiny  # torch/transformers load only when a model is trained

    if len(rows) < cfg.batch_size:
        raise ValueError(f"SFT {'from ' + base if base else 'from scratch'} needs at least one batch of "
                         f"{cfg.batch_size} rows, got {len(rows)} training rows")
    if base:
        model, tokenizer = tiny.load(base)
    else:
        tokenizer = tiny.train_tokenizer((r["prompt"] + r["completion"] for r in rows), cfg.vocab_size)
        model = tiny.init_model(tokenizer, cfg)
    metrics = tiny.sft(model, tokenizer, rows, cfg, Path(out_dir))
    return {**metrics, "vocab": len(tokenizer)}


def train_policy(cfg: PolicyConfig, problems: Iterable[Problem], out_dir: Path, base: str | None = None
                 ) -> dict[str, Any]:
    """pi_sft: SFT on the problems' reference solutions, from scratch or from the local model `base`."""
    return train_scratch(cfg, sft_rows(problems), out_dir, base)


def policy(cfg: PolicyConfig, run: Run, out_dir: Path) -> dict[str, Any]:
    """Stage `policy`: the run's train problems -> pi_sft, a model directory; or the pretrained model it names."""
    if cfg.pretrained:  # referenced, not copied: a 7B checkpoint per nightly run would be waste
        # Checked here, not in sampling; the weights are the loader's to find (a sharded checkpoint, vLLM's own).
        check_model_dir(fetch_dir(cfg.pretrained), "policy.pretrained", cfg.pretrained, ("config.json", "tokenizer"))
        return {"pretrained": cfg.pretrained}
    problems = [p for p in run.read(PROBLEMS) if p.split == "train"]
    with scratch("policy") as tmp:
        # The one training entry point, in its own process like every trainer (tasks/trainer.py).
        data = write_rows(Path(tmp) / "problems.jsonl", sft_rows(problems))
        base = str(run.store.model(cfg.base)) if cfg.base else None
        return {**launch(TrainJob("scratch", data, str(out_dir), run.uri(PROBLEMS.name), base,
                                  args=cfg.model_dump(mode="json"))), **({"base": cfg.base} if cfg.base else {})}


# A referenced model (policy.pretrained) is only checked: no GPU, so it never leaves the flow's own run.
POLICY = StageSpec("policy", None, PolicyConfig, policy, reads=lambda cfg: () if cfg.pretrained else (PROBLEMS.name,),
                   sources=lambda cfg: [m for m in (cfg.pretrained or cfg.base,) if m], needs="gpu",
                   gpus=lambda cfg: 0 if cfg.pretrained else 1)
SPECS = {POLICY.name: POLICY}


def _pretrained(run: Run) -> str | None:
    return run.metrics(POLICY.name).get("pretrained")


def policy_dir(run: Run) -> Path:
    """A local directory holding the run's policy: its own trained model, or the pretrained one it names."""
    pretrained = _pretrained(run)
    return fetch_dir(pretrained) if pretrained else run.store.local_dir(run.run_id, POLICY.name)


def policy_ref(run: Run) -> str:
    """The run's policy by name, independent of where the lake is (so the same run has the same rollout ids in
    any lake): the pretrained model's URL, or `runs/{run_id}/policy` for a model the run trained."""
    return _pretrained(run) or f"runs/{run.run_id}/{POLICY.name}"
