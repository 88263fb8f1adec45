"""Hand-made rollout/verdict/credit tables -> exact training rows and skip counts; then TRL trains on them."""

import math
import random
from collections import Counter
from dataclasses import asdict

import pytest

from mathfactory.tasks.core import edits, formatting, pairs
from mathfactory.tasks.core.records import Problem, Rollout, SFTExample, StepCredit, Verdict, stable_id

Q1 = "Ava has 5 apples. Ava finds 3 more apples. Ava gives away 2 apples. How many apples does Ava have now?"
Q2 = "Ben has 4 coins. Ben finds 2 more coins. How many coins does Ben have now?"
P1, P2 = formatting.prompt(Q1), formatting.prompt(Q2)

RIGHT = ["Ava finds 3, so 5+3=<<5+3=8>>8 apples.", "Ava gives away 2, so 8-2=<<8-2=6>>6 apples.", "#### 6"]
REWORDED = ["She finds 3 more: 5+3=<<5+3=8>>8.", "Then 8-2=<<8-2=6>>6 are left.", "#### 6"]  # same equations
NEAR = ["Ava finds 3, so 5+3=<<5+3=8>>8 apple.", "Ava gives away 2, so 8-2=<<8-2=6>>6 apples.", "#### 6"]
OTHER = ["Giving first leaves 5-2=<<5-2=3>>3 apples.", "Finding 3 makes 3+3=<<3+3=6>>6 apples.", "#### 6"]
SLIP = ["Ava finds 3, so 5+3=<<5+3=8>>8 apples.", "Ava gives away 2, so 8-2=<<8-2=5>>5 apples.", "#### 5"]
WILD = ["The pile grows 3 times, so 5*3=<<5*3=15>>15 apples.", "#### 15"]


def text(lines):
    return "\n".join(lines)


def ends(lines):
    """completion[:ends[i]] is steps 1..i, each with its newline (ends[0] = 0: the question alone)."""
    out = [0]
    for line in lines:
        out.append(out[-1] + len(line) + 1)
    return out


def ro(rid, pid, lines, finish="stop", split="train", prompt=None):
    return Rollout(
        rid,
        pid,
        split,
        "toy",
        "runs/x/policy",
        0,
        prompt or {"p1": P1, "p2": P2}[pid],
        text(lines),
        50,
        finish,
        1.0,
        0,
    )


def vd(rid, pid, reason):
    return Verdict(rid, pid, "train", "toy", reason == "correct", reason, None, "6", 0)


# (rollout, verdict reason or None for a rollout never verified)
TABLE = [
    (ro("c-right", "p1", RIGHT), "correct"),
    (ro("c-reworded", "p1", REWORDED), "correct"),
    (ro("c-near", "p1", NEAR), "correct"),
    (ro("c-other", "p1", OTHER), "correct"),
    (ro("c-long", "p1", RIGHT, finish="length"), "correct"),  # truncated: never a chosen side
    (ro("w-slip", "p1", SLIP), "wrong"),
    (ro("w-wild", "p1", WILD), "wrong"),
    (ro("w-none", "p1", ["Ava has apples."]), "no_answer"),
    (ro("w-slow", "p1", ["#### 6.0000000001"]), "timeout"),
    (ro("c-test", "p1", RIGHT, split="test"), "correct"),
    (ro("c-unverified", "p1", RIGHT), None),
    (ro("w2-binary", "p2", ["4+2=<<4+2=7>>7", "7 coins", "#### 7"]), "wrong"),
    (ro("w2-uncredited", "p2", ["#### 8"]), "wrong"),
    (ro("w2-flat", "p2", ["4+2=<<4+2=5>>5", "#### 5"]), "wrong"),
]
ROLLOUTS = [r for r, _ in TABLE]
VERDICTS = [vd(r.rollout_id, r.problem_id, reason) for r, reason in TABLE if reason]
SHARED_SKIPS = {"truncated": 1, "no_answer": 1, "timeout": 1, "not_train": 1, "no_verdict": 1}


