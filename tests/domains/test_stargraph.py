"""The path-star graph domain: generator, the path grader it relies on, its steps and how the tiny tokenizer reads it."""

import random
from collections import Counter
from itertools import pairwise
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from mathfactory.flows.config import load_preset
from mathfactory.tasks import problems as problems_stage
from mathfactory.tasks.core import formatting, grading
from mathfactory.tasks.core.grading import grade_fast
from mathfactory.tasks.core.steps import split_steps, style_for
from mathfactory.tasks.domains import stargraph
from mathfactory.tasks.domains.stargraph import StarGraph
from mathfactory.tasks.judge import Judge
from mathfactory.tasks.problems import ProblemsConfig


@pytest.fixture(scope="module")
def train():
    return stargraph.generate(600, "train", seed=7)


def test_reproducible_from_the_seed(train):
    assert stargraph.generate(600, "train", seed=7) == train
    assert stargraph.generate(50, "train", seed=8) != train[:50]


def test_train_and_test_are_disjoint_and_distinct(train):
    test = stargraph.generate(100, "test", seed=7)
    assert not {p.question for p in train} & {p.question for p in test}
    assert len({p.problem_id for p in train}) == len(train)
    assert {p.split for p in test} == {"test"} and {p.split for p in train} == {"train"}
    assert all(stargraph.split_of(p.question) == p.split for p in train + test)


def test_every_problem_is_a_star_graph_of_its_level_with_a_valid_reference_path(train):
    assert Counter(p.level for p in train) == {level: 200 for level in stargraph.LEVELS}
    for p in train:
        degree, length = stargraph.parse_level(p.level)
        edges, start, goal = stargraph.parse_question(p.question)
        assert len(edges) == len(set(edges)) == degree * length
        out, into = Counter(a for a, _ in edges), Counter(b for _, b in edges)
        nodes = set(out) | set(into)
        assert len(nodes) == degree * length + 1 and nodes <= set(stargraph.LABELS)
        assert out[start] == degree and into[start] == 0
        assert all(into[v] == 1 and out[v] <= 1 for v in nodes - {start})
        leaves = {v for v in nodes if out[v] == 0}
        assert len(leaves) == degree and goal in leaves
        path = [int(v) for v in p.answer.split(">")]
        assert len(path) == length + 1 and stargraph.is_path(edges, start, goal, path)
        assert p.solution == "\n".join([*(f"{a}>{b}" for a, b in pairwise(path)), f"#### {p.answer}"])
        assert p.source == "stargraph" and p.problem_id


def test_the_edge_order_gives_no_arm_away(train):
    """Were edges listed arm by arm, the first listed edge out of the start would be the right first move; shuffled,
    it is the goal's arm about 1/degree of the time, and the first edge listed leaves the start only now and then."""
    d2 = [p for p in train if p.level == "d2-l5"]
    first_out, first_listed_from_start = 0, 0
    for p in d2:
        edges, start, _ = stargraph.parse_question(p.question)
        first_out += next(b for a, b in edges if a == start) == int(p.answer.split(">")[1])
        first_listed_from_start += edges[0][0] == start
    assert 0.35 < first_out / len(d2) < 0.65
    assert first_listed_from_start / len(d2) < 0.4  # 2 of 10 edges leave the start


@pytest.mark.parametrize("args, match", [
    (dict(split="dev"), "split"),
    (dict(levels=["grade_school"]), "unknown star-graph level"),
    (dict(levels=["d1-l5"]), "must be >= 2"),
    (dict(levels=["d10-l9"]), "91 nodes need more than 90 labels"),
    (dict(levels=[]), "no star-graph levels"),
])
def test_bad_arguments_name_the_problem(args, match):
    with pytest.raises(ValueError, match=match):
        stargraph.generate(1, **{"split": "train", "seed": 0, **args})


# --- grading: the path fast path -------------------------------------------------------------------------------

GRAPH = StarGraph(start=13, arms=((42, 17, 71), (25, 39, 60)), goal_arm=0)
QUESTION = stargraph.question_of(GRAPH, random.Random(0))
GOLD = stargraph.answer_of(GRAPH.path)  # 13>42>17>71


