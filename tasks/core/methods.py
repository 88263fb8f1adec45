"""The training methods the paper compares, declared once: which trainer, on which training sets, in what order.

pi_sft (`sft`) is the policy stage itself (SFT on D_syn); every other method is one TRL trainer on one or more
sets of the pairs stage, starting from pi_sft (DPO: pi_sft is also the reference) or from `train.base`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    trainer: str | None  # sft | dpo; None: pi_sft, the policy stage
    datasets: tuple[str, ...]  # the sets it trains on
    about: str


# In the comparison's order: pi_sft, what fine-tuning on its own samples gives, then the preference methods.
METHODS = (
    Method("sft", None, ("sft",), "SFT on D_syn (pi_sft)"),
    Method("rft", "sft", ("rft",), "SFT on self-generated positives"),
    Method("af_rft", "sft", ("rft_advantage",), "advantage-filtered positives"),
    Method("dpo", "dpo", ("dpo_outcome",), "DPO on naive correct x incorrect pairs (the control)"),
    Method("edit_dpo", "dpo", ("dpo_edit",), "DPO on correct x most distant incorrect"),
    # Per-step DPO in its two pair forms: the negative cut after its first pit (Setlur et al.), and the prefix
    # before the pit continued well vs the pit step (Self-Explore).
    Method("step_dpo", "dpo", ("dpo_step_cut",), "per-step DPO on credited negatives, cut at the pit"),
    Method("step_dpo_prefix", "dpo", ("dpo_step_prefix",), "per-step DPO, prefix pairs at the pit (Self-Explore)"),
    # The other pit rule on the same credit: the step that lost the most Q (linear credit only).
    Method("step_dpo_max_drop", "dpo", ("dpo_step_cut_max_drop",), "per-step DPO, cut at the max-drop pit"),
)
BY_NAME = {m.name: m for m in METHODS}
TRAINED = tuple(m.name for m in METHODS if m.trainer)


def method(name: str) -> Method:
    if name not in BY_NAME:
        raise ValueError(f"unknown method {name!r}; methods: {', '.join(BY_NAME)} (sft is the policy stage)")
    return BY_NAME[name]


def datasets_for(name: str) -> tuple[str, ...]:
    """The sets a method trains on."""
    return method(name).datasets


def display_order(names: set[str]) -> list[str]:
    """Methods in the comparison's order, unknown ones last by name."""
    return [m.name for m in METHODS if m.name in names] + sorted(names - set(BY_NAME))
