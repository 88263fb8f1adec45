"""A model's Q along the reference solutions of held-out problems (Setlur et al. 2024, Figure 7): Q_i is the share
of its continuations from the reference's first i steps that end correct; Q_0 (the question alone) is its sampled
pass rate. Per-step DPO should raise Q where the policy chooses (the critical steps), naive DPO where it need not.

The prefixes are the reference's, not each model's own rollouts, so every model is measured at the same states."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from mathfactory.tasks.core import formatting
from mathfactory.tasks.core.records import Problem
from mathfactory.tasks.core.steps import split_steps, style_for
from mathfactory.tasks.engines import TransformersOptions, load_engine
from mathfactory.tasks.engines.base import SamplingParams
from mathfactory.tasks.judge import Grading


def reference_prefixes(problem: Problem) -> list[str]:
    """The reference completion cut before each of its steps: "", step 1, steps 1-2, ... (its last step is the
    one that states the answer, so a prefix ending there would leave nothing to continue)."""
    text = formatting.completion(problem.solution)
    steps = split_steps(text, style_for("auto", problem.source))
    return [text[: steps[i - 1].end] if i else "" for i in range(len(steps))]


def mean_by_step(outcomes: Sequence[tuple[int, Sequence[bool]]]) -> list[dict]:
    """(step index, continuation outcomes) pairs -> per step index its mean Q over prefixes and how many prefixes
    (problems) and continuations it rests on."""
    by_step: dict[int, list[Sequence[bool]]] = defaultdict(list)
    for i, ok in outcomes:
        by_step[i].append(ok)
    return [{"step": i, "q": sum(sum(o) / len(o) for o in runs) / len(runs), "problems": len(runs),
             "continuations": sum(len(o) for o in runs)} for i, runs in sorted(by_step.items()) if runs]


def q_along_reference(model_dir: str | Path, problems: Sequence[Problem], m: int, *, temperature: float,
                      max_new_tokens: int, seed: int, grading: Grading) -> list[dict]:
    """`m` continuations by the model from every reference prefix of `problems`, graded; mean Q per step."""
    items = [(p, i, prefix) for p in problems for i, prefix in enumerate(reference_prefixes(p))]
    engine = load_engine(TransformersOptions(), model_dir, seed)
    params = SamplingParams(n=m, temperature=temperature, max_new_tokens=max_new_tokens, stop=formatting.STOP,
                            seed=seed)
    outs = engine.generate([formatting.prompt(p.question) + prefix for p, _, prefix in items], params)
    with grading.judge() as judge:
        grades = iter(judge.grade_many((p.answer, prefix + c.text) for (p, _, prefix), cs in zip(items, outs,
                                                                                                 strict=True)
                                       for c in cs))
        return mean_by_step([(i, [next(grades).correct for _ in cs]) for (_, i, _), cs in zip(items, outs,
                                                                                              strict=True)])
