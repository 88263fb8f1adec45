"""Generated hostile text -> the answer extractor, the fast verifier, the step splitter and the calculator: no crash,
the invariants each one promises, and no code compiled from the text.

Inputs come from a grammar of the pieces model output is made of (boxes, anchors, `####`, math delimiters,
annotations, digits of every script, NUL, lone surrogates) mixed with arbitrary unicode.
"""

from __future__ import annotations

import sys
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mathfactory.tasks.core.calculator import CalcError, check_annotations, evaluate
from mathfactory.tasks.core.grading import MAX_ANSWER_CHARS, Grade, extract_answer, grade_fast, parse_number
from mathfactory.tasks.core.records import VERDICT_REASONS
from mathfactory.tasks.core.steps import split_steps

# Each property runs twice: 1,000 generated inputs in `make test` (a few seconds) and 10,000 in the slow tier
# (`make test-faults`, ~1-2 minutes each on 2 busy cores). No deadline per example: the suite shares the cores with
# whatever else runs; the worst shapes are timed in the regression tables (tests/test_hostile_judge.py).
TIERS = [pytest.param(1_000, id="1k"), pytest.param(10_000, id="10k", marks=pytest.mark.slow)]


def fuzz(examples: int, check, *strategies) -> None:
    settings(max_examples=examples, deadline=None, derandomize=True, database=None,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])(given(*strategies)(check))()


PIECES = [
    "\\boxed{", "\\boxed ", "\\fbox{", "{", "}", "\\{", "\\}", "####", "#### ", "The answer is ", "final answer: ",
    "Answer:", "$", "$$", "\\(", "\\)", "\\[", "\\]", "\\frac{", "\\dfrac", "\\sqrt", "\\text{", "^{", "^", "_",
    "<<", ">>", "=", "+", "-", "*", "**", "/", "//", "(", ")", "[", "]", ".", ",", " ", "\n", "\n\n", "\t", ">",
    "0", "1", "7", "42", "1,000", "3.5", ".5", "-5", "9^{9^9}", "9**9**9", "10^{100}", "%", "\\%", "\\$",
    "\u0663", "\uff15", "\u0967", "\U0001d7e1",  # Arabic-Indic 3, fullwidth 5, Devanagari 1, mathematical 9
    "\u2212", "\x00", "\ud800", "\u200b", "\ufeff", "\u202e", "é", "答案", "😀",
    "\\begin{pmatrix}", "\\end{pmatrix}", "\\begin{align}", "\\end{align}", "[asy]", "[/asy]",
    "So ", "Thus x = ", " dollars", " cm", "\\text{ cm}", "\\circ", "3>12>7",
]
hostile_text = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=8)), max_size=40).map("".join)
gold_text = st.one_of(st.sampled_from(["18", "-5", "1,000", "3/4", "0.5", "\\frac{1}{2}", "3>12>7", "", " ",
                                       "9^{9^9}", "\u0663", "x^2"]), hostile_text)


class Compiled:
    """Every source string builtins.compile/eval/exec sees while watching (an audit hook: nothing is replaced)."""

    watching = False
    seen: list[str] = []

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if cls.watching and event in ("compile", "exec"):
            cls.seen.append(repr(args[0])[:200])


sys.addaudithook(Compiled.hook)


def watched(fn):
    """Run `fn` and fail if any code was compiled or executed from a string on the way."""
    def run(*args, **kw):
        Compiled.seen, Compiled.watching = [], True
        try:
            return fn(*args, **kw)
        finally:
            Compiled.watching = False
            assert not Compiled.seen, f"code compiled while grading: {Compiled.seen[:3]}"
    return run


@pytest.mark.parametrize("examples", TIERS)
def test_extract_answer_never_crashes_and_returns_text_or_none(examples):
    fuzz(examples, check_extract, hostile_text)


def check_extract(text):
    answer = watched(extract_answer)(text)
    assert answer is None or (isinstance(answer, str) and answer and len(answer) <= len(text))


@pytest.mark.parametrize("examples", TIERS)
def test_fast_verifier_gives_a_consistent_grade_or_defers(examples):
    fuzz(examples, check_fast_verifier, gold_text, hostile_text)


