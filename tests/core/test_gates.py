import json
import re
import tracemalloc

import pytest

from mathfactory.tasks.core.gates import Decontaminator, NearDuplicates, normalize
from mathfactory.tasks.domains.toy import generate

GSM8K_PLANTED = 0  # "Janet's ducks lay 16 eggs per day..." (53 words)


def _rows(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def test_sets(shared_data) -> dict[str, str]:
    """origin -> question of GSM8K test and MATH500 test, as a caller would build the gate."""
    gsm8k = {f"gsm8k/test.jsonl:{i}": r["question"] for i, r in enumerate(_rows(shared_data / "gsm8k/test.jsonl"))}
    math500 = {f"math500/test.jsonl:{i}": r["problem"] for i, r in enumerate(_rows(shared_data / "math500/test.jsonl"))}
    return gsm8k | math500


@pytest.fixture(scope="module")
def gate(test_sets) -> Decontaminator:
    return Decontaminator(test_sets.items())


@pytest.fixture(scope="module")
def toy() -> list[str]:
    return [p.question for p in generate(200, "train", 0)]


def _planted(toy: list[str], text: str, at: int = 100) -> list[str]:
    return toy[:at] + [text] + toy[at:]


@pytest.mark.parametrize("text, words", [
    ("Janet’s ducks lay 16 eggs.", ["janet", "s", "ducks", "lay", "16", "eggs"]),
    ("  JANET'S\tducks  lay 16 eggs ", ["janet", "s", "ducks", "lay", "16", "eggs"]),
    ("per day.She eats", ["per", "day", "she", "eats"]),  # a missing space after a full stop
    ("the x-axis, the x axis", ["the", "x", "axis", "the", "x", "axis"]),
    ("Simplify $\\sqrt{242}$.", ["simplify", "sqrt", "242"]),
    ("ﬁve ＡＢＣ", ["five", "abc"]),  # NFKC: ligature and full-width letters
    ("...", []),
])
def test_normalize(text, words):
    assert normalize(text) == words


REPHRASINGS = {
    "upper case": str.upper,
    "extra whitespace": lambda t: re.sub(r" ", "   ", t).replace(". ", ".\n\n"),
    "missing space after full stop": lambda t: t.replace(". ", "."),
    "punctuation removed": lambda t: re.sub(r"[’',.?$]", "", t),
    "punctuation changed": lambda t: t.replace(".", ";").replace("’", "'").replace("?", "!"),
    "all of them": lambda t: re.sub(r"[,?]", "", t.lower().replace(". ", ".").replace("’", " ")),
}


@pytest.mark.parametrize("rephrase", REPHRASINGS.values(), ids=REPHRASINGS.keys())
def test_decontaminator_drops_exactly_the_planted_gsm8k_question(gate, test_sets, toy, rephrase):
    origin = f"gsm8k/test.jsonl:{GSM8K_PLANTED}"
    problems = _planted(toy, rephrase(test_sets[origin]))
    assert problems[100] != test_sets[origin]
    assert [(i, gate.match(p)) for i, p in enumerate(problems) if gate.match(p)] == [(100, origin)]


@pytest.mark.parametrize("planted, origin", [
    # LaTeX reflowed and its dollar signs dropped
    ("Let a be a positive real number such that all the roots of x^3+ax^2+ax+1=0 are real. Find the smallest "
     "possible value of a.", "math500/test.jsonl:19"),
    # a problem shorter than n words, inside a longer synthetic one
    ("First simplify \\sqrt{242}, then add 3 to the result.", "math500/test.jsonl:31"),
])
def test_decontaminator_catches_a_planted_math500_problem(gate, test_sets, toy, planted, origin):
    assert planted not in test_sets.values()
    problems = _planted(toy, planted)
    assert [(i, gate.match(p)) for i, p in enumerate(problems) if gate.match(p)] == [(100, origin)]


@pytest.mark.parametrize("text, origin", [
    ("Simplify $\\sqrt{242}$.", "math500/test.jsonl:31"),
    ("Simplify $\\sqrt{243}$.", None),  # a short item matches only as a whole
    ("Ducks lay 16 eggs per day. She eats three", None),  # 9 words of a long item: below n
    ("Ducks lay 16 eggs per day. She eats three for", "gsm8k/test.jsonl:0"),  # 10 words: one n-gram
])
def test_decontaminator_needs_a_whole_gram(gate, text, origin):
    assert gate.match(text) == origin


@pytest.mark.parametrize("n", [3, 10, 13])
def test_decontaminator_stores_one_hash_per_distinct_gram(test_sets, n):
    grams = set()
    for text in test_sets.values():
        words = normalize(text)
        grams.update(tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1)))
    assert len(Decontaminator(test_sets.items(), n)) == len(grams)  # 65,271 for n=10, from 81,653 words


