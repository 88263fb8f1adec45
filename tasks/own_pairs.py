"""A credit file (`mathfactory credit`'s output) -> one training set in TRL's columns (`mathfactory pairs`), made by
the builders the pipeline's sets use (tasks/core/pairs.py): prompt/chosen/rejected, prompt/completion, or
prompt/completions/labels.

The file's completions are the policy's rollouts and its graded `correct`/`reason` their verdicts; each rollout's
rows are its StepCredit rows. A chosen side comes from the file's correct completions (credited when credit ran
with positives), from a reference column, or both (`chosen`, as PairsConfig.chosen).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from mathfactory.tasks.core import credit as mc
from mathfactory.tasks.core import formatting
from mathfactory.tasks.core import pairs as build
from mathfactory.tasks.core.records import Rollout, StepCredit, Verdict
from mathfactory.tasks.core.steps import split_steps
from mathfactory.tasks.own_files import CREDIT_COLUMNS, STEP_FIELDS, Problems
from mathfactory.tasks.pairs import PairsConfig
from mathfactory.tasks.storage import iter_file_rows

# --kind -> the pipeline's set of that kind (tasks/pairs.py DATASETS).
KINDS = {"step_cut": "dpo_step_cut", "step_prefix": "dpo_step_prefix", "outcome": "dpo_outcome", "edit": "dpo_edit",
         "rft": "rft", "rft_advantage": "rft_advantage", "stepwise": "stepwise"}
# Columns whose type the builders rely on (slicing by `end`, grouping by ids); the rest need only be there.
TYPED = {"rollout_id": str, "problem_id": str, "step_index": int, "end": int, "is_pit": bool, "question": str,
         "completion": str, "correct": bool, "reason": str, "steps": str}


def read_credit(file: str) -> tuple[list[dict], Problems]:
    """The rows of a credit file that carry every StepCredit column and CREDIT_COLUMNS, and the others with why."""
    rows, problems = [], []
    for origin, row, error in iter_file_rows(file):
        if error is None and (missing := [c for c in (*STEP_FIELDS, *CREDIT_COLUMNS) if c not in row]):
            error = f"not a credit row: no {', '.join(missing)} column (write it with `mathfactory credit`)"
        if error is None and (bad := [c for c, t in TYPED.items() if not isinstance(row[c], t)]):
            error = "bad " + ", ".join(f"{c} ({type(row[c]).__name__}, expected {TYPED[c].__name__})" for c in bad)
        if error is None:
            rows.append(row)
        else:
            problems.append((origin, error))
    return rows, problems


def build_set(rows: Sequence[dict], kind: str, cfg: PairsConfig, reference: str | None = None,
              seed: int = 0, pit: str | None = None) -> build.Built:
    """The `kind` set (KINDS) from credit rows; `reference` names a column with each question's reference
    solution (used per cfg.chosen); `pit` re-chooses each wrong rollout's pit by that rule (None: as credited;
    max_drop needs linear credit)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {tuple(KINDS)}, got {kind!r}")
    rollouts: dict[str, Rollout] = {}
    verdicts: dict[str, Verdict] = {}
    credits: dict[str, list[StepCredit]] = {}
    refs, styles = {}, {}
    for r in rows:
        rid, pid = r["rollout_id"], r["problem_id"]
        if rid not in rollouts:
            rollouts[rid] = Rollout(rid, pid, "train", "", "", 0, formatting.prompt(r["question"]), r["completion"],
                                    0, "stop", 0.0, 0)
            verdicts[rid] = Verdict(rid, pid, "train", "", r["correct"], r["reason"], None, str(r["gold"]), 0)
            styles[rid] = r["steps"]
        if reference and isinstance(r.get(reference), str) and r[reference].strip():
            refs.setdefault(pid, formatting.completion(r[reference]))
        credits.setdefault(rid, []).append(StepCredit(**{f: r[f] for f in STEP_FIELDS}))
    if pit:
        credits = {rid: mc.repit(cs, pit) for rid, cs in credits.items()}
    R, V, C = list(rollouts.values()), list(verdicts.values()), [c for cs in credits.values() for c in cs]
    side = {"chosen": cfg.chosen, "refs": refs}
    if kind == "rft":
        return build.rft(R, V, cfg.rft_k, cfg.dedup, cfg.dedup_threshold, seed)
    if kind == "rft_advantage":
        return build.rft_advantage(build.rft(R, V, cfg.rft_k, cfg.dedup, cfg.dedup_threshold, seed).rows, C)
    if kind == "outcome":
        return build.outcome_pairs(R, V, cfg.outcome_n, seed, **side)
    if kind == "edit":
        return build.edit_distance_pairs(R, V, cfg.edit_unit, **side)
    if kind == "step_cut":
        return build.step_cut(R, V, C, seed, **side)
    if kind == "step_prefix":
        return build.step_prefix(R, V, C, **side)
    return build.Built([mc.stepwise_example(r.prompt, split_steps(r.completion, styles[r.rollout_id]), credits[rid])
                        for rid, r in rollouts.items()])


def as_rows(built: build.Built) -> list[dict]:
    return [asdict(r) for r in built.rows]