def sc(rid, pid, lines, i, q, adv, pit=False, cont=None, strategy="linear"):
    return StepCredit(rid, pid, i, lines[i - 1] if i else "", ends(lines)[i], q, adv, 8, strategy, pit, cont)


CONTINUATION = "Ava gives away 2, so 8-2=<<8-2=6>>6 apples.\n#### 6"
CREDITS = [
    sc("w-slip", "p1", SLIP, 0, 0.5, None, cont=text(RIGHT)),
    sc("w-slip", "p1", SLIP, 1, 0.75, 0.25, cont=CONTINUATION),
    sc("w-slip", "p1", SLIP, 2, 0.0, -0.75, pit=True),
    sc("w-slip", "p1", SLIP, 3, 0.0, 0.0),
    sc("w-wild", "p1", WILD, 0, 0.5, None),  # no continuation from the question verified
    sc("w-wild", "p1", WILD, 1, 0.0, -0.5, pit=True),
    sc("w2-binary", "p2", ["4+2=<<4+2=7>>7", "7 coins", "#### 7"], 2, 0.0, None, pit=True, strategy="binary"),
    sc("w2-flat", "p2", ["4+2=<<4+2=5>>5", "#### 5"], 0, 0.0, None),
    sc("w2-flat", "p2", ["4+2=<<4+2=5>>5", "#### 5"], 1, 0.0, 0.0),  # Q never drops: no pit
]


def ids(rows, attr="rollout_id"):
    return sorted(getattr(r, attr) for r in rows)


# --- SFT and RFT ------------------------------------------------------------------------------------------


def test_sft_examples_are_reference_solutions_in_the_one_format():
    problems = [
        Problem("p1", "toy", "train", "toy", Q1, text(RIGHT) + "\n\n", "6"),
        Problem("p2", "toy", "test", "toy", Q2, "4+2=6\n#### 6", "6"),
        Problem("p3", "toy", "train", "toy", Q2, "  ", "6"),
    ]
    built = pairs.sft_examples(problems)
    assert built.rows == [SFTExample(stable_id("sft", "p1"), "sft", "p1", None, P1, text(RIGHT) + "\n")]
    assert built.skipped == {"not_train": 1, "no_solution": 1}


@pytest.mark.parametrize(
    ("solution", "expected"),
    [
        (text(RIGHT), ("5+3=8", "8-2=6")),
        (text(REWORDED), ("5+3=8", "8-2=6")),
        ("2 + 3 = 5\n#### 5", ("2+3=5",)),  # a bare equation, no annotation
        ("He pays $48/2 = $<<48/2=24>>24, then 1,000 + 200 = 1,200.", ("48/2=24", "1000+200=1200")),
        ("(3+4)*2 = 14 and 3/4=<<3/4=3/4>>3/4", ("(3+4)*2=14", "3/4=3/4")),
        ("x^2 = 4, so x is 2.", ()),
    ],
)
def test_equations_are_read_in_order_from_annotations_or_plain_text(solution, expected):
    assert pairs.equations(solution) == expected


def test_rft_dedups_by_equation_sequence_and_skips_what_cannot_be_a_positive():
    built = pairs.rft(ROLLOUTS, VERDICTS, k=10)
    kept = ids(built.rows)
    # right, reworded and near share 5+3=8, 8-2=6: one of them stays, beside other.
    assert "c-other" in kept and len(kept) == 2 and len({"c-right", "c-reworded", "c-near"} & set(kept)) == 1
    assert built.skipped == {**SHARED_SKIPS, "duplicate": 2}
    by_id = {r.rollout_id: r for r in ROLLOUTS}
    for row in built.rows:
        source = by_id[row.rollout_id]
        assert row == SFTExample(
            stable_id("rft", source.rollout_id), "rft", "p1", source.rollout_id, P1, source.completion
        )


