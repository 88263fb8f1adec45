"""Stage `synth_problems`: what the synthesizer wrote (SynthOutput) -> the problems that pass every quality gate
(Problem rows), and each dropped one quarantined with the gate that dropped it and why.

Gates, cheapest first: `parse` (problem / solution / final answer sections), `answer` (a final answer is
given), `calculator` (every <<a*b=c>> annotation is right), `decontaminate` (no 10-gram shared with GSM8K test
or MATH500), `near_duplicate` (MinHash against the problems kept so far), `solvable` (the teacher, or the policy's
majority answer, agrees with the stated answer; it costs model calls, so it runs last). With
`solutions=teacher` only the synthesizer's problem is kept and the teacher writes the solution.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from mathfactory.tasks.core import formatting, synthesis
from mathfactory.tasks.core.calculator import check_annotations
from mathfactory.tasks.core.evaluation import vote
from mathfactory.tasks.core.gates import Decontaminator, NearDuplicates
from mathfactory.tasks.core.grading import extract_answer
from mathfactory.tasks.core.records import Problem, Quarantined, SynthOutput, stable_id
from mathfactory.tasks.distill import TeacherConfig, cost, teacher
from mathfactory.tasks.engines.base import SamplingParams
from mathfactory.tasks.judge import Grading
from mathfactory.tasks.stage import Meter, Run, StageSpec, summed
from mathfactory.tasks.synthesize import OUTPUTS

if TYPE_CHECKING:
    from mathfactory.tasks.synthesis import SynthesisConfig

STAGE = "synth_problems"
GATES = ("parse", "answer", "calculator", "decontaminate", "near_duplicate", "solvable")


class GatesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    solvable: Literal["teacher", "policy", "none"] = Field(
        "teacher", description="Who must agree with a problem's stated answer: the teacher (one greedy solve "
        "request per problem, cached like all teacher calls), the majority of `solver_k` samples from "
        "`solver_model`, or nobody.")
    solver_model: str | None = Field(None, description="solvable=policy: a policy model directory or URL.")
    solver_k: int = Field(4, ge=1, description="solvable=policy: samples per problem for the majority vote.")
    solver_max_new_tokens: int = Field(320, ge=1, description="solvable=policy: budget per sampled solution.")
    decontaminate: list[Literal["gsm8k", "math500"]] = Field(["gsm8k", "math500"], description="Test sets no "
                                                             "synthesized problem may share an n-gram with.")
    data_path: str | None = Field(None, description="Folder holding gsm8k/ and math500/ (None: ../shared/data).")
    ngram: int = Field(10, ge=1, description="Words per n-gram for decontamination.")
    near_dup_threshold: float = Field(0.8, gt=0, le=1, description="Estimated Jaccard similarity (word "
                                      "3-gram shingles) above which a problem is a near-duplicate.")
    num_perm: int = Field(64, ge=16, description="MinHash permutations.")
    # The embedded default's ~2M-parameter synthesizer, trained for minutes, writes sound problems but rarely sound
    # arithmetic (0.35 % and 0 % of its own solutions passed every gate in two runs), hence `teacher` here.
    solutions: Literal["synthesizer", "teacher"] = Field(
        "teacher", description="synthesizer: keep the synthesizer's own solutions (JiuZhang3.0; use it with a "
        "capable synthesizer); teacher: keep only its problems and let the teacher solve each (the answer and "
        "calculator gates then check the teacher's solution, and `solvable` means the teacher found an answer).")


def test_items(cfg: GatesConfig) -> Iterator[tuple[str, str]]:
    """(origin, question) of every test problem the synthesized ones must not overlap."""
    return benchmark_items(cfg.decontaminate, cfg.data_path)


def benchmark_items(names: Iterable[str], data_path: str | None) -> Iterator[tuple[str, str]]:
    """(origin, question) of every problem of the named test sets (gsm8k, math500) in `data_path` (None:
    ../shared/data)."""
    from mathfactory.tasks.domains import gsm8k, math500

    for name in names:
        folder = f"{data_path.rstrip('/')}/{name}" if data_path else None
        rows = gsm8k.load("test", folder) if name == "gsm8k" else math500.load("test", folder)
        for p in rows:
            if isinstance(p, Problem):
                yield f"{name} test {p.problem_id}", p.question


def cheap_gates(outputs: Iterable[SynthOutput], contamination: Decontaminator, dups: NearDuplicates,
                dropped: list[Quarantined], own_solutions: bool = True
                ) -> Iterator[tuple[SynthOutput, synthesis.Parsed]]:
    """The outputs that pass every gate but `solvable`; the rest go to `dropped` as `gate: reason`. Without
    `own_solutions` the synthesizer's solution is not looked at (the teacher will write one)."""
    def drop(o: SynthOutput, gate: str, why: str) -> None:
        dropped.append(Quarantined(STAGE, o.output_id, f"{gate}: {why}", o.completion[:200]))

    for o in outputs:
        parsed = synthesis.parse(o.completion)
        if isinstance(parsed, str):
            drop(o, "parse", parsed + (" (ran out of tokens)" if o.finish_reason == "length" else ""))
        elif own_solutions and parsed.answer is None:
            drop(o, "answer", "no final answer")
        elif own_solutions and (wrong := check_annotations(parsed.solution)[1]) > 0:
            drop(o, "calculator", f"{wrong} calculator annotation(s) wrong")
        elif (origin := contamination.match(parsed.question)) is not None:
            drop(o, "decontaminate", f"shares a {contamination.n}-gram with {origin}")
        elif (first := dups.first_seen(o.output_id, parsed.question)) is not None:
            drop(o, "near_duplicate", f"near-duplicate of {first}")
        else:
            yield o, parsed


