"""Hostile answers -> the whole verifier (fast path + math-verify in killable workers): a table of nasty cases with
the verdict each must get, generated input with every verdict inside its timeout, and no code made from model text.
"""

from __future__ import annotations

import os
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mathfactory.tasks.judge import STARTUP_TIMEOUT_S, Judge, _compare

MB = 1 << 20
TIMEOUT_S = 5.0  # the default; tighter is flaky on 2 busy cores

# (gold, completion, verdict). Each row is a shape that once crashed, hung or misgraded a verifier somewhere.
CORPUS = [
    ("1", "", "no_answer"),
    ("1", "   \n\t ", "no_answer"),
    ("", "#### 1", "unparseable"),  # an empty gold grades nothing correct
    ("1", "\x00", "no_answer"),  # was sent to math-verify as the answer "\x00"
    ("1", "\x00\x1b\x7f", "no_answer"),
    ("1", "#### 1\x00", "correct"),  # control characters are no part of an answer (was a LaTeX comparison)
    ("1", "\x00\n#### 1", "correct"),
    ("1", "#### \ud800", "unparseable"),  # a lone surrogate (what a bad decoder leaves)
    ("3", "#### \u0663", "correct"),  # Arabic-Indic digit three (unicode digits were all unparseable)
    ("5", "#### \uff15", "correct"),  # fullwidth five
    ("5", "#### \uff15\uff10", "wrong"),  # fullwidth fifty
    ("1", "#### \u0967", "correct"),  # Devanagari one
    ("9", "\\boxed{\U0001d7e1}", "correct"),  # mathematical double-struck nine
    ("-5", "#### \u22125", "correct"),  # U+2212 minus
    ("9^{9^9}", "\\boxed{9^{9^9}}", "correct"),  # equal as written: never expanded
    ("1", "\\boxed{9^{9^{9^{9}}}}", "timeout"),  # SymPy tries to expand it: the worker is killed
    ("1", "<<9**9**9=1>> #### 1", "correct"),  # the calculator refuses the power, grading goes on
    ("1", "\\boxed{" + "{" * 200 + "1" + "}" * 200 + "}", "unparseable"),  # deep nesting: refused at once
    ("1", "\\boxed{" + "\\frac{1}{" * 60 + "2" + "}" * 60 + "}", "unparseable"),
    ("1", "(" * 100_000, "unparseable"),  # a bare answer nested too deep: refused before math-verify
    ("1", "1" * MB, "unparseable"),  # a 1 MB number
    ("1", "x" * MB + "\n#### 1", "correct"),  # 1 MB of prose before the answer
    ("1", "\\boxed{" + "x" * MB + "}", "unparseable"),  # a 1 MB answer: over the length cap
    ("1", "\\boxed{" * 50_000, "no_answer"),
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{2}\x00}", "correct"),  # was unparseable: the NUL reached math-verify
    ("\\frac{1}{2}", "The answer is $__import__('os').system('false')$.", "unparseable"),
    ("4", "#### (lambda x: x*2)(2)", "wrong"),  # evaluated, it would be 4
    ("6", "#### __import__('math').factorial(3)", "unparseable"),
    ("2", "\\boxed{1+1}", "correct"),
]


@pytest.fixture(scope="module")
def judge():
    with Judge(timeout_s=TIMEOUT_S) as j:
        yield j


def test_corpus_verdicts(judge):
    grades = judge.grade_many((g, c) for g, c, _ in CORPUS)
    got = [(i, g.reason) for i, g in enumerate(grades)]
    assert got == [(i, want) for i, (_, _, want) in enumerate(CORPUS)]


# --- generated answers through the judge ---------------------------------------------------------------------