def test_rft_dedups_by_edit_distance_below_the_threshold():
    assert edits.edit_distance(text(RIGHT), text(NEAR)) == pytest.approx(1 / len(text(RIGHT)))
    built = pairs.rft(ROLLOUTS, VERDICTS, k=10, dedup="edit_distance", threshold=0.1)
    kept = ids(built.rows)
    # reworded has the same equations as right but different words: distinct by text; near is a 1-char copy.
    assert {"c-other", "c-reworded"} <= set(kept) and len(kept) == 3
    assert len({"c-right", "c-near"} & set(kept)) == 1
    assert built.skipped == {**SHARED_SKIPS, "duplicate": 1}
    assert len(pairs.rft(ROLLOUTS, VERDICTS, k=10, dedup="edit_distance", threshold=0.0).rows) == 4


def test_rft_without_equations_dedups_by_normalized_text():
    prose = [
        ro("a", "p1", ["The answer is six."]),
        ro("b", "p1", ["The  answer is\nsix."]),
        ro("c", "p1", ["Six is the answer."]),
    ]
    built = pairs.rft(prose, [vd(r.rollout_id, "p1", "correct") for r in prose], k=10)
    assert len(built.rows) == 2 and "c" in ids(built.rows)
    assert built.skipped == {"duplicate": 1}


def test_rft_keeps_at_most_k_per_problem():
    distinct = [ro(f"x{i}", "p2", [f"4+{i}=<<4+{i}={4 + i}>>{4 + i}", f"#### {4 + i}"]) for i in range(5)]
    verdicts = [vd(r.rollout_id, "p2", "correct") for r in distinct]
    assert pairs.rft(distinct, verdicts, k=2).skipped == {"over_k": 3}
    assert len(pairs.rft(distinct, verdicts, k=2).rows) == 2
    assert len(pairs.rft(distinct, verdicts, k=5).rows) == 5
    both = pairs.rft(ROLLOUTS + distinct, VERDICTS + verdicts, k=1)
    assert Counter(r.problem_id for r in both.rows) == {"p1": 1, "p2": 1}
    assert both.skipped == {**SHARED_SKIPS, "over_k": 3 + 4}  # the cap is checked before duplicates


def test_rft_is_deterministic_in_the_seed_not_in_the_input_order():
    first = pairs.rft(ROLLOUTS, VERDICTS, k=1)
    shuffled = ROLLOUTS[:]
    random.Random(7).shuffle(shuffled)
    assert pairs.rft(shuffled, VERDICTS[::-1], k=1) == first
    picks = {pairs.rft(ROLLOUTS, VERDICTS, k=1, seed=s).rows[0].rollout_id for s in range(20)}
    assert len(picks) > 1  # the seed, not the rollout ids, decides which positives are kept


def _sft(rid):
    return SFTExample(stable_id("rft", rid), "rft", "p1", rid, P1, "...")


def _adv(rid, *advantages):
    """Credit rows for steps 1..n with these advantages (step 0 carries None, as credit writes it)."""
    rows = [StepCredit(rid, "p1", 0, "", 0, 0.5, None, 8, "linear", False, None)]
    return rows + [
        StepCredit(rid, "p1", i, "s", i, 0.5, a, 8, "linear", False, None)
        for i, a in enumerate(advantages, 1)
    ]


def test_rft_advantage_drops_positives_whose_min_advantage_is_below_the_median():
    positives = [_sft(r) for r in ("a", "b", "c", "d", "uncredited", "unjudged")]
    credits = [
        *_adv("a", 0.2, -0.5),
        *_adv("b", 0.0, -0.25),
        *_adv("c", 0.0),
        *_adv("d", 0.1, 0.0),
        *_adv("unjudged", None, None),
    ]  # a binary search's rows: no advantage known
    built = pairs.rft_advantage(positives, credits)
    # min advantages -0.5, -0.25, 0, 0: median -0.125, so a and b are the bottom half.
    assert built.rows == [
        SFTExample(stable_id("rft_advantage", r), "rft_advantage", "p1", r, P1, "...") for r in ("c", "d")
    ]
    assert built.skipped == {"low_advantage": 2, "no_credit": 2}


def test_rft_advantage_keeps_ties_at_the_median():
    credits = [*_adv("a", -0.5), *_adv("c", 0.0, 0.25), *_adv("d", 0.0)]  # min -0.5, 0, 0: median 0
    built = pairs.rft_advantage([_sft(r) for r in ("a", "c", "d")], credits)
    assert ids(built.rows) == ["c", "d"] and built.skipped == {"low_advantage": 1}


