"""Stage `eval_{method}`: held-out problems + the model a training method made -> EvalResult rows (a greedy
answer for pass@1, k sampled ones for maj@k), in shards; the commit holds the summary with 95 % intervals."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from mathfactory.tasks.core import evaluation, formatting
from mathfactory.tasks.core.grading import Grade
from mathfactory.tasks.core.methods import METHODS
from mathfactory.tasks.core.records import EvalResult, Problem, derive_seed, stable_id
from mathfactory.tasks.core.skips import Skip, no_split
from mathfactory.tasks.engines import EngineOptions, TransformersOptions, load_engine, local_model, model_name
from mathfactory.tasks.engines.base import Completion, SamplingParams
from mathfactory.tasks.policy import POLICY, policy_dir, policy_ref
from mathfactory.tasks.problems import PROBLEMS
from mathfactory.tasks.stage import Meter, Run, StageSpec, summed
from mathfactory.tasks.storage import MARKER
from mathfactory.tasks.train import stage_name as train_stage_name

STAGE_PREFIX = "eval_"


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: EngineOptions = Field(default_factory=TransformersOptions, description="Model backend that generates.")
    split: Literal["train", "test"] = Field("test", description="Problem split evaluated on (test is held out).")
    problems_per_level: int | None = Field(20, ge=1, validation_alias=AliasChoices("problems_per_level",
                                                                                  "problems_per_stage"),
                                           description="First N problems of each education level of "
                                           "the split, in lake order (None: all).")
    k: int = Field(4, ge=0, description="Sampled completions per problem, voted on for maj@k (0: greedy pass@1 "
                   "only, half the cost or less).")
    temperature: float = Field(0.8, gt=0, description="Temperature of the k samples (pass@1 decodes greedily).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass of the k samples.")
    max_new_tokens: int = Field(320, ge=1, description="Generation budget per completion.")
    shards: int = Field(2, ge=1, description="Independent tasks the stage is split into (the fan-out unit).")


def _known(method: str) -> str:
    if method not in {m.name for m in METHODS}:
        raise ValueError(f"unknown method {method!r}; methods: {', '.join(m.name for m in METHODS)}")
    return method


def eval_stage(method: str) -> str:
    """The lake stage holding `method`'s evaluation: `eval_dpo`."""
    return STAGE_PREFIX + _known(method)


def method_of(stage: str) -> str:
    """The method an eval stage evaluates: `eval_dpo` -> `dpo`."""
    if not stage.startswith(STAGE_PREFIX):
        raise ValueError(f"{stage!r} is not an evaluation stage (they are named {STAGE_PREFIX}{{method}})")
    return _known(stage.removeprefix(STAGE_PREFIX))


def train_stage(method: str) -> str:
    """The lake stage whose model directory `method` made: the run's policy (pi_sft) for sft."""
    return POLICY.name if method == "sft" else train_stage_name(method)


def model_ref(run: Run, method: str) -> str:
    """The model by name, independent of where the lake is (as Rollout.policy names the policy)."""
    return policy_ref(run) if method == "sft" else f"runs/{run.run_id}/{train_stage(method)}"


def model_dir(run: Run, method: str) -> Path:
    """A local directory holding the model `method` trained in the run."""
    stage = train_stage(_known(method))
    if run.marker(stage) is None:
        raise FileNotFoundError(f"run {run.run_id}: no model to evaluate for method {method!r}: stage {stage!r} "
                                f"has not finished (no {MARKER} in {run.uri(stage)})")
    return policy_dir(run) if method == "sft" else run.store.local_dir(run.run_id, stage)


def selected(problems: Iterable[Problem], cfg: EvalConfig, shard: int) -> Iterator[Problem]:
    """The problems of `shard`: the first `problems_per_level` of each education level of the split, dealt
    round-robin to shards."""
    taken: Counter[str] = Counter()
    for p in problems:
        if p.split != cfg.split or (cfg.problems_per_level is not None and taken[p.level] >= cfg.problems_per_level):
            continue
        taken[p.level] += 1
        if (taken.total() - 1) % cfg.shards == shard:
            yield p


def sampling_seed(seed: int) -> int:
    """One seed for every shard: engines seed each prompt from (seed, prompt), so a problem gets the same samples
    whichever shard it is dealt to, and the same random draws under every method's model."""
    return derive_seed("eval", seed)