JUDGE_EXAMPLES = int(os.environ.get("MATHFACTORY_JUDGE_FUZZ_EXAMPLES", "300"))
LATEX_PIECES = ["\\frac{", "}{", "}", "{", "\\sqrt{", "^", "^{", "_", "\\pi", "\\infty", "x", "y", "+", "-", "\\cdot",
                "(", ")", "[", "]", "\\{", "\\}", ",", "=", "<", "\\le", "!", "\\%", "^\\circ", "\\text{", "i", "e",
                "\\begin{pmatrix}", "\\\\", "&", "\\end{pmatrix}", "0", "1", "2", "9", "42", "3.5", " ", "\\left(",
                "\\right)", "\\mathbf{", "\\in", "\\cup", "\\emptyset", "\\log", "\\sin", "9^{9^{9}}", "\\x00"]
latex = st.lists(st.one_of(st.sampled_from(LATEX_PIECES), st.text(max_size=4)), min_size=1, max_size=30).map("".join)
wrapped = st.tuples(st.sampled_from(["\\boxed{%s}", "The answer is $%s$.", "%s", "#### %s", "\\(%s\\)"]), latex)


@settings(max_examples=JUDGE_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["\\frac{1}{2}", "x^2+1", "(1, 2)", "18", "\\{1,2\\}", "\\pi"]) | latex, wrapped)
def test_generated_latex_gets_a_verdict_inside_its_timeout(judge, gold, shape):
    template, body = shape
    started = judge.started
    t0 = time.perf_counter()
    grade = judge.grade(gold, template.replace("%s", body))
    took = time.perf_counter() - t0
    # A verdict within the timeout, plus a worker start when the last item killed one (started counts them).
    budget = TIMEOUT_S + 1.0 + (STARTUP_TIMEOUT_S if judge.started > started else 0)
    assert took < budget, (gold, template, body, grade, took)
    assert grade.reason in ("correct", "wrong", "no_answer", "unparseable", "timeout")


# --- no code from model text ---------------------------------------------------------------------------------

CANARY = "mf_canary_7f3a"  # a name no library contains: if it is ever compiled, model text became code
PAYLOADS = [f"__import__('os').system('{CANARY}')", f"open('{CANARY}').read()", f"exec('{CANARY} = 1')",
            f"eval('{CANARY}+1')", f"().__class__.__bases__[0].__subclasses__({CANARY})", f"(lambda {CANARY}: 2*{CANARY})(2)",
            f"{CANARY}(2)*3", f"Symbol('{CANARY}')", f"2*{CANARY}+1", f"{CANARY}.__dict__", f"{CANARY}^2"]
compiled: list[str] = []
watching = False


def _hook(event: str, args: tuple) -> None:
    if watching and event == "compile" and isinstance(args[0], str | bytes):
        compiled.append(args[0] if isinstance(args[0], str) else args[0].decode(errors="replace"))


sys.addaudithook(_hook)  # an audit hook replaces nothing: it sees every compile() and eval()/exec() of a string


@pytest.mark.parametrize("payload", PAYLOADS)
def test_model_text_never_becomes_code(payload):
    """The judge's worker function, in this process, under an audit hook: math-verify passes only digits and
    + - * / ^ ( ) to SymPy's parse_expr (an eval inside), so no name written by a model is ever compiled."""
    global watching
    compiled.clear()
    watching = True
    try:
        verdicts = [_compare("4", text)[1] for text in (payload, f"\\boxed{{{payload}}}", f"The answer is {payload}.")]
    finally:
        watching = False
    assert not [src for src in compiled if CANARY in src], payload
    assert "correct" not in verdicts  # (lambda x: 2*x)(2) is 4 only to a grader that runs it


def test_the_hook_sees_the_arithmetic_math_verify_does_compile():
    """The control: plain arithmetic does reach parse_expr (in the killable worker), and the hook sees it."""
    global watching
    compiled.clear()
    watching = True
    try:
        verdict = _compare("14", "2*(3+4)+918273645-918273645")
    finally:
        watching = False
    assert any("918273645" in src for src in compiled) and verdict == (True, "correct")
