"""The tiny from-scratch model's architecture and SFT settings, its own config: composed by the policy's and the
synthesizer's configs. Kept apart from tiny.py, which imports torch, so configs load without it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TinyConfig(BaseModel):
    """A tiny Llama trained from scratch, and its SFT: the policy's (defaults calibrated by
    benchmarks/calibrate_policy.py) and, resized, the embedded default's synthesizer's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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
    def _heads_divide_width(self) -> TinyConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size})")
        return self