@pytest.mark.parametrize("completion, reason, predicted", [
    ("13>42\n42>17\n17>71\n#### 13>42>17>71", "correct", "13>42>17>71"),
    ("13>42\n42>17\n17>71\n####   13 > 42 >17 > 71  \n", "correct", "13 > 42 >17 > 71"),  # extra whitespace
    ("#### 13>42>17>71.", "correct", "13>42>17>71"),  # a closing full stop
    ("13>25\n25>39\n39>60\n#### 13>25>39>60", "wrong", "13>25>39>60"),  # the other arm: a real path, to the wrong leaf
    ("13>42\n42>39\n39>71\n#### 13>42>39>71", "wrong", "13>42>39>71"),  # 42>39 is no edge
    ("13>25\n25>39\n39>71\n#### 13>25>39>71", "wrong", "13>25>39>71"),  # the wrong arm, then a jump to the goal
    ("13>42\n42>17\n#### 13>42>17", "wrong", "13>42>17"),  # stops short of the goal
    ("#### 42>17>71", "wrong", "42>17>71"),  # the start left out
    ("#### 13>42>17>71>60", "wrong", "13>42>17>71>60"),  # past the goal
    ("#### 013>42>17>71", "wrong", "013>42>17>71"),  # labels are read as written
    ("13>42\n42>17", "wrong", "17"),  # cut off before `####`: the last number is a one-node path
    ("13>42", "wrong", "13>42"),  # cut off after one line: a bare path
    ("", "no_answer", None),
    ("I cannot tell.", "no_answer", None),
    ("13>42\n42>17\n17>71\n#### 13>42>>17>71", "unparseable", "13>42>>17>71"),
    ("13>42\n42>17\n#### 13>42>", "unparseable", "13>42>"),  # truncated mid-path
    ("#### three>twelve", "unparseable", "three>twelve"),
])
def test_path_answers_are_graded_node_by_node(completion, reason, predicted):
    grade = grade_fast(GOLD, completion)
    assert (grade.reason, grade.predicted, grade.correct) == (reason, predicted, reason == "correct")
    if predicted is not None and grade.reason != "unparseable":
        # What the grader's comparison with the reference path stands for: a walk from start to goal on the edges.
        edges, start, goal = stargraph.parse_question(QUESTION)
        labelled = [(str(a), str(b)) for a, b in edges]  # labels as written, as the grader reads them
        nodes = [v.strip() for v in predicted.split(">")]
        assert grade.correct == stargraph.is_path(labelled, str(start), str(goal), nodes)


def test_a_two_number_inequality_is_not_a_path_gold():
    # Paths have three nodes or more; a numeric comparison as a math gold stays with the numeric/LaTeX graders.
    assert grading.is_path_answer("13>42>17") and not grading.is_path_answer("3>2")
    assert not grading.is_path_answer("41")
    assert grade_fast("3>2", "#### 3>2") is None  # not decided by the path rule: the judge reads it


def test_path_answers_never_reach_math_verify(train):
    with Judge() as judge:
        grades = judge.grade_many([(p.answer, formatting.completion(p.solution)) for p in train[:50]]
                                  + [(GOLD, "#### 13>25>39>60"), ("41", "#### 41")])
        assert [g.reason for g in grades] == ["correct"] * 50 + ["wrong", "correct"]
        assert judge.started == 0


# --- steps and tokens ------------------------------------------------------------------------------------------

def test_steps_are_the_moves_and_step_one_is_the_first_move(train):
    for p in train[:60]:
        _, length = stargraph.parse_level(p.level)
        nodes = p.answer.split(">")
        completion = formatting.completion(p.solution)
        steps = split_steps(completion, style_for("auto", p.source))
        assert len(steps) == length
        assert [s.text.split("\n")[0] for s in steps] == [f"{a}>{b}" for a, b in pairwise(nodes)]
        assert steps[-1].text == f"{nodes[-2]}>{nodes[-1]}\n#### {p.answer}"
        # The prefix credit continues after step 1: the start and the first move, nothing else.
        assert completion[: steps[0].end] == f"{nodes[0]}>{nodes[1]}\n"


def test_the_tiny_tokenizer_keeps_every_label_whole_as_its_digits(train):
    from mathfactory.tasks.models.tiny import train_tokenizer
    from mathfactory.tasks.policy import sft_rows

    rows = sft_rows(train)
    tok = train_tokenizer((r["prompt"] + r["completion"] for r in rows), 512)
    for text, pieces in [("41", ["4", "1"]), ("10", ["1", "0"]), ("99", ["9", "9"]), ("13>42", ["1", "3", ">", "4", "2"]),
                         ("13\n42\n", ["1", "3", "\n", "4", "2", "\n"])]:
        assert [tok.decode([i]) for i in tok(text)["input_ids"]] == pieces
    for r in rows[:50]:
        text = r["prompt"] + r["completion"]
        pieces = [tok.decode([i]) for i in tok(text)["input_ids"]]
        assert "".join(pieces) == text
        # No token joins a digit to anything else, so a label is exactly its digits, one token each.
        assert all(len(t) == 1 for t in pieces if any(c.isdigit() for c in t))


# --- the problems stage and the preset -------------------------------------------------------------------------

def test_the_problems_stage_takes_star_graph_levels_only():
    with pytest.raises(ValidationError, match="unknown star-graph level 'grade_school'"):
        ProblemsConfig(source="stargraph")  # the toy's default levels
    cfg = ProblemsConfig(source="stargraph", levels=["d3-l4"], seed=5, n_train=20)
    assert problems_stage._source(cfg, "train", SimpleNamespace(seed=0)) == stargraph.generate(20, "train", 5,
                                                                                                ["d3-l4"])


def test_the_preset_runs_every_stage_on_star_graphs():
    cfg = load_preset("stargraph")
    assert cfg.problems.source == "stargraph" and cfg.name == "stargraph"
    assert {"rft", "step_dpo"} <= set(cfg.train.methods)
    assert 4 <= cfg.sample.n <= 8
