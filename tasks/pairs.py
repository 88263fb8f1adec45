"""Stage `pairs`: problems, verified rollouts and step credit -> every training set the paper compares.

Each set is its own dataset in the lake, with its own marker (the builders are tasks/core/pairs.py):
  sft              reference solutions (D_syn)            rft            deduplicated self-generated positives
  rft_advantage    rft minus its low-advantage half        stepwise       TRL stepwise-supervision rows (PRM)
  dpo_outcome      random correct x incorrect (control)    dpo_edit       correct x most distant incorrect
  dpo_step_cut     correct x incorrect cut after its pit   dpo_step_prefix  prefix before the pit: good vs pit step
  dpo_step_cut_max_drop  as dpo_step_cut, the pit by the other rule (max_drop, linear credit only)

Every set built from the policy's samples covers the same problems: those the credit stage covered (its marker's
`problems_limit`), so methods are compared on data from one problem set. `sft` is D_syn whole, what pi_sft
learned from. Each marker counts the distinct problems its set covers and, for pairs, where chosen sides came from.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mathfactory.tasks.core import credit as mc
from mathfactory.tasks.core import pairs as build
from mathfactory.tasks.core.records import (
    PreferencePair,
    Problem,
    Rollout,
    SFTExample,
    StepCredit,
    StepwiseExample,
    Verdict,
)
from mathfactory.tasks.core.steps import split_steps, style_for
from mathfactory.tasks.credit import CREDIT, covered
from mathfactory.tasks.problems import PROBLEMS
from mathfactory.tasks.sample import ROLLOUTS
from mathfactory.tasks.stage import Meter, Run, StageSpec
from mathfactory.tasks.verify import VERDICTS

DATASETS = {"sft": SFTExample, "rft": SFTExample, "rft_advantage": SFTExample, "stepwise": StepwiseExample,
            "dpo_outcome": PreferencePair, "dpo_edit": PreferencePair, "dpo_step_cut": PreferencePair,
            "dpo_step_prefix": PreferencePair, "dpo_step_cut_max_drop": PreferencePair}


class PairsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rft_k: int = Field(4, ge=1, description="RFT: at most this many distinct correct solutions per problem.")
    dedup: Literal["equations", "edit_distance"] = Field(
        "equations", description="RFT duplicates: same sequence of equations, or normalized edit distance below "
        "`dedup_threshold`.")
    dedup_threshold: float = Field(0.1, ge=0, le=1, description="edit_distance dedup: max distance of a duplicate.")
    outcome_n: int = Field(4, ge=1, description="Naive DPO: at most this many correct x incorrect pairs per problem.")
    edit_unit: Literal["char", "step"] = Field("char", description="Edit-distance pairs: distance over characters "
                                               "or over steps.")
    chosen: Literal["policy", "reference", "both"] = Field(
        "reference", description="Where every pair's chosen side comes from: the policy's own correct rollouts, the "
        "problem's reference solution (D_syn, the capable model's positive, as Setlur et al.'s per-step DPO pairs "
        "it with the learner's negatives; a never-solved problem still yields pairs), or both. dpo_step_prefix "
        "always prefers a continuation verified from the prefix; this decides only the empty prefix.")


def build_all(cfg: PairsConfig, style: str, problems: list[Problem], rollouts: list[Rollout],
              verdicts: list[Verdict], credits: list[StepCredit], seed: int) -> dict[str, build.Built]:
    """Every dataset from the run's records (pure)."""
    rft = build.rft(rollouts, verdicts, cfg.rft_k, cfg.dedup, cfg.dedup_threshold, seed)
    side = {"chosen": cfg.chosen, "refs": build.references(problems)}
    return {
        "sft": build.sft_examples(problems),
        "rft": rft,
        "rft_advantage": build.rft_advantage(rft.rows, credits),
        "stepwise": stepwise(style, problems, rollouts, credits),
        "dpo_outcome": build.outcome_pairs(rollouts, verdicts, cfg.outcome_n, seed, **side),
        "dpo_edit": build.edit_distance_pairs(rollouts, verdicts, cfg.edit_unit, **side),
        "dpo_step_cut": build.step_cut(rollouts, verdicts, credits, seed, **side),
        "dpo_step_prefix": build.step_prefix(rollouts, verdicts, credits, **side),
        "dpo_step_cut_max_drop": max_drop_cut(rollouts, verdicts, credits, seed, side),
    }


def max_drop_cut(rollouts: list[Rollout], verdicts: list[Verdict], credits: list[StepCredit], seed: int,
                 side: dict) -> build.Built[PreferencePair]:
    """step_cut pairs with the pit re-chosen by max_drop (the advantage view), whatever rule the credit stage used,
    so one sweep compares both pit rules on the same Q-values. Needs linear credit; other credit yields no pairs,
    each wrong rollout's credit counted as `needs_linear_credit`."""
    if any(c.strategy != "linear" for c in credits):
        return build.Built([], Counter(needs_linear_credit=len({c.rollout_id for c in credits})))
    return build.step_cut(rollouts, verdicts, mc.repit(credits, "max_drop"), seed, **side)