# --- preference pairs -------------------------------------------------------------------------------------

CORRECT_P1 = {"c-right", "c-reworded", "c-near", "c-other"}


def test_step_cut_pairs_a_correct_solution_with_the_wrong_one_cut_after_its_pit():
    built = pairs.step_cut(ROLLOUTS, VERDICTS, CREDITS)
    by_rejected = {p.rejected_rollout_id: p for p in built.rows}
    assert set(by_rejected) == {"w-slip", "w-wild"}
    slip, wild = by_rejected["w-slip"], by_rejected["w-wild"]
    assert slip.rejected == SLIP[0] + "\n" + SLIP[1] + "\n"  # steps 1..2, the pit included; "#### 5" cut off
    assert wild.rejected == WILD[0] + "\n"
    assert (slip.pit_index, wild.pit_index) == (2, 1)
    completions = {r.rollout_id: r.completion for r in ROLLOUTS}
    for p in built.rows:
        assert (p.kind, p.problem_id, p.prompt) == ("step_cut", "p1", P1)
        assert p.chosen_rollout_id in CORRECT_P1 and p.chosen == completions[p.chosen_rollout_id]
        assert p.pair_id == stable_id("step_cut", p.chosen_rollout_id, p.rejected_rollout_id, p.pit_index)
    assert built.skipped == {**SHARED_SKIPS, "no_chosen": 1, "no_credit": 1, "no_pit": 1}


def test_step_cut_chosen_is_seeded():
    first = pairs.step_cut(ROLLOUTS, VERDICTS, CREDITS)
    assert pairs.step_cut(ROLLOUTS[::-1], VERDICTS, CREDITS[::-1]) == first
    chosen = {
        tuple(p.chosen_rollout_id for p in pairs.step_cut(ROLLOUTS, VERDICTS, CREDITS, seed=s).rows)
        for s in range(20)
    }
    assert len(chosen) > 1


def test_step_prefix_prompts_with_the_steps_before_the_pit():
    built = pairs.step_prefix(ROLLOUTS, VERDICTS, CREDITS)
    assert built.rows[:1] == [
        pairs.PreferencePair(
            pair_id=stable_id("step_prefix", "w-slip", 2),
            kind="step_prefix",
            problem_id="p1",
            prompt=P1 + SLIP[0] + "\n",
            chosen=CONTINUATION,
            rejected=SLIP[1] + "\n",
            chosen_rollout_id=None,
            rejected_rollout_id="w-slip",
            pit_index=2,
            chosen_source="continuation",
        )
    ]
    # w-wild falls at step 1 and no continuation from the question verified: the problem's first correct
    # rollout (by id) is a verified continuation of the empty prefix, so it is the chosen side.
    completions = {r.rollout_id: r.completion for r in ROLLOUTS}
    assert [(p.rejected_rollout_id, p.prompt, p.chosen, p.chosen_rollout_id, p.chosen_source)
            for p in built.rows[1:]] == [("w-wild", P1, completions[min(CORRECT_P1)], min(CORRECT_P1), "rollout")]
    assert built.skipped == {
        **SHARED_SKIPS,
        "no_prefix_row": 1,
        "no_credit": 1,
        "no_pit": 1,
    }


def test_step_prefix_at_the_first_step_prompts_with_the_question_alone():
    credits = [*CREDITS[:4], sc("w-wild", "p1", WILD, 0, 0.5, None, cont=text(RIGHT)), CREDITS[5]]
    wild = [
        p for p in pairs.step_prefix(ROLLOUTS, VERDICTS, credits).rows if p.rejected_rollout_id == "w-wild"
    ]
    assert [(p.prompt, p.chosen, p.rejected, p.pit_index) for p in wild] == [
        (P1, text(RIGHT), WILD[0] + "\n", 1)
    ]