def check_fast_verifier(gold, completion):
    grade = watched(grade_fast)(gold, completion)
    if grade is None:  # deferred to the LaTeX judge: only when there is an answer that is not a plain number
        assert extract_answer(completion) is not None
        return
    assert isinstance(grade, Grade) and grade.reason in VERDICT_REASONS and grade.calc_errors >= 0
    assert grade.predicted is None or len(grade.predicted) <= max(MAX_ANSWER_CHARS, len(completion))
    assert (grade.predicted is None) == (grade.reason == "no_answer")


numbers = st.one_of(st.integers(-10**12, 10**12).map(str),
                    st.decimals(-10**6, 10**6, places=3, allow_nan=False, allow_infinity=False).map(str))


@pytest.mark.parametrize("examples", TIERS)
def test_a_plain_number_after_hashes_grades_correct_whatever_came_before(examples):
    fuzz(examples, check_plain_number, numbers, hostile_text)


def check_plain_number(gold, noise):
    completion = f"{noise}\n#### {gold}"
    grade = grade_fast(gold, completion)
    assert grade is not None and grade.reason == "correct", (gold, completion, grade)
    off = str(parse_number(gold) + 1)  # an exact value that differs
    wrong = grade_fast(gold, f"{noise}\n#### {off}")
    assert wrong is not None and wrong.reason == "wrong", (gold, off, wrong)


@pytest.mark.parametrize("examples", TIERS)
def test_steps_partition_any_text(examples):
    fuzz(examples, check_steps, hostile_text, st.sampled_from(["lines", "math"]), st.integers(0, 60), st.integers(1, 20))


def check_steps(text, style, min_chars, max_steps):
    steps = watched(split_steps)(text, style, min_chars=min_chars, max_steps=max_steps)
    if not text.strip():
        assert steps == []
        return
    assert steps[0].start == 0 and steps[-1].end == len(text)
    assert all(a.end == b.start and a.start < a.end for a, b in zip(steps, steps[1:], strict=False))
    assert all(text[s.start : s.end].strip() == s.text for s in steps)
    if style == "math":
        assert len(steps) <= max_steps


@pytest.mark.parametrize("examples", TIERS)
def test_annotation_checker_counts_within_bounds(examples):
    fuzz(examples, check_annotation_counts, hostile_text)


def check_annotation_counts(text):
    checked, wrong = watched(check_annotations)(text)
    assert 0 <= wrong <= checked <= text.count("<<")


# Arithmetic trees evaluated by a reference that shares no code with the calculator (and never calls eval).
leaf = st.one_of(st.integers(0, 10**6), st.fractions(0, 1000, max_denominator=100).filter(lambda f: f.denominator
                                                                                          in (1, 2, 4, 5, 10)))
tree = st.recursive(leaf, lambda sub: st.tuples(st.sampled_from("+-*/"), sub, sub) | st.tuples(st.just("neg"), sub),
                    max_leaves=8)


def render(t) -> str:
    if isinstance(t, tuple):
        return f"-({render(t[1])})" if t[0] == "neg" else f"({render(t[1])}){t[0]}({render(t[2])})"
    return str(t.numerator) if t.denominator == 1 else str(t.numerator / t.denominator)  # 1/2 -> "0.5"


def value(t) -> Fraction:
    if not isinstance(t, tuple):
        return Fraction(t)
    if t[0] == "neg":
        return -value(t[1])
    a, b = value(t[1]), value(t[2])
    if t[0] == "/":
        if b == 0:
            raise ZeroDivisionError
        return a / b
    return a + b if t[0] == "+" else a - b if t[0] == "-" else a * b


@pytest.mark.parametrize("examples", TIERS)
def test_calculator_agrees_with_a_reference_evaluator(examples):
    fuzz(examples, check_calculator, tree)


def check_calculator(t):
    expr = render(t)
    try:
        expected = value(t)
    except ZeroDivisionError:
        expected = None
    if len(expr) > 500 or expr.count("(") > 50:  # beyond the calculator's caps: refused, never evaluated
        return
    try:
        got = watched(evaluate)(expr)
    except CalcError as e:
        assert expected is None, (expr, e)
        return
    assert got == expected, expr
    text = f"x <<{expr}={expected.numerator}/{expected.denominator}>> y"
    assert check_annotations(text) == (1, 0)
    assert check_annotations(f"<<{expr}={expected.numerator + expected.denominator}/{expected.denominator}>>") == (1, 1)
