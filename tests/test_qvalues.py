"""Figure 7's pieces: the reference prefixes a model is probed from, and the per-step mean."""

import itertools

from mathfactory.tasks.core import formatting
from mathfactory.tasks.core.grading import grade_fast
from mathfactory.tasks.domains import stargraph, toy
from mathfactory.tasks.qvalues import mean_by_step, reference_prefixes


def test_prefixes_grow_one_reference_step_at_a_time_and_stop_before_the_answer_step():
    for p in toy.generate(20, "test", 3) + stargraph.generate(5, "test", 3, ["d2-l5"]):
        text = formatting.completion(p.solution)
        prefixes = reference_prefixes(p)
        # One prefix per reasoning line: the `#### answer` line belongs to the last step.
        assert prefixes[0] == "" and len(prefixes) == sum(not line.startswith("####") for line in text.splitlines())
        for shorter, longer in itertools.pairwise(prefixes):
            assert longer.startswith(shorter) and len(longer) > len(shorter)
        # Continuing any prefix with the rest of the reference is the reference, which grades correct.
        assert all(grade_fast(p.answer, prefix + text[len(prefix):]).correct for prefix in prefixes)
        assert not any(grade_fast(p.answer, prefix).correct for prefix in prefixes[1:])  # none states the answer


def test_star_graph_prefix_one_is_the_first_move():
    p = stargraph.generate(1, "test", 0, ["d2-l5"])[0]
    first_move = p.solution.splitlines()[0]
    assert reference_prefixes(p)[1].strip() == first_move and len(reference_prefixes(p)) == 5  # before each move


def test_mean_by_step_averages_per_prefix_then_over_problems():
    rows = mean_by_step([(0, [True, False]), (0, [True, True, True, False]), (1, [False, False]), (2, [])][:3])
    assert rows == [{"step": 0, "q": (0.5 + 0.75) / 2, "problems": 2, "continuations": 6},
                    {"step": 1, "q": 0.0, "problems": 1, "continuations": 2}]
