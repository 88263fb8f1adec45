import pytest
import yaml

from mathfactory.tasks.core import synthesis
from mathfactory.tasks.core.synthesis import Parsed, Templates, chunk, parse, write
from mathfactory.tasks.distill import PROMPTS, load_templates
from mathfactory.tasks.domains import toy


@pytest.fixture(scope="module")
def templates() -> Templates:
    return load_templates("synthesis")


def test_the_shipped_templates_cover_the_five_education_stages(templates):
    assert list(templates.stages) == list(toy.LEVELS)
    for stage in templates.stages:
        prompt = templates.render(stage, "Ava has 3 apples.")
        assert prompt.endswith(synthesis.CUE) and "Ava has 3 apples." in prompt
        assert templates.stages[stage].level in prompt and "Final Answer:" in prompt


def test_an_excerpt_goes_in_verbatim_even_with_braces(templates):
    excerpt = "Let S = {x | x > 0} and {level} stay as written."
    assert excerpt in templates.render("college", excerpt)


@pytest.mark.parametrize("change, error", [
    (lambda d: d.pop("output"), "missing output"),
    (lambda d: d.update(template="no cue at the end"), "must end with the cue"),
    (lambda d: d["stages"]["college"].pop("guidelines"), "stage 'college' has no guidelines"),
    (lambda d: d.update(stages={}), "no stages"),
])
def test_bad_templates_are_refused_with_the_reason(change, error):
    data = yaml.safe_load((PROMPTS / "synthesis.yaml").read_text())
    change(data)
    with pytest.raises(ValueError, match=error):
        Templates.from_dict(data, origin="x.yaml")


def test_an_unknown_stage_is_named(templates):
    with pytest.raises(ValueError, match="unknown education stage 'kindergarten'"):
        templates.render("kindergarten", "text")


@pytest.mark.parametrize("completion, expected", [
    (" Ava has 3 apples. How many?\nSolution:\nShe has 3+0=<<3+0=3>>3.\nFinal Answer: 3\n",
     Parsed("Ava has 3 apples. How many?", ("She has 3+0=<<3+0=3>>3.",), "3")),
    ("Problem: Two lines\nof problem.\nSolution:\n a \n\n b\nFinal Answer: 12.\nextra",
     Parsed("Two lines\nof problem.", ("a", "b"), "12")),
    (" Q?\nSolution:\nstep\n", Parsed("Q?", ("step",), None)),
    (" Q?\nSolution:\nstep\nFinal Answer:   \n", Parsed("Q?", ("step",), None)),
    (" Q? no solution section", "no 'Solution:' line"),
    ("\nSolution:\nstep\nFinal Answer: 1", "empty problem"),
    (" Q?\nSolution:\nFinal Answer: 1", "empty solution"),
    ("", "no 'Solution:' line"),
])
def test_parse(completion, expected):
    assert parse(completion) == expected


def test_write_then_parse_round_trips_to_the_gsm8k_solution_format():
    p = parse(write("Ava has 3. How many?", ["a 1+1=<<1+1=2>>2", "b"], "2"))
    assert p.solution == "a 1+1=<<1+1=2>>2\nb\n#### 2"


@pytest.mark.parametrize("text, n, expected", [
    ("One. Two two. Three three three.", 18, ["One. Two two.", "Three three three."]),
    ("One. Two two. Three three three.", 14, ["One. Two two.", "Three three", "three."]),
    ("One. Two two. Three three three.", 100, ["One. Two two. Three three three."]),
    ("aaaa bbbb cccc", 9, ["aaaa bbbb", "cccc"]),
    ("   ", 10, []),
    ("Para one.\n\nPara   two!", 100, ["Para one. Para two!"]),
])
def test_chunk(text, n, expected):
    assert chunk(text, n) == expected
    assert all(len(c) <= n for c in chunk(text, n))
