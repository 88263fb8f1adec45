from mathfactory.flows.report import comparison, markdown, render_credit, tables
from mathfactory.tasks.core.records import Rollout, StepCredit
from mathfactory.tasks.core.steps import split_steps
from mathfactory.tasks.storage import Lake

COMPLETION = "Ava finds 3, so 5+3=<<5+3=8>>8 apples.\nAva gives away 2, so 8-2=<<8-2=7>>7 apples.\n#### 7\n"
ROLLOUT = Rollout("r1", "p1", "train", "grade_school", "pol", 0, "Question: Ava has 5 apples...\nAnswer:\n",
                  COMPLETION, 30, "stop", 0.8, 0)


def row(i, end, q, adv, pit=False, n=4, correct=None):
    return StepCredit("r1", "p1", i, "", end, q, adv, n, "linear", pit, None, correct)


def test_a_credited_rollout_shows_q_advantage_and_its_pit():
    cut = COMPLETION.index("\n") + 1
    steps = split_steps(COMPLETION)
    assert [s.end for s in steps] == [cut, len(COMPLETION)]
    text = render_credit(ROLLOUT, steps, [row(0, 0, 0.5, None, correct=2),
                                          row(2, len(COMPLETION), 0.0, -0.75, pit=True)])
    lines = text.splitlines()
    assert "2 of the question's 4 samples verified, Q_0 = 0.50" in text
    step1 = next(line for line in lines if "step  1" in line)
    assert "Q=" not in step1 and "5+3" in step1 and "pit" not in step1  # a step the strategy did not visit
    step2 = next(line for line in lines if "step  2" in line)
    assert "Q=0.00" in step2 and "A=-0.75" in step2 and "8-2" in step2 and step2.endswith("<-- pit")
    assert "#### 7" in text  # the last step keeps its answer line
    stopped = render_credit(ROLLOUT, steps, [row(1, cut, None, None, n=2, correct=1)])
    assert "Q>0 (1/2)" in stopped  # a probe stopped at its first success: Q > 0 known, no estimate


def evaluated(lake: Lake, method: str, passed: int, voted: int, n: int = 30, k: int = 4) -> None:
    """An eval stage's marker as commit_eval writes it (the rates and intervals of `passed` and `voted` of n)."""
    from mathfactory.tasks.core.evaluation import wilson

    lake.commit("r", f"eval_{method}", None, metrics={
        "method": method, "model": f"runs/r/{method}", "split": "test", "n": n, "k": k,
        "pass@1": passed / n, "pass@1_ci": list(wilson(passed, n)),
        "maj@k": voted / n, "maj@k_ci": list(wilson(voted, n)),
        "by_level": {"middle_school": {"n": n // 2, "pass@1": 0.125, "maj@k": 0.25},
                     "grade_school": {"n": n // 2, "pass@1": 0.4, "maj@k": 0.5}}})


def test_comparison_has_one_row_per_evaluated_method_in_a_fixed_order(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    lake.commit("r", "policy", None, metrics={"train_rows": 4000})
    lake.commit("r", "train_dpo", None, metrics={"train_rows": 119})
    for method, passed, voted in (("dpo", 9, 10), ("rft", 8, 8), ("sft", 7, 9)):  # committed out of order
        evaluated(lake, method, passed, voted)
    lake.commit("r", "train_step_dpo", None, metrics={"train_rows": 40})  # trained, not evaluated: no row
    title, headers, rows = comparison(lake, "r")
    assert headers == ["method", "trained on", "problems", "pass@1", "maj@4", "by level"]
    assert rows == [
        ["sft", "4000", "30", "23.3% (12-41)", "30.0% (17-48)", "40/12"],
        ["rft", "-", "30", "26.7% (14-44)", "26.7% (14-44)", "40/12"],
        ["dpo", "119", "30", "30.0% (17-48)", "33.3% (19-51)", "40/12"],
    ]
    assert "test split" in title and "maj@4" in title
    assert tables(lake, "r")[-1] == (title, headers, rows)
    assert "| sft | 4000 | 30 | 23.3% (12-41) |" in markdown(lake, "r")


def test_no_evaluation_no_comparison(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    lake.commit("r", "policy", None, metrics={"train_rows": 4000})
    assert [title for title, _, _ in tables(lake, "r")] == ["run r"]
    assert comparison(lake, "r")[2] == []
