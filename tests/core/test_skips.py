"""Skips: a training set below one batch and an evaluation without its split are skipped with the counts."""

import pytest

from mathfactory.tasks.core.skips import Skip, no_split, switched_off, too_few_rows


@pytest.mark.parametrize("rows, minimum, skipped", [(0, 8, True), (7, 8, True), (8, 8, False), (40, 8, False),
                                                    (15, 16, True)])
def test_a_set_below_one_batch_is_skipped_with_its_rows_and_the_minimum(rows, minimum, skipped):
    skip = too_few_rows("dpo_step_cut", rows, minimum)
    if not skipped:
        assert skip is None
        return
    assert skip == Skip(f"dpo_step_cut has {rows} rows, fewer than one batch of {minimum}", rows, minimum)


@pytest.mark.parametrize("sizes, skipped", [({"train": 5}, True), ({"train": 5, "test": 0}, True), ({}, True),
                                            ({"train": 5, "test": 1}, False), ({"test": 3}, False)])
def test_evaluation_without_its_split_is_skipped_and_says_what_the_run_has(sizes, skipped):
    skip = no_split("test", sizes)
    assert (skip is not None) == skipped
    if skipped:
        assert skip.reason.startswith("no test problems to evaluate on")
        assert skip.reason.endswith(f"problems: {'5 train' if sizes.get('train') else 'none'})")
        assert (skip.rows, skip.minimum) == (0, 1)


def test_an_opt_in_step_says_which_switch_is_off():
    assert switched_off("training", "train=false").reason == "training is opt-in and off for this run (train=false)"
