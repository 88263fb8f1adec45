"""A user's own JSONL/Parquet rows -> rollouts, per-step Monte-Carlo credit, training sets: the pipeline's stages
one at a time, on files (`mathfactory sample | credit | pairs`), with the stages' own pieces.

A row that cannot be used is reported as (file:line, reason) and the others go on. Policy requests go through a
request cache (tasks/engines/cached.py), so a rerun after a stop pays only for what was never answered.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from mathfactory.tasks.core import credit as mc
from mathfactory.tasks.core import formatting
from mathfactory.tasks.core.records import StepCredit, derive_seed, stable_id
from mathfactory.tasks.core.steps import split_steps, style_of_text
from mathfactory.tasks.credit import CreditConfig, Solution, monte_carlo
from mathfactory.tasks.engines import OpenAIOptions, TransformersOptions, load_engine, model_name
from mathfactory.tasks.engines.base import SamplingParams
from mathfactory.tasks.engines.cached import CachedEngine, RequestsRefused
from mathfactory.tasks.judge import Judge
from mathfactory.tasks.storage import RequestCache, as_url, dir_version, fetch_dir, iter_file_rows

Problems = list[tuple[str, str]]  # (file:line, why the row was left out)
# What the credit command adds to each StepCredit row: where it came from and how it was graded and split.
CREDIT_COLUMNS = ("row", "steps", "question", "completion", "gold", "correct", "reason")
STEP_FIELDS = tuple(f.name for f in dataclasses.fields(StepCredit))


@dataclass(frozen=True)
class InputRow:
    index: int  # 0-based among the file's rows (blank JSONL lines are no rows), as a DataFrame numbers them
    origin: str  # file:line
    data: dict


def read_rows(file: str, columns: Sequence[str]) -> tuple[list[InputRow], Problems]:
    """The rows of `file` that have a usable (text or number) value in every one of `columns`, and the others."""
    rows, problems = [], []
    for index, (origin, row, error) in enumerate(iter_file_rows(file)):
        if error is None and (missing := [c for c in columns if not isinstance(row.get(c), str | int | float)]):
            error = f"no usable {' or '.join(missing)} column"
        if error is None:
            rows.append(InputRow(index, origin, row))
        else:
            problems.append((origin, error))
    return rows, problems


def open_policy(policy: str, model: str | None, cache: RequestCache, seed: int = 0) -> CachedEngine:
    """The policy `policy` names: an OpenAI-compatible server's base URL (http/https; `model` is the served name)
    or a model directory at any path or fsspec URL, run in-process. Its answers are kept in `cache`, keyed by the
    server and model name, or by the directory and a digest of its files."""
    if policy.startswith(("http://", "https://")):
        options = OpenAIOptions(base_url=policy, model=model or "default")
        return CachedEngine(load_engine(options), cache, model_name(options, None))
    local = fetch_dir(policy)
    engine = load_engine(TransformersOptions(num_threads=None), local, seed)  # a user's run: every core
    return CachedEngine(engine, cache, f"{as_url(policy)}@{dir_version(local)}")


def refused(why: str) -> str:
    return f"refused by the policy's server: {why}"


def sample(rows: Sequence[InputRow], question: str, gold: str, engine: CachedEngine, params: SamplingParams,
           judge: Judge) -> tuple[list[dict], Problems]:
    """params.n completions of each row's question, graded against its gold: the row's columns plus `row`,
    `sample_index`, `completion`, `n_tokens`, `finish_reason`, `correct`, `reason`, `predicted`; and the rows
    whose request the server refused, with why."""
    out, problems = [], []
    chunk = max(1, 512 // params.n)  # questions per engine call, as the rollouts stage asks
    with tqdm(total=len(rows), desc="sample", unit="question", disable=None) as bar:
        for a in range(0, len(rows), chunk):
            batch = rows[a : a + chunk]
            try:
                outs = engine.generate([formatting.prompt(str(r.data[question])) for r in batch], params)
            except RequestsRefused as e:  # the others' answers are cached: ask again without the refused
                no = {r.index: e.refused[p] for r in batch if (p := formatting.prompt(str(r.data[question])))
                      in e.refused}
                problems += [(r.origin, refused(no[r.index])) for r in batch if r.index in no]
                batch = [r for r in batch if r.index not in no]
                outs = engine.generate([formatting.prompt(str(r.data[question])) for r in batch], params)
            grades = iter(judge.grade_many((str(r.data[gold]), c.text) for r, cs in zip(batch, outs, strict=True)
                                           for c in cs))
            for r, cs in zip(batch, outs, strict=True):
                for k, c in enumerate(cs):
                    g = next(grades)
                    out.append({**r.data, "row": r.index, "sample_index": k, "completion": c.text,
                                "n_tokens": c.n_tokens, "finish_reason": c.finish_reason, "correct": g.correct,
                                "reason": g.reason, "predicted": g.predicted})
            bar.update(len(batch))
    return out, problems


def credit(rows: Sequence[InputRow], question: str, gold: str, completion: str, style: str, engine: CachedEngine,
           judge: Judge, cfg: CreditConfig, seed: int = 0) -> tuple[list[dict], Problems]:
    """The StepCredit rows of every creditable completion (wrong ones by cfg.strategy, right ones every step when
    cfg.positives), each with CREDIT_COLUMNS and the input row's other columns (one named like ours as
    `input.NAME`); and the rows that could not be credited, with why.

    Each completion is graded against its gold first; Q_0 of a question is the share of the file's completions of
    it that verified, as the stage takes it from the question's rollouts. Steps split by `style` (lines, math, or
    auto: by the completion's text, tasks/core/steps.style_of_text); the `steps` column says which."""
    texts = [(str(r.data[question]), str(r.data[gold]), str(r.data[completion])) for r in rows]
    grades = judge.grade_many((g, c) for _, g, c in texts)
    solved, sampled = Counter(), Counter()
    for (q, g, _), grade in zip(texts, grades, strict=True):
        sampled[q, g] += 1
        solved[q, g] += grade.correct
    wrong, right, problems, of = [], [], [], {}
    for r, (q, g, c), grade in zip(rows, texts, grades, strict=True):
        if grade.correct and not cfg.positives:
            continue
        split = style if style != "auto" else style_of_text(c)
        target = mc.Target(stable_id("own", r.index, q, c), stable_id("own", q, g), tuple(split_steps(c, split)),
                           grade.correct, solved[q, g], sampled[q, g])
        if why := mc.uncreditable(target, cfg.max_steps):
            detail = "empty completion" if why == "no_steps" else f"{len(target.steps)} steps > {cfg.max_steps}"
            problems.append((r.origin, f"not credited: {why} ({detail})"))
            continue
        (right if grade.correct else wrong).append(target)
        of[target.rollout_id] = (r, split, grade)
    solutions = {t: Solution(formatting.prompt(str(r.data[question])), str(r.data[completion]), str(r.data[gold]))
                 for t, (r, _, _) in of.items()}
    while True:
        try:
            credits, _ = monte_carlo(cfg, engine, judge, wrong, right, solutions, lambda *rk: derive_seed(seed, *rk))
            break
        except RequestsRefused as e:
            # Drop the completions a refused prefix belongs to and label the rest again: what they were
            # answered so far is cached, and their requests (seeded by round) are the same ones.
            dropped = {t: why for t, s in solutions.items() for p, why in e.refused.items()
                       if p.startswith(s.prompt) and (s.prompt + s.completion).startswith(p)}
            if not dropped:
                raise
            problems += [(of[t][0].origin, refused(why)) for t, why in dropped.items()]
            wrong = [t for t in wrong if t.rollout_id not in dropped]
            right = [t for t in right if t.rollout_id not in dropped]
            solutions = {t: s for t, s in solutions.items() if t not in dropped}
    out = []
    for c in sorted(credits, key=lambda c: (of[c.rollout_id][0].index, c.step_index)):
        r, split, grade = of[c.rollout_id]
        ours = {"row": r.index, "steps": split, "question": str(r.data[question]), "completion": str(r.data[completion]),
                "gold": str(r.data[gold]), "correct": grade.correct, "reason": grade.reason}
        theirs = {k: v for k, v in r.data.items() if k not in (question, completion, gold)}
        out.append({**{f"input.{k}" if k in ours or k in STEP_FIELDS else k: v for k, v in theirs.items()},
                    **dataclasses.asdict(c), **ours})
    return out, problems
