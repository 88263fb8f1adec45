"""Stage synth_problems on planted outputs: each gate drops what it should, says why, and the counts add up."""

import random

import pytest

from mathfactory.tasks.core import synthesis
from mathfactory.tasks.core.records import Problem, SynthOutput
from mathfactory.tasks.distill import load_templates
from mathfactory.tasks.domains import toy
from mathfactory.tasks.engines.toy_teacher import ToyTeacher
from mathfactory.tasks.gate import GATES, SYNTHESIZED, GatesConfig
from mathfactory.tasks.stage import Run, build
from mathfactory.tasks.storage import Lake
from mathfactory.tasks.synthesis import SynthesisConfig

RUN = "gate-test"
# GSM8K test #0, lightly rephrased: case, whitespace and punctuation changed.
JANET = ("janet's ducks lay 16 eggs per day;  she eats three for breakfast every morning and bakes muffins for "
         "her friends every day with four.  She sells the remainder at the farmers market daily for $2 per fresh "
         "duck egg - how much in dollars does she make every day at the farmers' market")


def output(i: int, text: str) -> SynthOutput:
    return SynthOutput(f"out{i:02d}", f"seed{i}", "grade_school", text, len(text.split()), "stop")


@pytest.fixture(scope="module")
def gated(tmp_path_factory, shared_data):
    templates = load_templates("synthesis")
    teacher, stages = ToyTeacher(templates), toy.LEVELS * 4
    good = [teacher.answer(templates.render(stages[i], text), random.Random(i))
            for i, (kind, text) in enumerate(toy.corpus(16, 2)) if kind != "noise"]
    first = synthesis.parse(good[0])
    planted = {
        "decontaminate": synthesis.write(JANET, ["She sells 16-3-4=<<16-3-4=9>>9 eggs.",
                                                 "She makes 9*2=<<9*2=18>>18 dollars."], "18"),
        "near_duplicate": synthesis.write(first.question.replace(".", "!", 1), first.steps, first.answer),
        "parse": " Ava has 3 apples. How many does she have?",
        "answer": " Ava has 3 apples. How many does she have?\nSolution:\nShe has 3 apples.\n",
        "calculator": synthesis.write("Ava has 3 apples and finds 2 more. How many?", ["3+2=<<3+2=6>>6"], "6"),
        "solvable": synthesis.write(first.question.replace("How many", "So how many"), first.steps,
                                    str(int(first.answer) + 1)),
    }
    texts = good + list(planted.values())
    lake = str(tmp_path_factory.mktemp("lake"))
    Lake(lake).write_part(RUN, "synth_outputs", 0, SynthOutput, [output(i, t) for i, t in enumerate(texts)])
    Lake(lake).commit(RUN, "synth_outputs", SynthOutput)
    gates = GatesConfig(data_path=str(shared_data), solutions="synthesizer")
    build(SYNTHESIZED, SynthesisConfig(gates=gates), Run(lake=lake, run_id=RUN))
    out = {o: f"out{len(good) + k:02d}" for k, o in enumerate(planted)}
    return Lake(lake), good, out


def test_each_planted_output_is_dropped_by_its_gate_with_a_reason(gated):
    lake, good, planted = gated
    dropped = {q.origin: q.reason for q in lake.read_quarantine(RUN, "synth_problems")}
    assert set(dropped) == set(planted.values())
    for gate, origin in planted.items():
        assert dropped[origin].startswith(f"{gate}: "), (gate, dropped[origin])
    assert "gsm8k test" in dropped[planted["decontaminate"]]
    assert dropped[planted["near_duplicate"]] == "near_duplicate: near-duplicate of out00"
    assert "toy answered" not in dropped[planted["solvable"]] and "teacher answered" in dropped[planted["solvable"]]


def test_the_rest_are_kept_as_problems_and_the_counts_add_up(gated):
    lake, good, planted = gated
    kept = list(lake.read(RUN, "synth_problems", Problem))
    assert len(kept) == len(good) and all(p.source == "synth" and p.split == "train" for p in kept)
    assert all(toy.solve(p.question)[0] == p.solution for p in kept)
    m = lake.marker(RUN, "synth_problems")["metrics"]
    assert m["dropped"] == dict.fromkeys(GATES, 1) and m["kept"] == len(good) and m["written"] == len(good) + 6
    assert m["solve_teacher_calls"] == len(good) + 1  # one solve request per problem that reached the last gate


def test_with_teacher_solutions_only_the_problem_must_be_sound(tmp_path, shared_data):
    good = ToyTeacher(load_templates("synthesis")).answer(
        load_templates("synthesis").render("middle_school", toy.corpus(1, 0)[0][1]), random.Random(0))
    first = synthesis.parse(good)
    texts = [synthesis.write(first.question, ["so 1+1=<<1+1=3>>3"], "3"),  # sound problem, its solution wrong
             synthesis.write("How many words are in this sentence?", ["Count them."], "6")]  # not toy: unsolvable
    lake = str(tmp_path)
    Lake(lake).write_part(RUN, "synth_outputs", 0, SynthOutput, [output(i, t) for i, t in enumerate(texts)])
    Lake(lake).commit(RUN, "synth_outputs", SynthOutput)
    gates = GatesConfig(data_path=str(shared_data), solutions="teacher")
    build(SYNTHESIZED, SynthesisConfig(gates=gates), Run(lake=lake, run_id=RUN))
    [kept] = Lake(lake).read(RUN, "synth_problems", Problem)
    assert (kept.question, kept.solution, kept.answer) == (first.question, first.solution, first.answer)
    [dropped] = Lake(lake).read_quarantine(RUN, "synth_problems")
    assert dropped.origin == "out01" and dropped.reason == "solvable: the teacher found no answer"
    order = Lake(lake).marker(RUN, "synth_problems")["metrics"]["gate_order"]
    assert order.index("solvable") < order.index("calculator")  # the teacher's solution is checked after it
