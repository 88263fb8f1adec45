"""Stages `grad_features` (sharded) and `influence`: round-1 teacher outputs + reference problems -> each seed
text's gradient influence, and the top fraction selected for round 2 (JiuZhang3.0 §2.3, after LESS).

`grad_features` is LESS's gradient datastore: the round-1 synthesizer's loss gradient on every (prompt, teacher
output) pair and on every reference problem, randomly projected to `dim` numbers. `influence` averages a text's
pairs, takes the cosine to the mean reference gradient, and keeps the top `fraction`; the scores stay in the lake
so a user can see why a text was chosen.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from mathfactory.tasks.core import synthesis
from mathfactory.tasks.core.influence import influence_scores, select_top
from mathfactory.tasks.core.records import GradFeature, Problem, SeedScore, SeedText, TeacherCall
from mathfactory.tasks.distill import load_templates
from mathfactory.tasks.distill import stage_name as kd_stage
from mathfactory.tasks.domains import toy
from mathfactory.tasks.stage import Stage
from mathfactory.tasks.synthesizer import synthesizer_dir

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
    stage = p.stage if p.stage in templates.stages else next(iter(templates.stages))
    *steps, final = p.solution.strip().splitlines()
    answer = final.removeprefix("####").strip() if final.startswith("####") else p.answer
    steps = steps if final.startswith("####") else [*steps, final]
    return {"prompt": templates.render(stage, ""), "completion": synthesis.write(p.question, steps, answer)}


def features_stage(cfg: InfluenceConfig, templates: str, lake: str, run_id: str) -> Stage:
    return Stage(lake, run_id, FEATURES, GradFeature, config={"influence": cfg.model_dump(mode="json"),
                                                              "templates": templates})


@task(name="grad-features-shard", cache_policy=NO_CACHE, retries=1)
def features_shard(cfg: InfluenceConfig, templates: str, lake: str, run_id: str, shard: int, seed: int) -> dict:
    from mathfactory.tasks.models.influence import gradient_features  # torch loads in the shard only

    st = features_stage(cfg, templates, lake, run_id)
    if st.done:
        return {"shard": shard, "skipped": True}
    if st.has_shard(shard):
        return {"shard": shard, "rows": sum(1 for _ in st.lake.read_part(run_id, FEATURES, shard, GradFeature))}
    t0 = time.perf_counter()
    tmpl = load_templates(templates)
    items = [(c.request_id, c.seed_id, "candidate", {"prompt": c.prompt, "completion": c.completion})
             for c in st.lake.read(run_id, kd_stage(1), TeacherCall) if c.ok]
    items += [(p.problem_id, None, "reference", reference_row(tmpl, p)) for p in reference_problems(cfg, seed)]
    mine = items[shard::cfg.shards]
    vectors = gradient_features(synthesizer_dir(lake, run_id, 1), [row for *_, row in mine], dim=cfg.dim,
                                seed=seed, max_length=cfg.max_length, num_threads=cfg.num_threads)
    n = st.write(shard, (GradFeature(row_id, seed_id, role, v.tolist())
                         for (row_id, seed_id, role, _), v in zip(mine, vectors, strict=True)))
    return {"shard": shard, "rows": n, "seconds": round(time.perf_counter() - t0, 2)}


@task(name="grad-features", cache_policy=NO_CACHE)
def commit_features(cfg: InfluenceConfig, templates: str, lake: str, run_id: str, shards: list[dict],
                    started: float) -> str:
    st = features_stage(cfg, templates, lake, run_id)
    if st.done:
        return st.uri
    busy = sum(s.get("seconds", 0) for s in shards)
    return st.commit(started, shard_seconds=round(busy, 2))


@task(name="influence", cache_policy=NO_CACHE)
def score_seeds(cfg: InfluenceConfig, lake: str, run_id: str) -> str:
    """Every scored seed text with its influence, rank and whether round 2 distils it."""
    import numpy as np

    st = Stage(lake, run_id, STAGE, SeedScore, config=cfg)
    if st.done:
        return st.uri
    candidates, groups, reference = [], [], []
    for f in st.lake.read(run_id, FEATURES, GradFeature):
        if f.role == "reference":
            reference.append(f.feature)
        else:
            candidates.append(f.feature)
            groups.append(f.seed_id)
    scores = influence_scores(np.asarray(candidates, dtype=np.float32), groups,
                              np.asarray(reference, dtype=np.float32))
    ranked = select_top({k: s for k, (s, _) in scores.items()}, 1.0)
    chosen = set(select_top({k: s for k, (s, _) in scores.items()}, cfg.fraction))
    seeds = {s.seed_id: s for s in st.lake.read(run_id, "seeds", SeedText) if s.seed_id in scores}
    rows = [SeedScore(k, seeds[k].kind, float(scores[k][0]), scores[k][1], rank, k in chosen, seeds[k].text[:PREVIEW])
            for rank, k in enumerate(ranked)]
    st.write(0, rows)
    by_kind: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by_kind[r.kind].append(r.score)
    selected_kinds: dict[str, int] = defaultdict(int)
    for r in rows:
        selected_kinds[r.kind] += r.selected
    return st.commit(selected=len(chosen), cutoff=min(scores[k][0] for k in chosen) if chosen else None,
                     mean_score_by_kind={k: round(sum(v) / len(v), 4) for k, v in sorted(by_kind.items())},
                     selected_by_kind=dict(sorted(selected_kinds.items())))
