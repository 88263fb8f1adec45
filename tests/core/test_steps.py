"""Step splitting as tables: toy and GSM8K lines, MATH LaTeX with periods inside math, and the prefix invariant."""

import json
import re

import pytest

from mathfactory.tasks.core.steps import Step, split_steps, style_of_text

TOY = "Tara gives away 1, so 3-1=<<3-1=2>>2 cards.\nTara gives away 1, so 2-1=<<2-1=1>>1 cards.\n#### 1\n"


def texts(completion, style="lines", **kw):
    return [s.text for s in split_steps(completion, style, **kw)]


def assert_partition(completion, steps):
    """Steps cover the completion exactly, in order, so every completion[:end] is a prefix after a step."""
    assert steps[0].start == 0 and steps[-1].end == len(completion)
    assert all(a.end == b.start for a, b in zip(steps, steps[1:], strict=False))
    assert all(completion[s.start : s.end].strip() == s.text for s in steps)


def test_toy_completion_has_two_steps_with_the_answer_line_kept_by_the_last():
    steps = split_steps(TOY)
    assert steps == [
        Step("Tara gives away 1, so 3-1=<<3-1=2>>2 cards.", 0, 44),
        Step("Tara gives away 1, so 2-1=<<2-1=1>>1 cards.\n#### 1", 44, len(TOY)),
    ]
    assert TOY[: steps[0].end].endswith("cards.\n")  # a continuation starts on a fresh line


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("", []),
        ("  \n\t\n", []),
        ("#### 5", ["#### 5"]),
        ("one line, no newline", ["one line, no newline"]),
        ("\n\nA\n\n\nB\n", ["A", "B"]),  # blank lines belong to the step before them
        ("A\n#### 3\nB\n", ["A\n#### 3", "B"]),  # `####` joins whatever step precedes it
        ("A\n   ####  4  \n", ["A\n   ####  4"]),
        ("  A\n  B", ["A", "B"]),
    ],
)
def test_lines_table(completion, expected):
    steps = split_steps(completion)
    assert [s.text for s in steps] == expected
    if steps:
        assert_partition(completion, steps)


def test_lines_ends_are_line_boundaries():
    completion = "A\n\nB\nC\n#### 1"
    steps = split_steps(completion)
    assert [completion[: s.end] for s in steps] == ["A\n\n", "A\n\nB\n", completion]


def test_gsm8k_solutions_split_one_step_per_line(shared_data):
    with open(shared_data / "gsm8k" / "test.jsonl") as f:
        rows = [json.loads(line) for _, line in zip(range(200), f, strict=False)]
    for row in rows:
        solution = row["answer"]
        lines = [line for line in solution.split("\n") if line.strip()]
        steps = split_steps(solution)
        assert [s.text for s in steps[:-1]] == [line.strip() for line in lines[:-2]]
        assert steps[-1].text == lines[-2].strip() + "\n" + lines[-1].strip()
        assert_partition(solution, steps)
    first = split_steps(rows[0]["answer"])  # Janet's ducks
    assert [s.text[:20] for s in first] == ["Janet sells 16 - 3 -", "She makes 9 * 2 = $<"]
    assert first[-1].text.endswith("#### 18")