# The reference solutions (D_syn): p2 is a problem the policy never solved.
REFS = pairs.references([Problem("p1", "toy", "train", "toy", Q1, text(RIGHT), "6"),
                         Problem("p2", "toy", "train", "toy", Q2, "4+2=<<4+2=6>>6\n#### 6", "6")])


def test_the_reference_is_the_chosen_side_even_for_a_problem_never_solved():
    built = pairs.step_cut(ROLLOUTS, VERDICTS, CREDITS, chosen="reference", refs=REFS)
    by_rejected = {p.rejected_rollout_id: p for p in built.rows}
    assert set(by_rejected) == {"w-slip", "w-wild", "w2-binary"}  # w2-binary: no correct rollout, still a pair
    assert all(p.chosen == REFS[p.problem_id] and p.chosen_rollout_id is None and p.chosen_source == "reference"
               for p in built.rows)
    assert by_rejected["w2-binary"].rejected == "4+2=<<4+2=7>>7\n7 coins\n"
    assert built.skipped == {**SHARED_SKIPS, "no_credit": 1, "no_pit": 1}
    assert built.counts == {"pit_final": 0}


def test_both_draws_the_chosen_side_from_the_rollouts_and_the_reference():
    sources = Counter(p.chosen_source for s in range(20) for p in
                      pairs.step_cut(ROLLOUTS, VERDICTS, CREDITS, seed=s, chosen="both", refs=REFS).rows)
    assert set(sources) == {"rollout", "reference"} and sources.total() == 60
    outcome = pairs.outcome_pairs(ROLLOUTS, VERDICTS, n=100, chosen="both", refs=REFS).rows
    assert Counter(p.chosen_source for p in outcome) == {"rollout": 4 * 2, "reference": 2 + 3}
    edit = pairs.edit_distance_pairs(ROLLOUTS, VERDICTS, chosen="reference", refs=REFS).rows
    assert [(p.problem_id, p.chosen_source) for p in edit] == [("p1", "reference"), ("p2", "reference")]


def test_step_prefix_takes_the_reference_only_where_it_continues_the_prefix():
    """w-wild falls at step 1 (empty prefix: the reference continues it); w2-binary at step 2 of its own steps,
    which the reference does not continue, and no continuation from step 1 was kept."""
    credits = [*CREDITS, sc("w2-binary", "p2", ["4+2=<<4+2=7>>7", "7 coins", "#### 7"], 1, None, None,
                            strategy="binary")]
    built = pairs.step_prefix(ROLLOUTS, VERDICTS, credits, chosen="reference", refs=REFS)
    wild = next(p for p in built.rows if p.rejected_rollout_id == "w-wild")
    assert (wild.prompt, wild.chosen, wild.chosen_source) == (P1, REFS["p1"], "reference")
    assert built.skipped["no_correct_continuation"] == 1
    assert {p.rejected_rollout_id for p in built.rows} == {"w-slip", "w-wild"}


def test_pairs_whose_pit_is_the_last_step_are_counted():
    credits = [*CREDITS, sc("w2-flat", "p2", ["4+2=<<4+2=5>>5", "#### 5"], 2, 0.0, 0.0, pit=True)]
    built = pairs.step_cut(ROLLOUTS, VERDICTS, credits, chosen="reference", refs=REFS)
    flat = next(p for p in built.rows if p.rejected_rollout_id == "w2-flat")
    assert flat.rejected == text(["4+2=<<4+2=5>>5", "#### 5"])  # the whole wrong solution: a naive pair
    assert built.counts == {"pit_final": 1}


def test_unknown_chosen_source_fails_loudly():
    with pytest.raises(ValueError, match="chosen"):
        pairs.step_cut(ROLLOUTS, VERDICTS, CREDITS, chosen="teacher")


