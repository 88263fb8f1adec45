import re
from collections import Counter

import pytest

from mathfactory.tasks.domains import toy

STEP = re.compile(r"<<(\d+)([-+*/])(\d+)=(\d+)>>(\d+)")
APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}


@pytest.fixture(scope="module")
def train():
    return toy.generate(2000, "train", seed=7)


def test_reproducible_from_the_seed(train):
    assert toy.generate(2000, "train", seed=7) == train
    assert toy.generate(50, "train", seed=8) != train[:50]


def test_train_and_test_are_disjoint_and_distinct(train):
    test = toy.generate(300, "test", seed=7)
    assert not {p.question for p in train} & {p.question for p in test}
    assert len({p.problem_id for p in train}) == len(train)
    assert all(p.split == "test" for p in test)


def test_solutions_are_gsm8k_format_and_arithmetically_right(train):
    for p in train:
        *steps, final = p.solution.split("\n")
        assert final == f"#### {p.answer}"
        last = None
        for line in steps:
            (a, op, b, c, shown), = STEP.findall(line)
            assert APPLY[op](int(a), int(b)) == int(c) == int(shown), line
            assert op != "/" or int(a) % int(b) == 0
            last = int(c)
        assert last == int(p.answer)


def test_stages_rise_in_steps_numbers_and_operations(train):
    by_stage = {s: [p for p in train if p.level == s] for s in toy.LEVELS}
    assert Counter(p.level for p in train) == {s: 400 for s in toy.LEVELS}
    mean_steps = [sum(p.solution.count("\n") for p in ps) / len(ps) for ps in by_stage.values()]
    assert mean_steps == sorted(mean_steps) and mean_steps[0] == 2
    assert min(p.solution.count("\n") for p in by_stage["competition"]) >= 8
    assert min(p.solution.count("\n") for p in by_stage["college"]) >= 8
    ops = {s: {op for p in ps for _, op, *_ in STEP.findall(p.solution)} for s, ps in by_stage.items()}
    assert ops["grade_school"] == {"+", "-"} and ops["high_school"] == {"+", "-", "*", "/"}
    top = [max(int(p.answer) for p in ps) for ps in by_stage.values()]
    assert top[0] < top[2] < top[4]


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="split"):
        toy.generate(1, "dev", seed=0)
    with pytest.raises(ValueError, match="unknown toy level"):
        toy.generate(1, "train", seed=0, levels=["kindergarten"])


def test_the_solver_reproduces_every_reference_solution():
    for p in toy.generate(300, "train", 3) + toy.generate(50, "test", 3):
        assert toy.solve(p.question) == (p.solution, int(p.answer))


@pytest.mark.parametrize("question", [
    "Ava has 3 apples. How many apples does Ben have now?",  # nobody called Ben
    "Ava has 3 apples. Ava gives away 5 apples. How many apples does Ava have now?",  # below zero
    "Ava has 7 apples. Ava splits the apples into 2 equal piles and keeps one. How many apples does Ava have now?",
    "The museum opens at dawn. How many words are in it?",
    "Ava has 3 apples. Ava finds 2 more apples. How many apples do Ava and Ava have together?",
])
def test_the_solver_refuses_what_has_no_whole_answer_or_is_not_toy(question):
    assert toy.solve(question) is None


def test_the_corpus_mixes_stories_lessons_and_off_topic_prose_deterministically():
    texts = toy.corpus(30, 0)
    assert texts == toy.corpus(30, 0) and texts != toy.corpus(30, 1)
    assert [k for k, _ in texts[:3]] == ["story", "lesson", "noise"]
    noise = [t for k, t in texts if k == "noise"]
    assert not any(ch.isdigit() for t in noise for ch in t)
    assert all(any(ch.isdigit() for ch in t) for k, t in texts if k != "noise")