def solvable(cfg: GatesConfig, teacher_cfg: TeacherConfig, lake: str, seed: int,
             candidates: list[tuple[SynthOutput, synthesis.Parsed]], grading: Grading | None = None
             ) -> tuple[list[str | None], dict]:
    """Per candidate None if someone agrees with its answer, else why not; and what asking cost."""
    if cfg.solvable == "none" or not candidates:
        return [None] * len(candidates), {}
    questions = [formatting.prompt(p.question) for _, p in candidates]
    if cfg.solvable == "teacher":
        answers, spent = ask_teacher(teacher_cfg, lake, seed, questions)
        texts = [[a.completion or ""] for a in answers]
    else:
        from mathfactory.tasks.engines import TransformersOptions, load_engine
        from mathfactory.tasks.storage import fetch_dir

        if not cfg.solver_model:
            raise ValueError("gates.solvable=policy needs gates.solver_model (a policy model directory)")
        engine = load_engine(TransformersOptions(), fetch_dir(cfg.solver_model), seed)
        params = SamplingParams(n=cfg.solver_k, temperature=0.8, max_new_tokens=cfg.solver_max_new_tokens,
                                stop=formatting.STOP, seed=seed)
        texts = [[c.text for c in cs] for cs in engine.generate(questions, params)]
        answers, spent = None, {}
    reasons: list[str | None] = []
    with (grading or Grading()).judge() as grader:
        for i, ((_, parsed), outs) in enumerate(zip(candidates, texts, strict=True)):
            if answers is not None and not answers[i].ok:
                reasons.append(f"solvable: teacher request failed ({answers[i].reason})")
                continue
            grades = grader.grade_many((parsed.answer, t) for t in outs)
            answer, agrees = vote([g.predicted for g in grades], [g.correct for g in grades])
            reasons.append(None if agrees else f"solvable: {cfg.solvable} answered {answer!r}, "
                                               f"not {parsed.answer!r}")
    return reasons, spent


def ask_teacher(teacher_cfg: TeacherConfig, lake: str, seed: int, questions: list[str]) -> tuple[list, dict]:
    """The teacher's greedy solutions (cached like every teacher call), and what they cost."""
    answers = teacher(teacher_cfg, lake).ask(questions, SamplingParams(
        temperature=0, max_new_tokens=teacher_cfg.max_new_tokens, stop=formatting.STOP, seed=seed))
    return answers, {f"solve_{k}": v for k, v in cost(answers).items()}


