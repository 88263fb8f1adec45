"""Seed -> path-star graph problems (Bachmann & Nagarajan 2024; Setlur et al. 2024, Figure 8): a shuffled edge list,
a start and a goal in; the path from start to goal out, one move per solution line.

A star graph has a start node with `degree` arms, each a path of `length` nodes; the goal is the last node of one
arm. Labels are distinct integers drawn from `labels`, more than the graph has nodes, so no label says where it
sits. A level names the shape, `d{degree}-l{length}` (any such name is valid; LEVELS are the documented ones).

The solution takes one move per line, written as the edge it follows (`13>42`), then `#### start>...>goal`. Written
so, every move after the first is the Clever Hans shortcut in its plainest form: copy the list entry that begins
`42>`, a match of what the line already says (with one bare node per line, a 4-layer tiny policy had not learnt
that lookup in 2000 steps). Step 1 is the first move, the one decision that needs planning back from the goal, and
with step 0 (the question alone) a rollout's credit has length+1 Q-values.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from mathfactory.tasks.core.records import Problem, stable_id
from mathfactory.tasks.domains import distinct

# Two digits each: the tiny tokenizer splits every digit, so every label is two tokens and every edge `ab>cd` five,
# and the lookup the Clever Hans shortcut needs has one shape (labels of one or two digits would give it four).
LABELS = range(10, 100)
# Chance at the first move is 1/degree; the arm's length is how far back from the goal the first move must be
# planned (in d2-l2 one edge lookup finds it, so nothing is left to plan).
LEVELS = ("d2-l5", "d3-l4", "d5-l5")
TEST_FRACTION = 0.1
SEP = ">"  # between the two ends of an edge and between the nodes of a path

_LEVEL = re.compile(r"d([0-9]+)-l([0-9]+)")
_QUESTION = re.compile(r"Edges: ((?:[0-9]+>[0-9]+, )*[0-9]+>[0-9]+)\. Start: ([0-9]+)\. Goal: ([0-9]+)\.")


@dataclass(frozen=True)
class StarGraph:
    start: int
    arms: tuple[tuple[int, ...], ...]  # each arm's nodes after the start, in path order
    goal_arm: int  # the arm whose last node is the goal

    @property
    def goal(self) -> int:
        return self.arms[self.goal_arm][-1]

    @property
    def path(self) -> tuple[int, ...]:
        """The one path from the start to the goal."""
        return (self.start, *self.arms[self.goal_arm])

    def edges(self) -> list[tuple[int, int]]:
        return [(a, b) for arm in self.arms for a, b in pairwise((self.start, *arm))]


def parse_level(name: str, labels: range = LABELS) -> tuple[int, int]:
    """(degree, length) of a level name `d{degree}-l{length}`; ValueError if it is not one that fits `labels`."""
    m = _LEVEL.fullmatch(name)
    if m is None:
        raise ValueError(f"unknown star-graph level {name!r}: levels are named d{{degree}}-l{{length}}, e.g. "
                         f"{', '.join(LEVELS)}")
    degree, length = int(m.group(1)), int(m.group(2))
    if degree < 2 or length < 2:
        raise ValueError(f"star-graph level {name!r}: degree and length must be >= 2 (one arm, or arms of one node, "
                         "leave nothing to plan)")
    if degree * length + 1 >= len(labels):
        raise ValueError(f"star-graph level {name!r}: {degree * length + 1} nodes need more than {len(labels)} labels")
    return degree, length


def make_graph(rng: random.Random, degree: int, length: int, labels: range = LABELS) -> StarGraph:
    nodes = rng.sample(labels, degree * length + 1)
    arms = tuple(tuple(nodes[1 + i * length : 1 + (i + 1) * length]) for i in range(degree))
    return StarGraph(nodes[0], arms, rng.randrange(degree))


def question_of(graph: StarGraph, rng: random.Random) -> str:
    """The question: every edge, in random order (so the list's order gives no arm away), then start and goal."""
    edges = graph.edges()
    rng.shuffle(edges)
    listed = ", ".join(f"{a}{SEP}{b}" for a, b in edges)
    return f"Edges: {listed}. Start: {graph.start}. Goal: {graph.goal}."


def answer_of(path: Sequence[int]) -> str:
    return SEP.join(map(str, path))


def solution_of(graph: StarGraph) -> str:
    """One move per line, written as the edge it takes (`13>42`), then `#### start>...>goal`."""
    moves = [f"{a}{SEP}{b}" for a, b in pairwise(graph.path)]
    return "\n".join([*moves, f"#### {answer_of(graph.path)}"])


def parse_question(question: str) -> tuple[list[tuple[int, int]], int, int] | None:
    """(edges, start, goal) of a star-graph question, or None if it is not one."""
    m = _QUESTION.fullmatch(question.strip())
    if m is None:
        return None
    edges = [tuple(map(int, e.split(SEP))) for e in m.group(1).split(", ")]
    return edges, int(m.group(2)), int(m.group(3))  # type: ignore[return-value]


def is_path(edges: Sequence[tuple[object, object]], start: object, goal: object, nodes: Sequence[object]
            ) -> bool:
    """Whether `nodes` walks from `start` to `goal` along `edges`. In a star graph only the reference path does, so
    the grader's node-by-node comparison with the gold answer is this check (tests hold the two together)."""
    have = set(edges)
    return (len(nodes) >= 2 and nodes[0] == start and nodes[-1] == goal
            and all((a, b) in have for a, b in pairwise(nodes)))


def split_of(question: str) -> str:
    """The split a question belongs to, fixed by its text alone: train and test can never share a question."""
    return "test" if int(stable_id("stargraph-split", question), 16) % 1000 < TEST_FRACTION * 1000 else "train"


def generate(n: int, split: str, seed: int, levels: Sequence[str] = LEVELS, labels: range = LABELS) -> list[Problem]:
    """`n` distinct problems of `split`, cycling through `levels`; the same arguments give the same problems."""
    if not levels:
        raise ValueError("no star-graph levels given")
    shapes = [parse_level(name, labels) for name in levels]
    rng = random.Random(f"stargraph-{seed}-{split}")

    def candidate(i: int) -> Problem:
        degree, length = shapes[i % len(shapes)]
        graph = make_graph(rng, degree, length, labels)
        question = question_of(graph, rng)
        return Problem(stable_id("stargraph", question), "stargraph", split_of(question), f"d{degree}-l{length}",
                       question, solution_of(graph), answer_of(graph.path))

    return distinct(n, split, candidate, f"star graphs for levels {list(levels)}")
