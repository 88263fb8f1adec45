"""The records that flow between stages, each declared once; Arrow schemas are derived from these."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import NamedTuple

SCHEMA_VERSION = 4  # 2: SeedScore.preview; 3: StepCredit.n_correct, q None unless estimated; PreferencePair.chosen_source;
#   4: `stage` (a problem's education level) is `level`
RENAMED = {"level": "stage"}  # column -> its name in older files, which still read

# Why a rollout got its verdict. Every verdict carries exactly one of these.
VERDICT_REASONS = ("correct", "wrong", "no_answer", "unparseable", "timeout")


def stable_id(*parts: object) -> str:
    """A short content-derived id: the same inputs (and seed) always give the same id across reruns."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(str(p).encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return h.hexdigest()


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from the root seed and what it is for (31 bits: some servers seed numpy with it)."""
    return int(stable_id(*parts), 16) % 2**31


@dataclass(frozen=True)
class Problem:
    problem_id: str
    source: str  # toy | stargraph | gsm8k | math500 | synth
    split: str  # train | test
    level: str  # education level (toy; JiuZhang3.0's education stage), steps (GSM8K), level/subject (MATH)
    question: str
    solution: str  # reference worked solution (GSM8K format, or LaTeX)
    answer: str  # reference final answer


class ProblemKey(NamedTuple):
    """The two columns of a Problem that decide which shard takes it: what a shard reads of every problem."""

    problem_id: str
    split: str


@dataclass(frozen=True)
class Rollout:
    rollout_id: str
    problem_id: str
    split: str
    level: str
    policy: str  # the model that wrote it: runs/{run_id}/policy in the lake, a pretrained URL, or a served model
    sample_index: int
    prompt: str
    completion: str
    n_tokens: int
    finish_reason: str  # stop | length
    temperature: float
    seed: int


@dataclass(frozen=True)
class Verdict:
    rollout_id: str
    problem_id: str
    split: str
    level: str
    correct: bool
    reason: str  # one of VERDICT_REASONS
    predicted: str | None  # the extracted final answer, if any
    gold: str
    calc_errors: int  # calculator annotations <<a*b=c>> whose arithmetic is wrong


@dataclass(frozen=True)
class StepCredit:
    """One labelled step of a rollout: Monte-Carlo Q_i = P(correct | question, steps 1..i), Setlur et al. eq. (1).

    Step 0 is the empty prefix (Q_0, from the question's own rollouts); step n is the verdict. Strategies that skip
    steps (`binary`, `scan`) emit rows only for the steps they visited, and a probe they stopped at its first
    verified continuation is no estimate: its q is None, and n_correct >= 1 of n_continuations says Q > 0."""

    rollout_id: str
    problem_id: str
    step_index: int  # 0 = the question alone; i >= 1 = after the i-th step
    step_text: str  # the i-th step as it appears in the completion ("" for step 0)
    end: int  # character offset in the completion where the prefix ends: completion[:end] is steps 1..i
    q: float | None  # Best-of-K Q from all M continuations (tasks/core/credit.py); None where probing stopped early
    advantage: float | None  # A_i = Q_i - Q_{i-1}, where both are estimates
    n_continuations: int  # draws from this prefix (step 0: the question's rollouts; step n: 0, the verdict)
    strategy: str  # linear | scan | binary
    is_pit: bool  # the rollout's pit, by the credit stage's rule (its marker's `pit`)
    correct_continuation: str | None  # one verified continuation from this prefix (per-step DPO's chosen side)
    n_correct: int | None = None  # of the draws, how many verified (step n: the verdict); None before schema 3


@dataclass(frozen=True)
class StepwiseExample:
    """A rollout as TRL's stepwise-supervision row (PRM training): one boolean label per step."""

    rollout_id: str
    problem_id: str
    prompt: str
    completions: list[str]
    labels: list[bool]


@dataclass(frozen=True)
class SFTExample:
    """A prompt/completion row for TRL's SFTTrainer: reference solutions (sft) or the policy's own (rft...)."""

    example_id: str
    kind: str  # sft | rft | rft_advantage
    problem_id: str
    rollout_id: str | None  # None for reference solutions
    prompt: str
    completion: str


@dataclass(frozen=True)
class PreferencePair:
    """A prompt/chosen/rejected row for TRL's DPOTrainer, with where each side came from."""

    pair_id: str
    kind: str  # outcome | edit_distance | step_cut | step_prefix
    problem_id: str
    prompt: str  # for step_prefix: the question + the steps before the pit
    chosen: str
    rejected: str
    chosen_rollout_id: str | None  # None unless chosen is a whole rollout of the policy
    rejected_rollout_id: str
    pit_index: int | None  # the rejected rollout's pit (per-step kinds)
    chosen_source: str | None = None  # rollout | reference (D_syn) | continuation (from the prefix); None before schema 3


@dataclass(frozen=True)
class EvalResult:
    """One held-out problem evaluated with one model: a greedy answer (pass@1) and k sampled ones (maj@k)."""

    eval_id: str  # stable_id(problem_id, model, seed, k)
    problem_id: str
    split: str
    level: str
    method: str  # the training method that made the model: sft | rft | dpo | ...
    model: str  # the model evaluated, named as Rollout.policy names it
    greedy_completion: str
    greedy_predicted: str | None
    greedy_correct: bool
    greedy_reason: str  # one of VERDICT_REASONS
    k: int
    sampled_predicted: list[str | None]  # the k samples' extracted answers, in sample order
    n_sampled_correct: int
    majority: str | None  # the most common sampled answer (first seen on ties), None if no sample answered
    majority_correct: bool
    gold: str
    seed: int  # the sampling seed the k samples were drawn with


@dataclass(frozen=True)
class SeedText:
    """A chunk of math text a teacher or the synthesizer writes problems from (JiuZhang3.0's "seed texts")."""

    seed_id: str  # stable_id(source, origin, chunk)
    source: str  # toy | gsm8k | files
    origin: str  # file:line (and #chunk) or a generator's id
    kind: str  # what the source says it is (toy: story | lesson | noise); "" when unknown
    text: str


@dataclass(frozen=True)
class TeacherCall:
    """One education-stage prompt sent to the teacher for one seed text: the knowledge-distillation data, or the
    failure that stands for it (after retries), with what it cost."""

    request_id: str  # the request's cache key: the same request is never paid for twice
    round: int  # 1: seed texts sampled at random; 2: the texts gradient influence selected
    seed_id: str
    level: str  # the education stage of the prompt template (its name in the templates file)
    prompt: str
    completion: str | None  # None if the request failed
    ok: bool
    reason: str  # "ok", or why it failed (HTTP status, timeout, empty, unparseable: ...)
    attempts: int
    cached: bool  # answered from the request cache (free)
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class GradFeature:
    """One (prompt, output) pair's loss gradient under the round-1 synthesizer, randomly projected (LESS's
    gradient datastore): a candidate seed text's teacher output, or a reference problem."""

    row_id: str  # the TeacherCall's request_id, or the reference problem's id
    seed_id: str | None  # None for reference rows
    role: str  # candidate | reference
    feature: list[float]


@dataclass(frozen=True)
class SeedScore:
    """A seed text's gradient influence: cosine of its mean projected gradient to the reference mean."""

    seed_id: str
    kind: str  # the seed text's kind, to see what selection favours
    score: float
    n_pairs: int  # teacher outputs its feature averages over
    rank: int  # 0 = most influential
    selected: bool  # in the top `fraction`: distilled again in round 2
    preview: str  # the text's first 160 characters, so `mathfactory show RUN influence` says what was chosen


@dataclass(frozen=True)
class SynthOutput:
    """One text the trained synthesizer wrote for (seed text, education stage), before the quality gates."""

    output_id: str
    seed_id: str
    level: str  # the education stage of the prompt template
    completion: str
    n_tokens: int
    finish_reason: str


@dataclass(frozen=True)
class ProblemSketch:
    """A kept train problem's deduplication keys (tasks/core/dedup.py), kept beside its run's problems so a later
    run checks against them without sketching the text again."""

    problem_id: str
    exact: int  # exact_key as a signed 64-bit integer
    minhash: list[int]  # MinHash hash values of its word 3-gram shingles (permutation seed 1)


@dataclass(frozen=True)
class Quarantined:
    """A row a stage refused, kept with where it came from and why, so a flow never dies on one bad row."""

    stage: str
    origin: str  # file:line, or the id of the offending record
    reason: str
    excerpt: str


RECORDS = {cls.__name__: cls for cls in (Problem, Rollout, Verdict, StepCredit, StepwiseExample, SFTExample,
                                         PreferencePair, EvalResult, SeedText, TeacherCall, GradFeature, SeedScore,
                                         SynthOutput, ProblemSketch, Quarantined)}
