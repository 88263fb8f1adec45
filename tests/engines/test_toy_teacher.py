import random

import pytest

from mathfactory.tasks.core import formatting, synthesis
from mathfactory.tasks.core.calculator import check_annotations
from mathfactory.tasks.distill import load_templates
from mathfactory.tasks.domains import toy
from mathfactory.tasks.engines.base import Engine, SamplingParams
from mathfactory.tasks.engines.toy_teacher import CANNOT, ToyTeacher


@pytest.fixture(scope="module")
def templates():
    return load_templates("synthesis")


@pytest.fixture(scope="module")
def teacher(templates):
    return ToyTeacher(templates)


def test_it_is_an_engine(teacher):
    assert isinstance(teacher, Engine)


@pytest.mark.parametrize("stage", toy.LEVELS)
def test_math_texts_give_solvable_problems_of_the_stage_about_the_text(teacher, templates, stage):
    for kind, text in toy.corpus(12, 5):
        if kind == "noise":
            continue
        out = synthesis.parse(teacher.answer(templates.render(stage, text), random.Random(0)))
        assert out.answer is not None and check_annotations(out.solution) == (len(out.steps), 0)
        solved = toy.solve(out.question)
        assert solved is not None and str(solved[1]) == out.answer
        item = next(i for i in toy.ITEMS if i in text)
        assert item in out.question  # the seed text shapes the problem
        spec = next(s for s in toy.BY_LEVEL if s.name == stage)
        assert len(out.steps) >= spec.steps[0]


def test_off_topic_prose_only_gives_a_word_counting_riddle_the_solver_cannot_check(teacher, templates):
    text = next(t for k, t in toy.corpus(3, 0) if k == "noise")
    out = synthesis.parse(teacher.answer(templates.render("college", text), random.Random(0)))
    assert out.question.startswith("How many words") and out.answer.isdigit()
    assert toy.solve(out.question) is None


def test_solve_prompts_are_answered_by_the_solver(teacher):
    p = toy.generate(1, "train", 0)[0]
    [[c]] = teacher.generate([formatting.prompt(p.question)], SamplingParams(temperature=0))
    assert c.text == formatting.completion(p.solution) and c.n_tokens == len(c.text.split()) and c.prompt_tokens > 0
    [[c]] = teacher.generate([formatting.prompt("What is love?")], SamplingParams(temperature=0))
    assert c.text == CANNOT


def test_samples_differ_by_seed_and_repeat_with_it(teacher, templates):
    prompt = templates.render("high_school", toy.corpus(1, 0)[0][1])
    a = teacher.generate([prompt, prompt], SamplingParams(n=3, temperature=1.0, seed=1))
    assert a == teacher.generate([prompt, prompt], SamplingParams(n=3, temperature=1.0, seed=1))
    texts = [c.text for cs in a for c in cs]
    assert len(set(texts)) == 6
    greedy = teacher.generate([prompt], SamplingParams(n=2, temperature=0))[0]
    assert greedy[0].text == greedy[1].text
