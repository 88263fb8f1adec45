from mathfactory.flows.report import render_credit
from mathfactory.tasks.core.records import Rollout, StepCredit
from mathfactory.tasks.core.steps import split_steps

COMPLETION = "Ava finds 3, so 5+3=<<5+3=8>>8 apples.\nAva gives away 2, so 8-2=<<8-2=7>>7 apples.\n#### 7\n"
ROLLOUT = Rollout("r1", "p1", "train", "grade_school", "pol", 0, "Question: Ava has 5 apples...\nAnswer:\n",
                  COMPLETION, 30, "stop", 0.8, 0)


def row(i, end, q, adv, pit=False):
    return StepCredit("r1", "p1", i, "", end, q, adv, 4, "linear", pit, None)


def test_a_credited_rollout_shows_q_advantage_and_its_pit():
    cut = COMPLETION.index("\n") + 1
    steps = split_steps(COMPLETION)
    assert [s.end for s in steps] == [cut, len(COMPLETION)]
    text = render_credit(ROLLOUT, steps, [row(0, 0, 0.5, None), row(2, len(COMPLETION), 0.0, -0.75, pit=True)])
    lines = text.splitlines()
    assert "Q_0 = 0.50" in text and "over 4 samples" in text
    step1 = next(line for line in lines if "step  1" in line)
    assert "Q=" not in step1 and "5+3" in step1 and "pit" not in step1  # a step the strategy did not visit
    step2 = next(line for line in lines if "step  2" in line)
    assert "Q=0.00" in step2 and "A=-0.75" in step2 and "8-2" in step2 and step2.endswith("<-- first pit")
    assert "#### 7" in text  # the last step keeps its answer line
