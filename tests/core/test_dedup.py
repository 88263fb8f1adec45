"""Hand-made problems through the pure gates: exact and near duplicates within a run and against earlier runs,
test-set overlap by n-gram coverage, and clean problems kept."""

import tracemalloc

import pytest

from mathfactory.tasks.core.dedup import Repeats, earlier_runs, exact_key
from mathfactory.tasks.core.gates import Decontaminator, normalize

TEST_SET = {
    "test:0": "A bakery sells muffins for 3 dollars each and cookies for 2 dollars each. Mia buys 4 muffins and "
              "5 cookies for her class party. How much does Mia spend in all?",
    "test:1": "Simplify the square root of 242.",  # shorter than n: one gram, its whole text
}
EARLIER = {  # problems an earlier night committed
    "night1 problem a": "A farmer has 12 cows and buys 7 more at the spring market. Then he sells 4 cows to his "
                        "neighbour. How many cows does the farmer have now?",
    "night1 problem b": "Tom reads 15 pages of his book every evening for a whole week, and on Sunday he reads 20 "
                        "extra pages. How many pages does Tom read that week?",
}
FIRST = "A train leaves the station with 120 passengers. At the first stop 35 get off and 18 get on. How many " \
        "passengers are on the train now?"

# (key, question, the gate that drops it or None, what its reason names)
PROBLEMS = [
    ("p0", FIRST, None, None),
    ("p1", FIRST.upper().replace(".", " ;"), "duplicate", "p0 in this run"),  # case and punctuation only
    ("p2", FIRST.replace("now", "then"), "near_duplicate", "p0 in this run"),  # its last word changed
    ("p3", "Before lunch: " + TEST_SET["test:0"].lower() + " Round to the nearest dollar.", "decontaminate",
     "test:0"),  # a whole test item inside a longer problem
    ("p4", "First simplify the square root of 242, then add 3.", "decontaminate", "test:1"),
    ("p5", "Mia buys 4 muffins and 5 cookies for her class party at the fair. How many treats does she have?",
     None, None),  # one 10-gram of test:0's 23: a shared phrase, not the test item
    ("p6", EARLIER["night1 problem a"], "duplicate", "night1 problem a"),
    ("p7", EARLIER["night1 problem b"].replace("that week", "this week"), "near_duplicate", "night1 problem b"),
    ("p8", "Sara has 9 red balloons and 6 blue ones. Three of them pop. How many balloons are left?", None, None),
]


def screen(problems, coverage=0.5):
    """What the problems stage does, without the lake: test-set overlap, then repeats in the run, then earlier."""
    contamination = Decontaminator(TEST_SET.items(), n=10, coverage=coverage)
    repeats = Repeats()
    reasons = {}
    for key, text, *_ in problems:
        hit = contamination.overlap(text)
        reasons[key] = f"decontaminate: {hit[0]}" if hit else repeats.add(key, text)
    for origin, text in EARLIER.items():
        repeats.earlier(origin, text)
    return {k: r or repeats.repeated.get(k) for k, r in reasons.items()}


@pytest.mark.parametrize("key, text, gate, names", PROBLEMS, ids=[p[0] for p in PROBLEMS])
def test_each_hand_made_problem_meets_its_gate(key, text, gate, names):
    reason = screen(PROBLEMS)[key]
    if gate is None:
        assert reason is None
    else:
        assert reason.startswith(f"{gate}: ") and reason.endswith(names), reason


def test_one_shared_n_gram_is_contamination_only_with_coverage_zero():
    assert screen(PROBLEMS, coverage=0)["p5"] == "decontaminate: test:0"
    contamination = Decontaminator(TEST_SET.items(), coverage=0.5)
    grams = len(normalize(TEST_SET["test:0"])) - 10 + 1
    assert contamination.overlap(PROBLEMS[3][1]) == ("test:0", grams, grams)  # all of the item's 10-grams
    assert contamination.overlap(PROBLEMS[5][1]) is None


def test_exact_key_ignores_case_whitespace_and_punctuation_only():
    assert exact_key(FIRST) == exact_key(FIRST.upper().replace(" ", "  ").replace(".", "!"))
    assert exact_key(FIRST) != exact_key(FIRST.replace("120", "125"))


@pytest.mark.parametrize("run_id, against, expected", [
    ("toy-2026-11-03-0000aaaa", "earlier_dates", ["toy-2026-11-01-1111bbbb", "toy-2026-11-02-2222cccc"]),
    ("toy-2026-11-01-1111bbbb", "earlier_dates", []),  # the first night
    ("toy-0000aaaa", "earlier_dates", []),  # undated: no earlier dates
    ("toy-sweep-2026-11-03-0000aaaa", "earlier_dates", ["toy-sweep-2026-11-02-3333dddd"]),  # its own name only
    ("toy-2026-11-03-0000aaaa", "lake", ["gsm8k-2026-11-02-4444eeee", "toy-2026-11-01-1111bbbb",
                                         "toy-2026-11-02-2222cccc", "toy-2026-11-04-5555ffff", "toy-9999abcd",
                                         "toy-sweep-2026-11-02-3333dddd"]),
    ("toy-2026-11-03-0000aaaa", "none", []),
])
def test_earlier_runs(run_id, against, expected):
    lake = ["toy-2026-11-02-2222cccc", "toy-2026-11-01-1111bbbb", "toy-2026-11-03-0000aaaa", "toy-2026-11-04-5555ffff",
            "toy-9999abcd", "toy-sweep-2026-11-02-3333dddd", "gsm8k-2026-11-02-4444eeee"]
    assert earlier_runs(run_id, lake, against) == expected


def test_earlier_problems_stream_past_the_run_in_bounded_memory():
    """The index holds the run's problems; earlier ones come from a generator and are not kept: memory traced
    while 3,000 stream past stays under what holding them would take, and the one repeat is found."""
    repeats = Repeats()
    for key, text, gate, _ in PROBLEMS:
        if gate is None:
            repeats.add(key, text)
    pulled = 0

    def lake():
        nonlocal pulled
        for i in range(3_000):
            pulled += 1
            yield f"night{i} problem", (FIRST if i == 2_000 else
                                        f"Kim has {i} shells and finds {i % 7} more on the beach. How many now?")

    stream = lake()
    repeats.earlier(*next(stream))
    tracemalloc.start()
    try:
        for origin, text in stream:
            repeats.earlier(origin, text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (pulled, repeats.streamed, len(repeats)) == (3_000, 3_000, 3)
    assert repeats.repeated == {"p0": "duplicate: same question as night2000 problem"}
    assert peak < 100_000  # 3,000 problems and their sketches held would be megabytes


def test_stored_keys_find_what_the_texts_find():
    """A run's kept problems' keys (what the stage stores) stand in for their texts when a later run checks."""
    night1 = Repeats()
    for origin, text in EARLIER.items():
        night1.add(origin, text)
    stored = list(night1.sketches(EARLIER))
    assert [s.problem_id for s in stored] == list(EARLIER) and all(len(s.minhash) == 64 for s in stored)
    from_text, from_keys = Repeats(), Repeats()
    for repeats in (from_text, from_keys):
        for key, text, *_ in PROBLEMS[6:]:
            repeats.add(key, text)
    for origin, text in EARLIER.items():
        from_text.earlier(origin, text)
    for row in stored:
        from_keys.earlier_sketch(row.problem_id, *from_keys.stored(row))
    assert from_keys.repeated == from_text.repeated and set(from_keys.repeated) == {"p6", "p7"}
    assert Repeats(num_perm=128).stored(stored[0]) is None  # other permutations: the text is read instead