def test_outcome_pairs_are_distinct_random_pairs_capped_at_n():
    built = pairs.outcome_pairs(ROLLOUTS, VERDICTS, n=5)
    got = [(p.chosen_rollout_id, p.rejected_rollout_id) for p in built.rows]
    assert len(got) == len(set(got)) == 5
    assert all(c in CORRECT_P1 and w in {"w-slip", "w-wild"} for c, w in got)
    completions = {r.rollout_id: r.completion for r in ROLLOUTS}
    assert all(
        (p.chosen, p.rejected) == (completions[p.chosen_rollout_id], completions[p.rejected_rollout_id])
        and p.pit_index is None
        and p.kind == "outcome"
        for p in built.rows
    )
    assert built.skipped == {**SHARED_SKIPS, "no_chosen": 3}  # p2's three wrong rollouts
    assert len(pairs.outcome_pairs(ROLLOUTS, VERDICTS, n=100).rows) == 4 * 2
    assert pairs.outcome_pairs(ROLLOUTS[::-1], VERDICTS, n=5) == built
    assert pairs.outcome_pairs(ROLLOUTS, VERDICTS, n=5, seed=1) != built


def test_levenshtein_matches_the_textbook_table():
    def table(a, b):
        previous = list(range(len(b) + 1))
        for i, x in enumerate(a, 1):
            current = [i]
            for j, y in enumerate(b, 1):
                current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
            previous = current
        return previous[-1]

    assert edits.levenshtein("kitten", "sitting") == 3
    assert edits.levenshtein(["5+3=8", "8-2=6"], ["8-2=6"]) == 1
    rng = random.Random(0)
    for _ in range(2000):
        a, b = ("".join(rng.choices("ab c", k=rng.randint(0, 90))) for _ in range(2))
        assert edits.levenshtein(a, b) == table(a, b), (a, b)


C = ["5+3=<<5+3=8>>8 apples.", "8-2=<<8-2=6>>6 apples.", "#### 6"]
EVERY_STEP_OFF = ["5+3=<<5+3=9>>9 apples.", "9-2=<<9-2=7>>7 apples.", "#### 7"]  # 3 of 3 steps, 7 characters
LAST_STEP_LONG = [*C[:2], "Then she gives all 6 apples to Ben and buys 40 plums for 2 each, so #### 0"]


def test_edit_distance_pairs_pick_the_most_distant_wrong_by_characters_or_by_steps():
    rollouts = [ro("c", "p1", C), ro("w-steps", "p1", EVERY_STEP_OFF), ro("w-chars", "p1", LAST_STEP_LONG)]
    verdicts = [vd("c", "p1", "correct"), vd("w-steps", "p1", "wrong"), vd("w-chars", "p1", "wrong")]
    assert edits.edit_distance(text(C), text(EVERY_STEP_OFF), "step") == 1.0
    assert edits.edit_distance(text(C), text(LAST_STEP_LONG), "step") == pytest.approx(1 / 3)
    by_char = [edits.edit_distance(text(C), text(w)) for w in (EVERY_STEP_OFF, LAST_STEP_LONG)]
    assert by_char[0] < 0.2 < by_char[1]
    by_chars = pairs.edit_distance_pairs(rollouts, verdicts).rows
    by_steps = pairs.edit_distance_pairs(rollouts, verdicts, unit="step").rows
    assert [(p.chosen_rollout_id, p.rejected_rollout_id) for p in by_chars] == [("c", "w-chars")]
    assert [(p.chosen_rollout_id, p.rejected_rollout_id) for p in by_steps] == [("c", "w-steps")]
    assert by_chars[0].pair_id == stable_id("edit_distance", "c", "w-chars", None)
    pair = by_chars[0]
    assert (pair.prompt, pair.chosen, pair.rejected) == (P1, text(C), text(LAST_STEP_LONG))


def test_edit_distance_pairs_one_per_usable_correct_rollout():
    built = pairs.edit_distance_pairs(ROLLOUTS, VERDICTS)
    assert ids(built.rows, "chosen_rollout_id") == sorted(CORRECT_P1)
    assert {p.rejected_rollout_id for p in built.rows} == {"w-wild"}  # all four are near slip's first lines
    assert built.skipped == {**SHARED_SKIPS, "no_chosen": 3}


def test_pairs_never_mix_prompts():
    other_prompt = ro("c-chat", "p2", ["4+2=<<4+2=6>>6", "#### 6"], prompt="<|user|>" + Q2)
    built = pairs.step_cut([*ROLLOUTS, other_prompt], [*VERDICTS, vd("c-chat", "p2", "correct")], CREDITS)
    assert built.skipped["no_chosen"] == 1  # w2-binary still has no correct rollout under its own prompt