def _result(p: Problem, method: str, model: str, greedy: Completion, grades: Sequence[Grade], seed: int
            ) -> EvalResult:
    """One problem's row from its greedy completion and the grades of [greedy, *samples]."""
    first, samples = grades[0], grades[1:]
    answers = [g.predicted for g in samples]
    majority, majority_correct = evaluation.vote(answers, [g.correct for g in samples])
    return EvalResult(
        eval_id=stable_id(p.problem_id, model, seed, len(samples)), problem_id=p.problem_id, split=p.split,
        level=p.level, method=method, model=model, greedy_completion=greedy.text, greedy_predicted=first.predicted,
        greedy_correct=first.correct, greedy_reason=first.reason, k=len(samples), sampled_predicted=answers,
        n_sampled_correct=sum(g.correct for g in samples), majority=majority, majority_correct=majority_correct,
        gold=p.answer, seed=seed,
    )


def _model(cfg: EvalConfig, run: Run, method: str) -> str:
    # HTTP engines evaluate the served model; in-process ones the method's model from the lake.
    return model_name(cfg.engine, local_model(cfg.engine, lambda: model_ref(run, method)))


def _evaluator(method: str):
    def evaluate(cfg: EvalConfig, run: Run, shard: int, meter: Meter) -> Iterator[EvalResult]:
        """Shard `shard`: per problem one greedy completion and k samples, all graded."""
        s = sampling_seed(run.seed)
        engine = load_engine(cfg.engine, local_model(cfg.engine, lambda: model_dir(run, method)), s)
        model = _model(cfg, run, method)
        problems = list(selected(run.read(PROBLEMS), cfg, shard))
        common = dict(max_new_tokens=cfg.max_new_tokens, stop=formatting.STOP, seed=s)
        greedy = SamplingParams(n=1, temperature=0.0, **common)
        sampled = SamplingParams(n=max(cfg.k, 1), temperature=cfg.temperature, top_p=cfg.top_p, **common)
        chunk = max(1, 512 // max(cfg.k, 1))  # prompts per engine call: engines sort by length within a call
        with run.grading.judge() as judge:
            for i in tqdm(range(0, len(problems), chunk), desc=f"{eval_stage(method)} shard {shard}", disable=None):
                batch = problems[i : i + chunk]
                prompts = [formatting.prompt(p.question) for p in batch]
                samples = engine.generate(prompts, sampled) if cfg.k else [[] for _ in prompts]
                outs = [g + c for g, c in zip(engine.generate(prompts, greedy), samples, strict=True)]
                meter.add(tokens=sum(c.n_tokens for cs in outs for c in cs))
                grades = judge.grade_many((p.answer, c.text) for p, cs in zip(batch, outs, strict=True) for c in cs)
                for j, (p, cs) in enumerate(zip(batch, outs, strict=True)):
                    yield _result(p, method, model, cs[0], grades[j * (1 + cfg.k) : (j + 1) * (1 + cfg.k)], s)

    return evaluate


def _summarizer(method: str):
    def summarize(cfg: EvalConfig, run: Run, shards: list[dict]) -> dict:
        """The model, pass@1 and maj@k (95 % Wilson intervals) over every shard's rows, and tokens/s."""
        rows = list(run.landed(SPECS[eval_stage(method)], len(shards)))
        return {"method": method, "model": _model(cfg, run, method), "split": cfg.split,
                **evaluation.summarize(rows), **summed(cfg, run, shards)}

    return summarize


def has_split(cfg: EvalConfig, run: Run) -> Skip | None:
    """Skipped when the run has no problems in the split evaluated on (a lake from before problems counted their
    splits is evaluated as before)."""
    sizes = run.metrics(PROBLEMS.name).get("splits")
    return None if sizes is None else no_split(cfg.split, sizes)


SPECS = {eval_stage(m.name): StageSpec(eval_stage(m.name), EvalResult, EvalConfig, _evaluator(m.name),
                                       reads=(PROBLEMS.name, train_stage(m.name)), shards=lambda cfg, run: cfg.shards,
                                       summarize=_summarizer(m.name), skip=has_split, retries=2, needs="gpu")
         for m in METHODS}
