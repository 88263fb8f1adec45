"""Majority votes, Wilson intervals and the pass@1 / maj@k summary, on hand-made rows."""

import pytest

from mathfactory.tasks.core.evaluation import majority, summarize, vote, wilson
from mathfactory.tasks.core.records import EvalResult


@pytest.mark.parametrize(
    "answers, expected",
    [
        (["1", "2", "2"], "2"),
        (["1", "2"], "1"),  # a tie goes to the answer seen first
        (["2", "1", "1", "2"], "2"),
        ([None, None, "3", None], "3"),  # no answer is no vote
        ([None, None], None),
        ([], None),
        (["1,000", "7", "1000.0", "$1000"], "1,000"),  # compared as the grader compares numbers, kept as written
        (["0.5", "1/3", "\\frac{1}{2}"], "0.5"),
        (["x+1", "\\frac{1}{3}", "x + 1", "1/3", "x+ 1"], "x+1"),  # LaTeX: whitespace aside, as written
        (["7", "07", "7.00", "8", "8", "8"], "7"),
    ],
)
def test_majority(answers, expected):
    assert majority(answers) == expected


@pytest.mark.parametrize(
    "answers, correct, expected",
    [
        (["7", "8", "8"], [True, False, False], ("8", False)),
        (["7", "7.0", "8"], [True, True, False], ("7", True)),
        (["8", "7", "7", "8"], [False, True, True, False], ("8", False)),  # the tie's winner decides
        ([None, "5", None], [False, True, False], ("5", True)),
        ([None, None], [False, False], (None, False)),
        # a sample of the same answer the judge could not grade (timeout) does not undo one it graded correct
        (["x+1", "x + 1", "2"], [False, True, False], ("x+1", True)),
    ],
)
def test_vote(answers, correct, expected):
    assert vote(answers, correct) == expected


def test_vote_refuses_answers_without_grades():
    with pytest.raises(ValueError, match="3 answers but 2 grades"):
        vote(["1", "2", "3"], [True, False])


@pytest.mark.parametrize(
    "successes, n, low, high",
    [  # closed forms at 0/n, n/n, 5/10; the two others are Newcombe (1998), table I
        (0, 10, 0.0, 0.2775),
        (5, 10, 0.2366, 0.7634),
        (10, 10, 0.7225, 1.0),
        (1, 1, 0.2065, 1.0),
        (81, 263, 0.2553, 0.3662),  # Newcombe's 81/263
        (15, 148, 0.0624, 0.1605),  # Newcombe's 15/148
    ],
)
def test_wilson_against_published_values(successes, n, low, high):
    lo, hi = wilson(successes, n)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)


def test_wilson_is_symmetric_and_holds_the_estimate():
    for n in (1, 7, 30):
        for s in range(n + 1):
            lo, hi = wilson(s, n)
            assert 0 <= lo <= s / n <= hi <= 1
            assert (lo, hi) == pytest.approx((1 - wilson(n - s, n)[1], 1 - wilson(n - s, n)[0]))


@pytest.mark.parametrize("successes, n", [(0, 0), (11, 10), (-1, 10)])
def test_wilson_refuses_impossible_counts(successes, n):
    with pytest.raises(ValueError, match="need n >= 1"):
        wilson(successes, n)


def row(i: int, stage: str, greedy: bool, n_correct: int, major: bool) -> EvalResult:
    return EvalResult(f"e{i}", f"p{i}", "test", stage, "sft", "runs/r/policy", "#### 1", "1", greedy,
                      "correct" if greedy else "wrong", 4, ["1", "1", "2", None], n_correct, "1", major, "1", 0)


def test_summarize_overall_and_per_stage():
    rows = [row(0, "grade_school", True, 3, True), row(1, "grade_school", False, 1, False),
            row(2, "middle_school", False, 2, True), row(3, "grade_school", True, 4, True),
            row(4, "middle_school", False, 0, False)]
    s = summarize(iter(rows))
    assert (s["n"], s["k"]) == (5, 4)
    assert s["pass@1"] == 0.4 and s["pass@1_ci"] == pytest.approx(wilson(2, 5), abs=1e-6)
    assert s["maj@k"] == 0.6 and s["maj@k_ci"] == pytest.approx(wilson(3, 5), abs=1e-6)
    assert s["sampled_accuracy"] == 0.5  # 10 of 20 samples
    assert s["by_level"] == {"grade_school": {"n": 3, "pass@1": 0.666667, "maj@k": 0.666667},
                             "middle_school": {"n": 2, "pass@1": 0.0, "maj@k": 0.5}}
    assert list(s["by_level"]) == ["grade_school", "middle_school"]  # in order of appearance


def test_summarize_nothing():
    assert summarize([]) == {"n": 0, "k": None, "pass@1": None, "pass@1_ci": None, "maj@k": None,
                             "maj@k_ci": None, "sampled_accuracy": None, "by_level": {}}