@pytest.mark.parametrize(
    "completion, expected",
    [
        # periods inside $...$ are not sentence ends; the one closing the math is
        (
            "We have that $r = \\sqrt{0^2 + 3^2} = 3.$  Also, the angle is $\\frac{\\pi}{2}$ here.",
            ["We have that $r = \\sqrt{0^2 + 3^2} = 3.$", "Also, the angle is $\\frac{\\pi}{2}$ here."],
        ),
        (
            "Then we have that $\\sin D = 0.7 = \\frac{7}{DF}$, so $DF = 10$. Using Pythagoras, $DE = \\sqrt{51}$.",
            [
                "Then we have that $\\sin D = 0.7 = \\frac{7}{DF}$, so $DF = 10$.",
                "Using Pythagoras, $DE = \\sqrt{51}$.",
            ],
        ),
        (  # display math: $$...$$ and \[...\], with a capital after the inner period
            "The sum of all the terms is $$1 + 2. Then 3 = 6.$$ Next we add the rest of the terms.",
            ["The sum of all the terms is $$1 + 2. Then 3 = 6.$$", "Next we add the rest of the terms."],
        ),
        (
            "We can write the equation as \\[ x = 1. So y = 2 \\] and therefore it holds. Hence the claim is true.",
            [
                "We can write the equation as \\[ x = 1. So y = 2 \\] and therefore it holds.",
                "Hence the claim is true.",
            ],
        ),
        (  # an escaped dollar opens no math, so the period after it ends a sentence
            "The pen costs \\$2.50 in the first store. The book costs \\$3 in the second store.",
            ["The pen costs \\$2.50 in the first store.", "The book costs \\$3 in the second store."],
        ),
        (  # a blank line splits; a sentence may start with math
            "First we factor the polynomial fully.\n\nSo its units digit must be zero. $M$ is a multiple of three.",
            [
                "First we factor the polynomial fully.",
                "So its units digit must be zero.",
                "$M$ is a multiple of three.",
            ],
        ),
        (  # a lower-case word after a period is not a new sentence
            "Multiply both sides by 2. then divide by the same number to finish it off.",
            ["Multiply both sides by 2. then divide by the same number to finish it off."],
        ),
    ],
)
def test_math_table(completion, expected):
    steps = split_steps(completion, "math", min_chars=0)
    assert [s.text for s in steps] == expected
    assert_partition(completion, steps)


def test_math_prefix_ends_after_the_period_or_after_the_line_break():
    completion = (
        "This is the first sentence here. This is the second sentence here.\nAnd this is the third sentence."
    )
    steps = split_steps(completion, "math")
    assert [completion[s.start : s.end] for s in steps] == [
        "This is the first sentence here.",  # the continuation starts with " This", as a tokenizer writes it
        " This is the second sentence here.\n",
        "And this is the third sentence.",
    ]


def test_math_min_chars_and_max_steps():
    completion = " ".join(f"Sentence number {i} is long enough." for i in range(1, 7))
    assert len(texts(completion, "math")) == 6
    assert texts(completion, "math", min_chars=35) == [completion]  # every piece is short: all join the first
    short = "Thus $x=2$. So the value of the whole expression is $5$. Done. Now we check it against the rest."
    assert texts(short, "math") == [  # short pieces join the previous one; a short first piece joins the next
        "Thus $x=2$. So the value of the whole expression is $5$. Done.",
        "Now we check it against the rest.",
    ]
    assert len(texts(short, "math", min_chars=0)) == 4
    capped = texts(completion, "math", max_steps=4)
    assert len(capped) == 4
    assert capped[3] == " ".join(
        f"Sentence number {i} is long enough." for i in range(4, 7)
    )  # the merged tail
    with pytest.raises(ValueError):
        split_steps(completion, "math", max_steps=0)


def test_math500_solutions(shared_data):
    with open(shared_data / "math500" / "test.jsonl") as f:
        rows = [json.loads(line) for line in f]
    for row in rows:
        solution = row["solution"]
        steps = split_steps(solution, "math")
        assert_partition(solution, steps)
        assert len(steps) <= 12
        for s in steps:  # no step boundary falls inside inline math
            assert len(re.findall(r"(?<!\\)\$", solution[s.start : s.end])) % 2 == 0, (solution, s)
    # MATH500 #0: the sentence ends inside `3.$`; the [asy] diagram's blank lines do not split it
    first = split_steps(rows[0]["solution"], "math")
    assert first[0].text == "We have that $r = \\sqrt{0^2 + 3^2} = 3.$"
    assert [s.text.startswith("[asy]") and s.text.endswith("[/asy]") for s in first] == [
        False,
        False,
        True,
        False,
    ]


def test_style_of_text_tells_gsm8k_from_math500(shared_data):
    """A user's file has no source: its split is read off the text. GSM8K writes dollars with `$`, never LaTeX."""
    with open(shared_data / "gsm8k" / "test.jsonl") as f:
        assert {style_of_text(json.loads(line)["answer"]) for line in f} == {"lines"}
    with open(shared_data / "math500" / "test.jsonl") as f:
        assert {style_of_text(json.loads(line)["solution"]) for line in f} == {"math"}
    assert style_of_text("So $x = 3$ and the answer is \\boxed{3}.") == "math"
    assert style_of_text("She pays $5 + $3 = $<<5+3=8>>8.\n#### 8") == "lines"


def test_unknown_style():
    with pytest.raises(ValueError):
        split_steps("x", "paragraphs")
