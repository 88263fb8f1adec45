"""Problems -> pi_sft: a tiny Llama policy trained from scratch by SFT on prompt/completion rows."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mathfactory.tasks.core import format
from mathfactory.tasks.core.records import Problem
from mathfactory.tasks.stage import Stage
from mathfactory.tasks.storage import DataError, Lake, fetch_dir
from mathfactory.tasks.trainer import Spec, launch, missing_model_files, write_rows

STAGE = "policy"


class PolicyConfig(BaseModel):
    """The policy stage's knobs. Defaults are calibrated for the embedded default (benchmarks/calibrate_policy.py):
    about 4 minutes of SFT on 2 CPU cores, leaving the toy policy neither always right nor always wrong."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pretrained: str | None = Field(None, description="An existing model directory (path or fsspec URL) to use "
                                   "as the policy instead of training one; the fields below are then unused.")
    vocab_size: int = Field(512, ge=260, description="BPE vocabulary size (256 bytes + specials + merges).")
    hidden_size: int = Field(192, ge=8, description="Model width.")
    num_layers: int = Field(4, ge=1, description="Decoder layers.")
    num_heads: int = Field(4, ge=1, description="Attention heads; must divide hidden_size.")
    intermediate_size: int = Field(512, ge=8, description="MLP inner width.")
    max_length: int = Field(512, ge=16, description="Tokens per training row (prompt + completion); longer rows "
                                                    "are truncated and lose their answer.")
    max_steps: int = Field(600, ge=1, description="Optimizer steps.")
    batch_size: int = Field(16, ge=1, description="Rows per optimizer step.")
    learning_rate: float = Field(3e-3, gt=0, description="Peak learning rate (cosine decay after warm-up).")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of the steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    seed: int = Field(0, description="Seeds the initial weights and the data order: same config + problems, "
                                     "same model.")
    trl_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra trl.SFTConfig keyword arguments, passed through verbatim (they override the above).",
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> PolicyConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size})")
        return self


def sft_rows(problems: Iterable[Problem]) -> list[dict[str, str]]:
    """TRL prompt/completion rows in the one format every model sees (EOS is appended by the trainer)."""
    return [{"prompt": format.prompt(p.question), "completion": format.completion(p.solution)} for p in problems]


def train_scratch(cfg: PolicyConfig, rows: list[dict[str, str]], out_dir: Path) -> dict[str, Any]:
    """Train a tokenizer and a tiny Llama from scratch on prompt/completion rows; save both to `out_dir`; return
    metrics. The policy and the embedded default's synthesizer are both made this way."""
    from mathfactory.tasks.models import tiny  # torch/transformers load only when a model is trained

    if len(rows) < cfg.batch_size:
        raise ValueError(f"SFT from scratch needs at least one batch of {cfg.batch_size} rows, got {len(rows)} "
                         "training rows")
    tokenizer = tiny.train_tokenizer((r["prompt"] + r["completion"] for r in rows), cfg.vocab_size)
    model = tiny.init_model(tokenizer, cfg)
    metrics = tiny.sft(model, tokenizer, rows, cfg, Path(out_dir))
    return {**metrics, "vocab": len(tokenizer)}


def train_policy(cfg: PolicyConfig, problems: Iterable[Problem], out_dir: Path) -> dict[str, Any]:
    """pi_sft: SFT from scratch on the problems' reference solutions."""
    return train_scratch(cfg, sft_rows(problems), out_dir)


@task(name="policy", cache_policy=NO_CACHE, retries=1)
def fit_policy(cfg: PolicyConfig, lake: str, run_id: str) -> str:
    """Stage `policy`: the run's train problems -> pi_sft, a model directory in the lake."""
    st = Stage(lake, run_id, STAGE, None, config=cfg)
    if st.done:
        return st.uri
    if cfg.pretrained:  # referenced, not copied: a 7B checkpoint per nightly run would be waste
        check_model_dir(fetch_dir(cfg.pretrained), "policy.pretrained", cfg.pretrained)  # here, not in sampling
        return st.commit(pretrained=cfg.pretrained)
    problems = [p for p in st.lake.read(run_id, "problems", Problem) if p.split == "train"]
    with tempfile.TemporaryDirectory(prefix="mathfactory-policy-") as tmp:
        # The one training entry point, in its own process like every trainer (tasks/trainer.py).
        data = write_rows(Path(tmp) / "problems.jsonl", sft_rows(problems))
        spec = Spec("scratch", data, str(Path(tmp) / "model"), st.lake.uri(run_id, "problems"),
                    args=cfg.model_dump(mode="json"))
        metrics = launch(spec)
        st.lake.put_dir(spec.out_dir, run_id, STAGE)
    return st.commit(**metrics)


def check_model_dir(path: Path, field: str, url: str) -> None:
    """A Hugging Face model directory has its config and a tokenizer; say which is missing, not a loader's trace."""
    if missing := missing_model_files(path, ("config.json", "tokenizer")):  # weights: the loader says
        below = sorted(d.name for d in path.iterdir() if (d / "config.json").is_file()) if path.is_dir() else []
        hint = f"; a model is one level down, in: {', '.join(below)}" if below else ""
        raise DataError(f"{field}: {url} is not a model directory (missing: {'; '.join(missing)}){hint}")


def _pretrained(lk: Lake, run_id: str) -> str | None:
    return (lk.marker(run_id, STAGE) or {}).get("metrics", {}).get("pretrained")


def policy_dir(lake: str, run_id: str) -> Path:
    """A local directory holding the run's policy: its own trained model, or the pretrained one it names."""
    lk = Lake(lake)
    pretrained = _pretrained(lk, run_id)
    return fetch_dir(pretrained) if pretrained else lk.local_dir(run_id, STAGE)


def policy_ref(lake: str, run_id: str) -> str:
    """The run's policy by name, independent of where the lake is (so the same run has the same rollout ids in
    any lake): the pretrained model's URL, or `runs/{run_id}/policy` for a model the run trained."""
    return _pretrained(Lake(lake), run_id) or f"runs/{run_id}/{STAGE}"