def test_pair_kinds_have_distinct_ids():
    rows = [
        *pairs.outcome_pairs(ROLLOUTS, VERDICTS, n=100).rows,
        *pairs.edit_distance_pairs(ROLLOUTS, VERDICTS).rows,
        *pairs.step_cut(ROLLOUTS, VERDICTS, CREDITS).rows,
        *pairs.step_prefix(ROLLOUTS, VERDICTS, CREDITS).rows,
    ]
    assert len({p.pair_id for p in rows}) == len(rows)


def test_unknown_options_fail_loudly():
    with pytest.raises(ValueError, match="dedup"):
        pairs.rft(ROLLOUTS, VERDICTS, k=1, dedup="exact")
    with pytest.raises(ValueError, match="unit"):
        edits.edit_distance("a", "b", unit="token")


# --- the rows are what TRL reads --------------------------------------------------------------------------


def test_trl_trains_dpo_and_sft_on_the_rows(tmp_path):
    import datasets
    import torch
    from trl import DPOConfig, DPOTrainer

    from mathfactory.tasks.models import tiny
    from mathfactory.tasks.policy import PolicyConfig

    problems = [
        Problem("p1", "toy", "train", "toy", Q1, text(RIGHT), "6"),
        Problem("p2", "toy", "train", "toy", Q2, "4+2=<<4+2=6>>6\n#### 6", "6"),
    ]
    positives = pairs.rft(ROLLOUTS, VERDICTS, k=4).rows
    sft_rows = [*pairs.sft_examples(problems).rows, *positives]
    dpo_rows = [
        *pairs.step_cut(ROLLOUTS, VERDICTS, CREDITS).rows,
        *pairs.step_prefix(ROLLOUTS, VERDICTS, CREDITS).rows,
    ]
    assert len(sft_rows) >= 2 and len(dpo_rows) >= 2

    cfg = PolicyConfig(
        vocab_size=300,
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        max_length=192,
        max_steps=2,
        batch_size=2,
        learning_rate=1e-3,
    )
    tok = tiny.train_tokenizer([r.prompt + r.completion for r in sft_rows], cfg.vocab_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 30k-parameter model gains nothing from a second thread on a shared box
    try:
        # The records go in as they are: their column names are TRL's, the extra id columns ride along.
        sft = tiny.build_trainer(
            tiny.init_model(tok, cfg), tok, [asdict(r) for r in sft_rows], cfg, tmp_path / "sft"
        )
        sft.train()

        dataset = datasets.Dataset.from_list([asdict(p) for p in dpo_rows])
        args = DPOConfig(
            output_dir=str(tmp_path / "dpo"),
            max_steps=2,
            per_device_train_batch_size=2,
            learning_rate=1e-3,
            max_length=cfg.max_length,
            use_cpu=True,
            bf16=False,
            fp16=False,
            activation_checkpointing=False,
            report_to=[],
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        )
        # The reference is a second copy of the same seeded init (TRL would otherwise load it from a path).
        dpo = DPOTrainer(
            model=tiny.init_model(tok, cfg),
            ref_model=tiny.init_model(tok, cfg),
            args=args,
            train_dataset=dataset,
            processing_class=tok,
        )
        dpo.train()
    finally:
        torch.set_num_threads(threads)

    assert sft.state.global_step == dpo.state.global_step == 2
    losses = [e["loss"] for t in (sft, dpo) for e in t.state.log_history if "loss" in e]
    assert losses and all(math.isfinite(x) for x in losses)
    # TRL read our columns as meant: prompt, then chosen/rejected each followed by EOS.
    first = dpo.train_dataset[0]
    assert tok.decode(first["prompt_ids"]) == dpo_rows[0].prompt
    assert tok.decode(first["chosen_ids"]) == dpo_rows[0].chosen + tiny.EOS
    assert tok.decode(first["rejected_ids"]) == dpo_rows[0].rejected + tiny.EOS
