"""Calculator: exact arithmetic, refusal of anything else, and every real GSM8K annotation checked."""

import json
import re
from fractions import Fraction

import pytest

from mathfactory.tasks.core.calculator import CalcError, check_annotations, evaluate

ANNOTATION = re.compile(r"<<(.*?)>>")


@pytest.mark.parametrize(
    "expr, value",
    [
        ("48/2", 24),
        ("16-3-4", 9),
        ("80000*1.5", 120000),
        ("12*.5", 6),
        ("5.", 5),
        ("1/3+1/6", Fraction(1, 2)),  # exact: no float rounding
        ("0.1+0.2", Fraction(3, 10)),
        ("(3*2)+1", 7),
        ("2*(3+4)*(5-1)", 56),
        ("-2**2", -4),  # Python's precedence: power binds tighter than unary minus
        ("2**-1", Fraction(1, 2)),
        ("2**3**2", 512),  # right-associative
        ("- - 3", 3),
        ("560//10", 56),  # floor division appears in real GSM8K annotations
        ("7//2", 3),
        (" 3 * 4 ", 12),
        ("9**9", 387420489),
    ],
)
def test_evaluate(expr, value):
    assert evaluate(expr) == value
    assert isinstance(evaluate(expr), Fraction)


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "2**10**10",  # 10**10 is fine, 2**(10**10) is refused before it is computed
        "9**9**9",
        "10**100000",
        "x+1",
        "(1).real",
        "1 .__class__",
        "abs(-1)",
        "[1, 2]",
        "1e5",
        "2^3",
        "1/0",
        "0**-1",
        "4**0.5",
        "1,000+5",
        "",
        "()",
        "1 2",
        "(1+2",
        "1+2)",
        "(" * 60 + "1" + ")" * 60,
        "1+" * 300 + "1",  # over the length cap
        "\u0665+\u0665",  # Arabic-Indic digits are not ASCII arithmetic
    ],
)
def test_evaluate_refuses(expr):
    with pytest.raises(CalcError):
        evaluate(expr)


@pytest.mark.parametrize(
    "text, checked, wrong",
    [
        ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.", 1, 0),
        ("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18", 1, 0),
        ("So 9 * 2 = <<9*2=19>>19 dollars", 1, 1),
        ("<<3/4=3/4>> and <<1000*2=2,000>>", 2, 0),  # fraction result; thousands separator in the result
        ("<<2/3=.67>> <<2/3=0.666667>>", 2, 0),  # a decimal result correctly rounded is right
        ("<<2/3=.66>>", 1, 1),  # truncated, not rounded
        ("<<7/2=3>>", 1, 1),  # an integer result must be exact
        ("<<12 / 4 = 3>> <<12/4=4>> <<5/0=0>>", 2, 1),  # division by zero: not arithmetic, not checked
        ("<<10-12=-2>>", 1, 0),
        ("<<x*2=4>> <<5*=3>> <<2+2=four>>", 0, 0),  # not arithmetic: not checked, not counted wrong
        ("<<__import__('os')=0>>", 0, 0),
        ("no annotations here", 0, 0),
    ],
)
def test_check_annotations(text, checked, wrong):
    assert check_annotations(text) == (checked, wrong)


def _rows(shared_data, split):
    with open(shared_data / "gsm8k" / f"{split}.jsonl") as f:
        return [json.loads(line)["answer"] for line in f]


@pytest.mark.parametrize("split, annotations", [("train", 23716), ("test", 4282)])
def test_real_gsm8k_annotations_all_check_clean(shared_data, split, annotations):
    answers = _rows(shared_data, split)
    found = sum(len(ANNOTATION.findall(a)) for a in answers)
    checked = wrong = 0
    for a in answers:
        c, w = check_annotations(a)
        checked, wrong = checked + c, wrong + w
    print(f"\nGSM8K {split}: {len(answers)} rows, {found} annotations, {checked} checked, {wrong} wrong")
    assert found == annotations  # the files are pinned by sha256 (shared/data/README.md)
    assert checked == found  # every real annotation is plain arithmetic the calculator reads
    assert wrong == 0


def test_real_gsm8k_annotations_with_a_wrong_result_are_caught(shared_data):
    answers = [a for a in _rows(shared_data, "test") if "<<" in a]

    def bump(m: re.Match) -> str:  # first annotation's result + 1, as a model's slip would write it
        lhs, rhs = m.group(1).rsplit("=", 1)
        return f"<<{lhs}={evaluate(rhs) + 1}>>"

    caught = sum(check_annotations(ANNOTATION.sub(bump, a, count=1))[1] for a in answers)
    assert caught == len(answers)
