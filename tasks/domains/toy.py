"""Seed -> toy arithmetic word problems with GSM8K-format solutions: the built-in teacher of the embedded default.

Each problem is a story of running quantities; each sentence is one operation and each solution line one step
(`... = <<a+b=c>>c ...`), ending with `#### N`. Education levels rise in steps, number size and operation kinds;
the two upper levels follow two people and combine them at the end (8+ steps), which the credit stage needs.
A question belongs to the test split iff its hash says so, so splits are disjoint by construction.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mathfactory.tasks.core.records import Problem, stable_id
from mathfactory.tasks.domains import distinct


@dataclass(frozen=True)
class Level:
    name: str
    steps: tuple[int, int]  # operations per person (inclusive range)
    limit: int  # every intermediate quantity stays in [1, limit]
    ops: str  # operation kinds available: + - * /
    people: int  # upper levels track two people and add a combining step


BY_LEVEL = (
    Level("grade_school", (2, 2), 10, "+-", 1),
    Level("middle_school", (3, 3), 15, "+-*", 1),
    Level("high_school", (4, 5), 20, "+-*/", 1),
    Level("college", (4, 4), 25, "+-*/", 2),
    Level("competition", (5, 5), 30, "+-*/", 2),
)
LEVELS = tuple(level.name for level in BY_LEVEL)
TEST_FRACTION = 0.1

NAMES = ("Ava", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jade", "Kai", "Lena", "Milo", "Nora",
         "Omar", "Pia", "Quin", "Rosa", "Sam", "Tara", "Uma", "Vic", "Wes", "Yara", "Zoe")
ITEMS = ("apples", "marbles", "stickers", "books", "coins", "cards", "shells", "pencils", "stamps", "beads",
         "cookies", "plums")

# (question sentence, solution line) per operation; {p} person, {n} operand, {a} before, {c} after, {i} item
TEMPLATES = {
    "+": ("{p} finds {n} more {i}.", "{p} finds {n}, so {a}+{n}=<<{a}+{n}={c}>>{c} {i}."),
    "-": ("{p} gives away {n} {i}.", "{p} gives away {n}, so {a}-{n}=<<{a}-{n}={c}>>{c} {i}."),
    "*": ("{p} makes the pile {n} times as big.", "The pile grows {n} times, so {a}*{n}=<<{a}*{n}={c}>>{c} {i}."),
    "/": ("{p} splits the {i} into {n} equal piles and keeps one.",
          "{p} keeps one of {n} piles, so {a}/{n}=<<{a}/{n}={c}>>{c} {i}."),
}


def _step(rng: random.Random, a: int, level: Level) -> tuple[str, int, int] | None:
    """One operation on quantity `a` that keeps the result in [1, limit]; None if no kind fits."""
    kinds = list(level.ops)
    rng.shuffle(kinds)
    for op in kinds:
        if op == "+" and a < level.limit:
            n = rng.randint(1, min(level.limit - a, max(9, level.limit // 3)))
            return op, n, a + n
        if op == "-" and a > 1:
            n = rng.randint(1, a - 1)
            return op, n, a - n
        if op == "*" and 2 * a <= level.limit:
            n = rng.randint(2, min(5, level.limit // a))
            return op, n, a * n
        if op == "/":
            divisors = [d for d in range(2, 6) if a % d == 0]
            if divisors:
                n = rng.choice(divisors)
                return op, n, a // n
    return None


def _story(rng: random.Random, level: Level, person: str, item: str, start: int | None = None
           ) -> tuple[list[str], list[str], int]:
    """One person's chain: question sentences, solution lines, final quantity."""
    a = rng.randint(2, max(3, level.limit // 3)) if start is None else start
    question, solution = [f"{person} has {a} {item}."], []
    for _ in range(rng.randint(*level.steps)):
        step = _step(rng, a, level)
        if step is None:
            break
        op, n, c = step
        q, s = TEMPLATES[op]
        question.append(q.format(p=person, n=n, i=item))
        solution.append(s.format(p=person, n=n, a=a, c=c, i=item))
        a = c
    return question, solution, a


def make_problem(rng: random.Random, level: Level, item: str | None = None, people: Sequence[str] = (),
                 starts: Sequence[int] = ()) -> tuple[str, str, int]:
    """(question, GSM8K-format solution, answer) for one random problem of `level`; the toy teacher passes the
    item, people and starting quantities it found in a seed text."""
    item = item or rng.choice(ITEMS)
    people = list(people[:level.people])
    if len(people) < level.people:
        people += rng.sample([n for n in NAMES if n not in people], level.people - len(people))
    stories = [_story(rng, level, p, item, starts[i] if i < len(starts) else None) for i, p in enumerate(people)]
    question = " ".join(" ".join(q) for q, _, _ in stories)
    solution = [line for _, s, _ in stories for line in s]
    if level.people == 1:
        answer = stories[0][2]
        question += f" How many {item} does {people[0]} have now?"
    else:
        (_, _, x), (_, _, y) = stories
        answer = x + y
        question += f" How many {item} do {people[0]} and {people[1]} have together?"
        solution.append(f"Together they have {x}+{y}=<<{x}+{y}={answer}>>{answer} {item}.")
    solution.append(f"#### {answer}")
    return question, "\n".join(solution), answer


def split_of(question: str) -> str:
    """The split a question belongs to, fixed by its text alone: train and test can never share a question."""
    return "test" if int(stable_id("toy-split", question), 16) % 1000 < TEST_FRACTION * 1000 else "train"


def generate(n: int, split: str, seed: int, levels: Sequence[str] = LEVELS) -> list[Problem]:
    """`n` distinct problems of `split`, cycling through `levels`; the same arguments give the same problems."""
    by_name = {s.name: s for s in BY_LEVEL}
    unknown = [s for s in levels if s not in by_name]
    if unknown:
        raise ValueError(f"unknown toy level(s) {unknown}; valid: {list(by_name)}")
    rng = random.Random(f"toy-{seed}-{split}")

    def candidate(i: int) -> Problem:
        level = by_name[levels[i % len(levels)]]
        question, solution, answer = make_problem(rng, level)
        return Problem(stable_id("toy", question), "toy", split_of(question), level.name, question, solution,
                       str(answer))

    return distinct(n, split, candidate, f"problems for levels {list(levels)}")


# -- seed texts and a solver: what the toy teacher reads and how it checks a problem -------------------------

PLACES = ("the museum", "the garden", "the harbour", "the old library", "the market square", "the hill path")
NOISE = ("{place} opens at dawn and stays quiet until noon.", "Visitors walk slowly through {place}.",
         "Rain fell all morning over {place}.", "Nobody remembers who built {place}.",
         "The light in {place} changes with the seasons.", "Birds nest under the roof of {place}.")
LESSONS = {"+": "Adding joins two amounts: {a} {i} and {n} more {i} make {a}+{n}={c} {i}.",
           "-": "Taking away leaves less: {a} {i} minus {n} {i} leaves {a}-{n}={c} {i}.",
           "*": "Multiplying counts equal groups: {n} groups of {a} {i} make {a}*{n}={c} {i}.",
           "/": "Dividing shares equally: {a} {i} split into {n} equal piles give {a}/{n}={c} {i} per pile."}
KINDS = ("story", "lesson", "noise")


def seed_text(rng: random.Random, kind: str) -> str:
    """A few sentences of math text (story, lesson) or of prose with no mathematics in it (noise)."""
    item, place = rng.choice(ITEMS), rng.choice(PLACES)
    if kind == "noise":
        sentences = (s.format(place=place) for s in rng.sample(NOISE, 3))
        return " ".join(s[0].upper() + s[1:] for s in sentences)
    if kind == "lesson":
        lines = []
        for op in rng.sample("+-*/", 2):
            step = _step(rng, rng.randint(4, 20), Level("", (1, 1), 30, op, 1))
            if step is not None:
                lines.append(LESSONS[op].format(a=int(_lesson_base(op, step)), n=step[1], c=step[2], i=item))
        return " ".join(lines) or f"Counting {item} one by one gives their number."
    a, b = rng.sample(NAMES, 2)
    x, y = rng.randint(2, 9), rng.randint(2, 9)
    return (f"{a} collects {item} and keeps them in {place}. {a} has {x} {item} and {b} has {y} {item}. "
            f"Every week they trade {item}, so their piles keep changing.")


def _lesson_base(op: str, step: tuple[str, int, int]) -> int:
    _, n, c = step
    return {"+": c - n, "-": c + n, "*": c // n, "/": c * n}[op]


def corpus(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` (kind, text) seed texts: stories and lessons to write problems from, and off-topic prose (one in
    three) that a selection step should learn to pass over."""
    rng = random.Random(f"toy-corpus-{seed}")
    return [(kind, seed_text(rng, kind)) for kind in (KINDS[i % 3] for i in range(n))]


_SENTENCES = [
    (re.compile(r"(\w+) has (\d+) (\w+)\."), None),
    (re.compile(r"(\w+) finds (\d+) more (\w+)\."), "+"),
    (re.compile(r"(\w+) gives away (\d+) (\w+)\."), "-"),
    (re.compile(r"(\w+) makes the pile (\d+) times as big\."), "*"),
    (re.compile(r"(\w+) splits the (\w+) into (\d+) equal piles and keeps one\."), "/"),
]
_ASK_ONE = re.compile(r"How many (\w+) does (\w+) have now\?")
_ASK_TWO = re.compile(r"How many (\w+) do (\w+) and (\w+) have together\?")


def solve(question: str) -> tuple[str, int] | None:
    """(GSM8K-format solution, answer) for a question in the toy domain's language, or None if it is not one or
    it has no whole, non-negative answer. The toy teacher answers solve prompts with it."""
    have: dict[str, int] = {}
    lines: list[str] = []
    *sentences, ask = re.split(r"(?<=[.?])\s+", question.strip())
    item = None
    for sentence in sentences:
        found = next(((m, op) for pattern, op in _SENTENCES if (m := pattern.fullmatch(sentence))), None)
        if found is None:
            return None
        m, op = found
        person = m.group(1)
        if op is None:
            if person in have:
                return None
            have[person], item = int(m.group(2)), item or m.group(3)
            continue
        n = int(m.group(3) if op == "/" else m.group(2))
        if person not in have or n == 0 or (op == "/" and have[person] % n):
            return None
        a = have[person]
        c = {"+": a + n, "-": a - n, "*": a * n, "/": a // n}[op]
        if c < 0:
            return None
        lines.append(TEMPLATES[op][1].format(p=person, n=n, a=a, c=c, i=item))
        have[person] = c
    one, two = _ASK_ONE.fullmatch(ask), _ASK_TWO.fullmatch(ask)
    if one and one.group(2) in have:
        answer = have[one.group(2)]
    elif two and two.group(2) in have and two.group(3) in have and two.group(2) != two.group(3):
        x, y = have[two.group(2)], have[two.group(3)]
        answer = x + y
        lines.append(f"Together they have {x}+{y}=<<{x}+{y}={answer}>>{answer} {item}.")
    else:
        return None
    return "\n".join([*lines, f"#### {answer}"]), answer
