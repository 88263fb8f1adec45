"""Stages `grad_features` (sharded) and `influence`: round-1 teacher outputs + reference problems -> each seed
text's gradient influence, and the top fraction selected for round 2 (JiuZhang3.0 §2.3, after LESS).

`grad_features` is LESS's gradient datastore: the round-1 synthesizer's loss gradient on every (prompt, teacher
output) pair and on every reference problem, randomly projected to `dim` numbers. `influence` averages a text's
pairs, takes the cosine to the mean reference gradient, and keeps the top `fraction`; the scores stay in the lake
so a user can see why a text was chosen.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from mathfactory.tasks.core import synthesis
from mathfactory.tasks.core.influence import influence_scores, select_top
from mathfactory.tasks.core.records import GradFeature, Problem, SeedScore
from mathfactory.tasks.distill import SPECS as DISTILLED
from mathfactory.tasks.distill import load_templates
from mathfactory.tasks.distill import stage_name as kd_stage
from mathfactory.tasks.domains import toy
from mathfactory.tasks.seeds import SEEDS
from mathfactory.tasks.stage import Meter, Run, StageSpec, merge, summed
from mathfactory.tasks.synthesizer import synthesizer_dir

if TYPE_CHECKING:
    from mathfactory.tasks.synthesis import SynthesisConfig

FEATURES, STAGE = "grad_features", "influence"
PREVIEW = 160  # characters of a seed text kept beside its score


class InfluenceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fraction: float = Field(0.5, gt=0, le=1, description="Share of the scored seed texts kept for round 2.")
    dim: int = Field(256, ge=8, description="Dimensions of the random projection of gradients.")
    reference: Literal["toy", "gsm8k"] = Field("toy", description="Target-style problems the gradients are "
                                               "compared with: toy train problems, or GSM8K train.")
    n_reference: int = Field(64, ge=1, description="Reference problems.")
    reference_path: str | None = Field(None, description="reference=gsm8k: folder or file (None: shared data).")
    max_length: int = Field(768, ge=16, description="Tokens per pair; longer prompts are cut from the left.")
    shards: int = Field(2, ge=1, description="Independent tasks computing gradient features.")
    num_threads: int | None = Field(1, ge=1, description="torch threads per shard (None: torch's default).")


def reference_problems(cfg: InfluenceConfig, seed: int) -> list[Problem]:
    if cfg.reference == "toy":
        return toy.generate(cfg.n_reference, "train", seed)
    from mathfactory.tasks.domains import gsm8k

    return [p for p in gsm8k.load("train", cfg.reference_path) if isinstance(p, Problem)][:cfg.n_reference]


def reference_row(templates: synthesis.Templates, p: Problem) -> dict[str, str]:
    """A target problem as the synthesizer's output for its stage's prompt, with no seed text to go on."""
    stage = p.level if p.level in templates.stages else next(iter(templates.stages))
    *steps, final = p.solution.strip().splitlines()
    answer = final.removeprefix("####").strip() if final.startswith("####") else p.answer
    steps = steps if final.startswith("####") else [*steps, final]
    return {"prompt": templates.render(stage, ""), "completion": synthesis.write(p.question, steps, answer)}


def features(cfg: SynthesisConfig, run: Run, shard: int, meter: Meter) -> Iterator[GradFeature]:
    """Shard `shard` of the (teacher output, reference problem) pairs, as projected round-1 gradients."""
    from mathfactory.tasks.models.influence import gradient_features  # torch loads in the shard only

    inf, tmpl = cfg.influence, load_templates(cfg.teacher.templates)
    items = [(c.request_id, c.seed_id, "candidate", {"prompt": c.prompt, "completion": c.completion})
             for c in run.read(DISTILLED[kd_stage(1)]) if c.ok]
    items += [(p.problem_id, None, "reference", reference_row(tmpl, p)) for p in reference_problems(inf, run.seed)]
    mine = items[shard::inf.shards]
    vectors = gradient_features(synthesizer_dir(run, 1), [row for *_, row in mine], dim=inf.dim, seed=run.seed,
                                max_length=inf.max_length, num_threads=inf.num_threads)
    return (GradFeature(row_id, seed_id, role, v.tolist())
            for (row_id, seed_id, role, _), v in zip(mine, vectors, strict=True))


FEATURES_SPEC = StageSpec(FEATURES, GradFeature, "mathfactory.tasks.synthesis:SynthesisConfig", features,
                          reads=(kd_stage(1), "synthesizer_round1"), shards=lambda cfg, run: cfg.influence.shards,
                          summarize=lambda cfg, run, shards: {**summed(cfg, run, shards),
                                                              "shard_seconds": merge(shards).get("seconds", 0)},
                          identity=lambda c: {"influence": c.influence.model_dump(mode="json"),
                                              "templates": c.teacher.templates}, needs="gpu")


def scores(cfg: InfluenceConfig, run: Run, shard: int, meter: Meter) -> list[SeedScore]:
    """Every scored seed text with its influence, rank and whether round 2 distils it."""
    import numpy as np

    candidates, groups, reference = [], [], []
    for f in run.read(FEATURES_SPEC):
        if f.role == "reference":
            reference.append(f.feature)
        else:
            candidates.append(f.feature)
            groups.append(f.seed_id)
    found = influence_scores(np.asarray(candidates, dtype=np.float32), groups,
                             np.asarray(reference, dtype=np.float32))
    ranked = select_top({k: s for k, (s, _) in found.items()}, 1.0)
    chosen = set(select_top({k: s for k, (s, _) in found.items()}, cfg.fraction))
    seeds = {s.seed_id: s for s in run.read(SEEDS) if s.seed_id in found}
    return [SeedScore(k, seeds[k].kind, float(found[k][0]), found[k][1], rank, k in chosen, seeds[k].text[:PREVIEW])
            for rank, k in enumerate(ranked)]


def tally_scores(rows) -> dict:
    """How many were chosen, the cut-off, and the mean score and choices by kind of text."""
    by_kind: dict[str, list[float]] = defaultdict(list)
    selected_kinds: dict[str, int] = defaultdict(int)
    chosen = []
    for r in rows:
        by_kind[r.kind].append(r.score)
        selected_kinds[r.kind] += r.selected
        if r.selected:
            chosen.append(r.score)
    return {"rows": sum(map(len, by_kind.values())), "selected": len(chosen), "cutoff": min(chosen, default=None),
            "mean_score_by_kind": {k: round(sum(v) / len(v), 4) for k, v in sorted(by_kind.items())},
            "selected_by_kind": dict(sorted(selected_kinds.items()))}


SCORES = StageSpec(STAGE, SeedScore, InfluenceConfig, scores, reads=(FEATURES, "seeds"), tally=tally_scores)
SPECS = {FEATURES: FEATURES_SPEC, STAGE: SCORES}