def tally_set(rows: Iterable[SFTExample | PreferencePair | StepwiseExample]) -> dict:
    """A set's figures from its rows: how many, the distinct problems they cover, where chosen sides came from."""
    problems, sources, n = set(), Counter(), 0
    for r in rows:
        n += 1
        problems.add(r.problem_id)
        if isinstance(r, PreferencePair):
            sources[r.chosen_source] += 1
    return {"rows": n, "problems": len(problems), **({"chosen_sources": dict(sources)} if sources else {})}


def stepwise(style: str, problems: list[Problem], rollouts: list[Rollout],
             credits: list[StepCredit]) -> build.Built[StepwiseExample]:
    """Every credited rollout as a stepwise-supervision row, split into steps as the credit stage split it."""
    rows_of: dict[str, list[StepCredit]] = {}
    for c in credits:
        rows_of.setdefault(c.rollout_id, []).append(c)
    source = {p.problem_id: p.source for p in problems}
    rows, skipped = [], Counter()
    for r in rollouts:
        if r.rollout_id not in rows_of:
            skipped["no_credit"] += 1
            continue
        steps = split_steps(r.completion, style_for(style, source.get(r.problem_id, "")))
        rows.append(mc.stepwise_example(r.prompt, steps, rows_of[r.rollout_id]))
    return build.Built(rows, skipped)


@functools.lru_cache(maxsize=1)
def _built(cfg: PairsConfig, run: Run) -> dict[str, build.Built]:
    """Every set of the run, built once for the eight stages that write them (the pipeline writes them in a row)."""
    problems = list(run.read(PROBLEMS))
    credit = run.metrics(CREDIT.name)  # how credit split steps and which problems it covered
    ids = {p.problem_id for p in covered(problems, credit.get("problems_limit"))}
    rollouts = list(run.read(ROLLOUTS, where=("problem_id", ids)))  # filtered as decoded: only covered rows
    verdicts = list(run.read(VERDICTS, where=("problem_id", ids)))
    built = build_all(cfg, credit.get("style", "auto"), problems, rollouts, verdicts, list(run.read(CREDIT)),
                      run.seed)
    return {name: replace(b, counts=Counter({**b.counts, "covered": len(ids)})) for name, b in built.items()}


def _writer(name: str):
    def rows(cfg: PairsConfig, run: Run, shard: int, meter: Meter) -> list:
        built = _built(cfg, run)[name]
        meter.add(skipped=dict(built.skipped), **built.counts)
        return built.rows

    return rows


# How each set is made, for its dataset card (README.md beside its parts).
COVERED = ("Built from the policy's samples of the problems the credit stage covered, as every set from samples is, "
           "so the methods are compared on data from one problem set.")
CHOSEN = "The chosen side is what `chosen` says: the policy's own correct rollout or the problem's reference solution."
ABOUT = {
    "sft": "D_syn: every train problem's reference solution as a prompt/completion row, what pi_sft learns by "
           "supervised fine-tuning (TRL's SFTTrainer).",
    "rft": "Rejection-sampling fine-tuning data (RFT): pi_sft's own verified-correct solutions, deduplicated, at "
           "most `rft_k` per problem (TRL's SFTTrainer). " + COVERED,
    "rft_advantage": "Advantage-filtered RFT (Setlur et al., 2024): the rft rows minus the bottom half by minimum "
                     "step advantage (A_i = Q_i - Q_{i-1}, Monte-Carlo credit), the positives that a spurious step "
                     "got through by luck. " + COVERED,
    "stepwise": "Stepwise supervision for a process reward model (TRL's prompt/completions/labels): every credited "
                "rollout split into steps, a step labelled true iff it comes before the rollout's first pit. "
                + COVERED,
    "dpo_outcome": "Naive outcome pairs, the control that gets worse with scale (TRL's DPOTrainer): up to `outcome_n` "
                   "random (chosen, wrong rollout) pairs per problem. " + CHOSEN + " " + COVERED,
    "dpo_edit": "Edit-distance pairs (TRL's DPOTrainer): each chosen side against the wrong rollout most distant from "
                "it. " + CHOSEN + " " + COVERED,
    "dpo_step_cut": "Per-step DPO pairs (Setlur et al., 2024; TRL's DPOTrainer): a chosen side against a wrong rollout "
                    "cut after its first pit (steps 1..pit), so the pair isolates the step that went wrong. "
                    + CHOSEN + " " + COVERED,
    "dpo_step_prefix": "Self-Explore pairs (TRL's DPOTrainer): the question plus the steps before the first pit as "
                       "the prompt, a continuation verified from there (chosen) against the pit step (rejected). "
                       + COVERED,
    "dpo_step_cut_max_drop": "Per-step DPO pairs as dpo_step_cut, the pit chosen by max_drop instead: the step with "
                             "the most negative advantage A_i = Q_i - Q_{i-1} (needs linear credit). "
                             + CHOSEN + " " + COVERED,
}
READS = (PROBLEMS.name, ROLLOUTS.name, VERDICTS.name, CREDIT.name)
SETS = {name: StageSpec(name, record, PairsConfig, _writer(name), reads=READS, tally=tally_set, card=ABOUT[name])
        for name, record in DATASETS.items()}
SPECS = SETS