def test_decontaminator_streams_problems_in_bounded_memory(gate, test_sets):
    """Problems come from a generator, one at a time: the stored grams and the traced memory stay flat. (A small
    vocabulary keeps the gate's bounded word-hash cache small, so any growth here would be per-problem state.)"""
    planted = test_sets["gsm8k/test.jsonl:17"]
    pulled = 0

    def problems(n: int):
        nonlocal pulled
        for i in range(n):
            pulled += 1
            yield planted if i % 1000 == 0 else f"Sam has {i % 97} apples and buys {i % 13} more. How many now?"

    stored = len(gate)
    stream = (gate.match(p) for p in problems(5_000))
    next(stream)
    assert pulled == 1  # lazy: nothing read ahead
    tracemalloc.start()
    try:
        hits = 1 + sum(origin is not None for origin in stream)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (pulled, hits, len(gate)) == (5_000, 5, stored)
    assert peak < 64_000  # 5k problems held would be a megabyte


def _one_word_changed(text: str) -> str:
    return text.replace("three", "four", 1)


NEAR_DUPLICATES = {
    "one word changed": _one_word_changed,
    "punctuation reordered": lambda t: t.replace(". ", ", ").replace("?", "."),
    "case and whitespace": lambda t: t.upper().replace(" ", "  "),
    "number changed": lambda t: t.replace("16", "18", 1),
}


@pytest.mark.parametrize("mutate", NEAR_DUPLICATES.values(), ids=NEAR_DUPLICATES.keys())
def test_near_duplicates_catch_the_planted_copy_and_nothing_else(test_sets, toy, mutate):
    original = test_sets[f"gsm8k/test.jsonl:{GSM8K_PLANTED}"]
    assert mutate(original) != original
    stream = [("original", original)] + [(f"toy:{i}", q) for i, q in enumerate(_planted(toy, mutate(original)))]
    gate = NearDuplicates()
    flagged = [(key, earlier) for key, text in stream if (earlier := gate.first_seen(key, text))]
    assert flagged == [("toy:100", "original")]  # and none of the 200 templated toy problems
    assert len(gate) == 201


def test_near_duplicates_keep_every_distinct_real_problem(test_sets):
    gate = NearDuplicates()
    assert [k for k, t in test_sets.items() if gate.first_seen(k, t)] == []
    assert len(gate) == len(test_sets)


def test_near_duplicates_keep_a_short_problem_with_one_word_changed():
    """In 9 words one changed word breaks 3 of 7 shingles: Jaccard 4/10, far below 0.8."""
    gate = NearDuplicates()
    assert gate.first_seen("a", "Sam has 3 apples and buys 4 more pears.") is None
    assert gate.first_seen("b", "Sam has 3 apples and buys 5 more pears.") is None
    assert gate.first_seen("c", "sam has 3 apples, and buys 5 more pears") == "b"


def test_near_duplicates_are_deterministic(test_sets, toy):
    text = test_sets[f"gsm8k/test.jsonl:{GSM8K_PLANTED}"]
    assert (NearDuplicates().sketch(text).hashvalues == NearDuplicates().sketch(text).hashvalues).all()
    assert not (NearDuplicates(seed=2).sketch(text).hashvalues == NearDuplicates().sketch(text).hashvalues).all()
    runs = []
    for _ in range(2):
        gate = NearDuplicates(threshold=0.5)
        runs.append([gate.first_seen(str(i), q) for i, q in enumerate(toy)])
    assert runs[0] == runs[1] and any(runs[0])  # threshold 0.5 does merge templated problems