def teacher_solved(teacher_cfg: TeacherConfig, lake: str, seed: int,
                   candidates: list[tuple[SynthOutput, synthesis.Parsed]]) -> tuple[list[synthesis.Parsed | str], dict]:
    """solutions=teacher: each synthesized question with the teacher's worked solution, or why it has none."""
    answers, spent = ask_teacher(teacher_cfg, lake, seed, [formatting.prompt(p.question) for _, p in candidates])
    out: list[synthesis.Parsed | str] = []
    for (_, p), a in zip(candidates, answers, strict=True):
        text = a.completion or ""
        answer = extract_answer(text) if a.ok else None
        wrong = check_annotations(text)[1]
        if not a.ok:
            out.append(f"solvable: teacher request failed ({a.reason})")
        elif answer is None:
            out.append("solvable: the teacher found no answer")
        elif wrong:
            out.append(f"calculator: {wrong} annotation(s) wrong in the teacher's solution")
        else:
            steps = tuple(line.strip() for line in text.split("####")[0].splitlines() if line.strip())
            out.append(synthesis.Parsed(p.question, steps, answer))
    return out, spent


def apply_gates(cfg: GatesConfig, teacher_cfg: TeacherConfig, lake: str, seed: int, outputs: Iterable[SynthOutput],
                grading: Grading | None = None) -> tuple[list[Problem], list[Quarantined], dict]:
    """Every gate, in order, over `outputs`: the problems kept, the outputs dropped (as `gate: reason`), and the
    summary a marker records (counts per gate in the order met, what solving cost)."""
    contamination = Decontaminator(test_items(cfg), n=cfg.ngram)
    dups = NearDuplicates(threshold=cfg.near_dup_threshold, num_perm=cfg.num_perm)
    outputs = list(outputs)
    dropped: list[Quarantined] = []
    own = cfg.solutions == "synthesizer"
    candidates = list(cheap_gates(outputs, contamination, dups, dropped, own))
    if own:
        reasons, spent = solvable(cfg, teacher_cfg, lake, seed, candidates, grading)
        results = [reason or parsed for (_, parsed), reason in zip(candidates, reasons, strict=True)]
    else:
        results, spent = teacher_solved(teacher_cfg, lake, seed, candidates)
    kept = []
    for (o, _), result in zip(candidates, results, strict=True):
        if isinstance(result, str):
            dropped.append(Quarantined(STAGE, o.output_id, result, o.completion[:200]))
        else:
            kept.append(Problem(stable_id("synth", result.question), "synth", "train", o.level, result.question,
                                result.solution, result.answer))
    counts = {g: sum(q.reason.startswith(f"{g}:") for q in dropped) for g in GATES}
    # The order outputs met the gates in: with teacher solutions, the teacher's solution is checked last.
    order = GATES if own else ("parse", "decontaminate", "near_duplicate", "solvable", "answer", "calculator")
    return kept, dropped, {"written": len(outputs), "kept": len(kept), "dropped": counts,
                           "gate_order": list(order), **spent}


def synthesized(cfg: SynthesisConfig, run: Run, shard: int, meter: Meter) -> list[Problem]:
    """The synthesized problems that pass every gate; each dropped output is refused as `gate: reason`."""
    t0 = time.perf_counter()
    kept, dropped, summary = apply_gates(cfg.gates, cfg.teacher, run.lake, run.seed, run.read(OUTPUTS),
                                         run.grading)
    for q in dropped:
        meter.refuse(q.origin, q.reason, q.excerpt)
    meter.add(**summary, gate_seconds=round(time.perf_counter() - t0, 2))
    return kept


def _summarize(cfg: SynthesisConfig, run: Run, shards: list[dict]) -> dict:
    total = summed(cfg, run, shards)
    if not total["rows"]:
        raise ValueError(f"{STAGE}: no synthesized problem passed the gates ({total['written']} written; see the "
                         "quarantine)")
    return total


SYNTHESIZED = StageSpec(STAGE, Problem, "mathfactory.tasks.synthesis:SynthesisConfig", synthesized,
                        reads=(OUTPUTS.name,), summarize=_summarize,
                        identity=lambda c: {"gates": c.gates.model_dump(mode="json"),
                                            "teacher": c.teacher.model_dump(mode="json")})
SPECS = {STAGE: SYNTHESIZED}
