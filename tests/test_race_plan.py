"""The race's plan, pure: candidates that span the curve rules, successive-halving rungs within the budget."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from lrgate.core.curve_file import read_curve_csv
from lrgate.core.race_plan import (
    HEAD_SPAN_DECADES,
    MAX_CANDIDATES,
    MAX_LR,
    MIN_CANDIDATES,
    MIN_TRIAL_ITERATIONS,
    REACH_DECADES,
    SLICE_SPAN_DECADES,
    STEP_DECADES,
    TIE_STANDARD_ERRORS,
    Race,
    RaceError,
    Trial,
    affordable,
    budget_iterations,
    candidate_lrs,
    next_rung,
    pick_winner,
    plan_rungs,
    race_winner,
    rule_picks,
    runaway_loss,
    rung_ranking,
    standard_error,
    survivors,
)
from lrgate.operations.report import race_markdown
from tests.conftest import EXAMPLE_CURVES


def test_a_long_stage_races_six_candidates_then_the_best_two_three_times_longer_within_one_training():
    plan = plan_rungs(6, 1500, budget_iterations(1500, 100))
    assert [(r.candidates, r.iterations) for r in plan.rungs] == [(6, 125), (2, 375)]
    assert plan.iterations == 1500


def test_on_small_data_the_budget_is_two_range_tests_and_every_trial_is_the_whole_training():
    assert budget_iterations(12, 100) == 200
    plan = plan_rungs(6, 12, 200)
    assert [(r.candidates, r.iterations) for r in plan.rungs] == [(6, 12)]


@pytest.mark.parametrize("n", [1, 2, 4, 6, 9])
@pytest.mark.parametrize("stage", [10, 60, 400, 1500, 20_000])
@pytest.mark.parametrize("trainings", [0.25, 1.0, 3.0])
def test_a_plan_never_trains_longer_than_the_stage_and_stays_in_its_budget(n, stage, trainings):
    budget = budget_iterations(stage, 100, trainings)
    plan = plan_rungs(n, stage, budget)
    assert all(r.iterations <= stage for r in plan.rungs)
    assert plan.rungs[0].candidates == n
    assert all(b.candidates == math.ceil(a.candidates / 3) for a, b in zip(plan.rungs, plan.rungs[1:], strict=False))
    if plan.rungs[0].iterations >= MIN_TRIAL_ITERATIONS and n * MIN_TRIAL_ITERATIONS <= budget:
        assert plan.iterations <= budget


def test_candidates_are_thinned_to_what_the_budget_affords_keeping_both_ends():
    lrs = tuple(10.0 ** (np.arange(9) / 2 - 4))
    kept = affordable(lrs, 6, 48)  # trials of the whole 6-iteration stage: 8 fit
    assert len(kept) == 8 and kept[0] == lrs[0] and kept[-1] == lrs[-1]
    assert plan_rungs(len(kept), 6, 48).iterations <= 48
    assert affordable(lrs, 1500, 1500) == lrs


def test_a_bad_budget_is_refused_with_its_value():
    with pytest.raises(RaceError, match="positive number of trainings, got -1"):
        budget_iterations(100, 100, -1.0)


def test_candidates_run_half_decades_from_below_the_lowest_pick_to_half_a_decade_past_where_the_test_ended():
    picks = [3e-3, 2e-2, 0.4]
    lrs = candidate_lrs(picks, (1e-7, 2.0))
    assert np.allclose(np.log10(lrs), [-3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5])  # 1e-3 .. 3.2, on the lattice
    assert lrs[0] < min(picks) and 2.0 < lrs[-1] <= 2.0 * 10**REACH_DECADES


def test_a_wide_span_widens_the_step_to_at_most_the_maximum():
    lrs = candidate_lrs([3e-6], (1e-8, 10.0))
    steps = np.diff(np.log10(lrs))
    top = 10.0 * 10**REACH_DECADES
    assert len(lrs) <= MAX_CANDIDATES and lrs[0] < 3e-6 and lrs[-1] * 10 ** steps[0] > top  # within a step of it
    assert np.allclose(steps, steps[0])  # evenly spaced in log lr


def test_after_unfreeze_the_candidates_span_two_decades_below_where_the_test_ended():
    picks = [3e-3, 2e-2, 0.4]
    sliced = candidate_lrs(picks, (1e-7, 2.0), sliced=True)
    assert sliced == candidate_lrs(picks, (1e-7, 2.0))[2:-1]  # 1e-2 .. 1: from 1, the test's end's lattice point
    assert np.isclose(np.log10(sliced[-1] / sliced[0]), SLICE_SPAN_DECADES) and max(sliced) <= 2.0
    # every pick near the end (a step below 5 is 3.2): down to the fewest candidates, as before unfreeze
    lrs = candidate_lrs([5.0], (1e-7, 20.0), sliced=True)
    assert len(lrs) == MIN_CANDIDATES and np.allclose(np.log10(lrs), [-0.5, 0.0, 0.5, 1.0])


def test_after_unfreeze_the_frozen_stages_lr_centres_the_candidates_on_the_lattice():
    picks = [3e-3, 2e-2, 0.4]
    lrs = candidate_lrs(picks, (1e-7, 2.0), sliced=True, head_lr=1.5e-4)  # its nearest lattice point: 10**-4
    lo, hi = HEAD_SPAN_DECADES
    assert np.allclose(np.log10(lrs), np.arange(-4 + lo, -4 + hi + 0.01, STEP_DECADES))
    assert max(lrs) < min(picks)  # neither the picks nor the range test's end bound them
    # before unfreeze, or with no usable lr, the curve rules' span as before
    assert candidate_lrs(picks, (1e-7, 2.0), head_lr=0.03) == candidate_lrs(picks, (1e-7, 2.0))
    for bad in (None, math.nan, 0.0, -1.0):
        assert candidate_lrs(picks, (1e-7, 2.0), sliced=True, head_lr=bad) == candidate_lrs(
            picks, (1e-7, 2.0), sliced=True
        )


def test_no_candidate_lies_above_the_highest_lr():
    # before unfreeze the reach past the test's end stops there, and the lattice stays within it
    lrs = candidate_lrs([0.3, 1.0], (1e-7, 8.0))
    assert max(lrs) == pytest.approx(MAX_LR) and len(lrs) >= MIN_CANDIDATES
    assert max(candidate_lrs([3e-6], (1e-8, 10.0))) <= MAX_LR
    # after unfreeze, the frozen stage's lr centres the span but the lattice points above the ceiling are dropped
    lo, _ = HEAD_SPAN_DECADES
    assert np.allclose(
        np.log10(candidate_lrs([1.0], (1e-7, 4.0), sliced=True, head_lr=10.0)), np.arange(1 + lo, 1.01, 0.5)
    )
    assert np.allclose(candidate_lrs([1.0], (1e-7, 4.0), sliced=True, head_lr=1e3), [10**0.5, 10.0])  # still a race


def test_picks_near_the_end_still_get_enough_candidates():
    lrs = candidate_lrs([5.0, 5.0], (1e-7, 8.0))
    assert len(lrs) >= 4 and max(lrs) <= 8.0 * 10**REACH_DECADES and min(lrs) < 5.0


def test_a_pick_in_the_tests_first_quarter_sets_no_span():
    assert candidate_lrs([1e-7, 3e-7, 1e-2], (1e-7, 1.0))[0] > 1e-3
    lrs = candidate_lrs([1e-7], (1e-7, 10.0))  # nothing read: a half decade past the first quarter (1e-5), and
    assert 1e-6 < lrs[0] < 10**-4.5 < lrs[1]  # from the lattice point a (here widened) step below that


def test_no_pick_is_refused():
    with pytest.raises(RaceError, match="no curve rule"):
        candidate_lrs([float("nan")], (1e-7, 10))


def _trial(lr, loss, metric=None):
    return Trial(0, lr, 10, loss, metric, 0.1)


def test_trials_rank_by_the_metric_higher_better_and_by_loss_lower_better():
    trials = [_trial(1e-3, 0.5, 0.80), _trial(1e-2, 0.4, 0.78), _trial(1e-1, float("nan"), None)]
    assert survivors(trials, 2, "accuracy") == [1e-3, 1e-2]
    assert survivors(trials, 2, "valid_loss") == [1e-2, 1e-3]
    assert survivors(trials, 3, "error_rate")[-1] == 1e-1  # a diverged trial is always last


def test_in_a_compressed_rung_a_higher_lr_within_one_standard_error_goes_first():
    trials = [_trial(1e-2, 0.30, 0.93), _trial(1e-1, 0.40, 0.92), _trial(1.0, 1.2, 0.55)]
    se = standard_error(0.93, 200)  # about 1.8 points
    assert survivors(trials, 2, "accuracy") == [1e-2, 1e-1]
    assert survivors(trials, 2, "accuracy", tie=se) == [1e-1, 1e-2]  # level within the noise: the higher first
    assert pick_winner(trials, "accuracy", tie=0.001)[0] == 1e-2  # a gap larger than the tie still counts
    assert standard_error(2.5, 200) == 0.0  # not a proportion: no tie


def test_after_unfreeze_a_compressed_rung_counts_trials_within_three_standard_errors_as_level():
    # The sixth split's letters-cnn-adam-bs16-e1 seed 13 after unfreeze (0.13.0's race, budget 1): 45-iteration
    # trials of a 500-iteration stage, where the whole training's best lrs are 0.1 and 0.32. Within one error of
    # 1e-2's 0.172 only 1 is level, and 1e-2 went on and won (7.8 points lost); within three, 0.1 goes on beside 1.
    scores = ((1e-2, 2.23, 0.172), (0.0316, 2.23, 0.160), (0.1, 2.23, 0.153), (0.316, 2.30, 0.133), (1.0, 2.29, 0.162))
    rung = [Trial(0, lr, 45, loss, accuracy, 0.1) for lr, loss, accuracy in scores]
    assert TIE_STANDARD_ERRORS == 3.0
    assert next_rung(rung, 2, "accuracy", 1000, 500, sliced=True) == [1.0, 0.1]
    assert survivors(rung, 2, "accuracy", tie=standard_error(0.172, 1000), compressed=True) == [1.0, 1e-2]  # 0.13.0
    assert next_rung(rung, 2, "accuracy", 1000, 45, sliced=True) == [1e-2, 1.0]  # the stage's own length: no lean


def test_a_compressed_rung_keeps_the_next_higher_lr_above_its_best_for_a_longer_trial():
    # The short trials rank 1e-2 first and 1e-1 (the lr above it) last but one: a longer trial judges it.
    trials = [_trial(1e-3, 0.5, 0.90), _trial(1e-2, 0.35, 0.93), _trial(1e-1, 0.4, 0.85), _trial(1.0, 2.0, 0.30)]
    assert survivors(trials, 2, "accuracy") == [1e-2, 1e-3]  # a rung as long as the stage: the plain ranking
    assert survivors(trials, 2, "accuracy", compressed=True) == [1e-2, 1e-1]
    assert survivors(trials, 3, "accuracy", compressed=True) == [1e-2, 1e-3, 1e-1]
    assert survivors(trials, 1, "accuracy", compressed=True) == [1e-2]  # keeping one: the best alone
    diverged = [*trials[:2], _trial(1e-1, float("nan"))]
    assert survivors(diverged, 2, "accuracy", compressed=True) == [1e-2, 1e-3]  # not a diverged one
    top = [_trial(1e-2, 0.5, 0.80), _trial(1e-1, 0.3, 0.93)]
    assert survivors(top, 2, "accuracy", compressed=True) == [1e-1, 1e-2]  # nothing above the best


def test_in_a_compressed_rung_a_trial_whose_loss_ran_away_ranks_after_the_others_and_is_never_level():
    # The fifth split's photos task under 0.6.0 (16-iteration trials): 1e-3 and 0.1 level on accuracy, but 0.1's
    # loss is four times 1e-3's, and 0.32 (loss 16.6) went on as the upper neighbour and won on accuracy.
    trials = [_trial(1e-3, 1.1, 0.56), _trial(1e-2, 1.3, 0.50), _trial(0.1, 4.9, 0.55), _trial(0.32, 16.6, 0.57)]
    se = standard_error(0.57, 1000)
    assert runaway_loss(trials, "accuracy") == pytest.approx(1.65)
    assert survivors(trials, 1, "accuracy", compressed=True) == [1e-3]  # 0.32 scored best, but its loss ran away
    ranked = survivors(trials, 4, "accuracy", compressed=True)
    assert ranked == [1e-3, 1e-2, 0.32, 0.1]  # ran away: after every sound trial
    assert survivors(trials, 2, "accuracy", tie=se, compressed=True) == [1e-3, 1e-2]  # no runaway neighbour
    assert pick_winner(trials, "accuracy", tie=se, compressed=True)[0] == 1e-3
    sound = [_trial(1e-3, 1.1, 0.56), _trial(1e-2, 1.6, 0.58)]  # under 1.5 times the best loss: not run away
    assert survivors(sound, 1, "accuracy", compressed=True) == [1e-2]
    assert runaway_loss([_trial(1e-1, float("nan"))], "accuracy") == math.inf


def test_a_rung_as_long_as_the_stage_ranks_by_its_metric_alone():
    # The fresh split's textures-lite0 task: its 12-iteration stage is the trial, and 0.1, the grid's best lr, ends
    # it with the best accuracy at twice the lowest loss
    whole = [_trial(1e-3, 1.31, 0.465), _trial(1e-2, 1.18, 0.455), _trial(0.1, 2.54, 0.555), _trial(0.32, 26.7, 0.315)]
    assert pick_winner(whole, "accuracy")[0] == 0.1
    assert survivors(whole, 2, "accuracy") == [0.1, 1e-3]
    assert pick_winner(whole, "accuracy", compressed=True)[0] == 1e-3  # the same trials, cut short: 0.1 ran away


def test_the_upper_neighbour_a_compressed_rung_keeps_is_the_next_sound_lr_above_the_best():
    trials = [_trial(1e-3, 1.2, 0.55), _trial(1e-2, 1.0, 0.60), _trial(0.1, 3.0, 0.59)]
    assert survivors(trials, 2, "accuracy", compressed=True) == [1e-2, 1e-3]  # 0.1 ran away: not sent on
    assert survivors(trials, 2, "accuracy") == [1e-2, 0.1]  # as long as the stage: no guard
    further = [*trials, _trial(0.32, 1.4, 0.50)]
    assert survivors(further, 2, "accuracy", compressed=True) == [1e-2, 0.32]  # the next sound lr above is


def test_the_loss_guard_reads_only_trials_with_a_score_and_only_a_positive_loss():
    unscored = [_trial(1e-3, 0.2, None), _trial(1e-2, 0.5, 0.90), _trial(0.1, 0.6, 0.88)]
    assert runaway_loss(unscored, "accuracy") == pytest.approx(0.75)  # not 1.5 x 0.2: that trial has no accuracy
    assert survivors(unscored, 2, "accuracy", tie=0.05, compressed=True)[0] == 0.1  # both sound: level, higher first
    assert runaway_loss(unscored, "valid_loss") == pytest.approx(0.3)
    assert runaway_loss([_trial(1e-3, -0.5, 0.9), _trial(1e-2, 0.1, 0.8)], "accuracy") == math.inf
    assert runaway_loss([_trial(1e-3, 0.0, 0.9), _trial(1e-2, 0.1, 0.8)], "accuracy") == math.inf


def test_after_unfreeze_the_winner_of_a_compressed_last_rung_is_the_highest_lr_within_three_standard_errors():
    # The third split's letters-cnn-adam-bs64-e1 seed 3 after unfreeze (0.7.0's race): 57-iteration trials of a
    # 312-iteration stage; 0.1 leads 0.32 by 2.4 points (1.7 standard errors), and the grid's best lr is 0.32.
    first = [Trial(0, lr, 19, 2.2, 0.2, 0.1) for lr in (1e-3, 3.2e-3, 1.0)]
    last = [Trial(1, 0.1, 57, 1.937, 0.280, 0.1), Trial(1, 0.01, 57, 2.024, 0.258, 0.1)]
    last.append(Trial(1, 0.32, 57, 2.011, 0.256, 0.1))
    assert race_winner(first + last, "accuracy", 1000, 312)[0] == 0.1  # before unfreeze: the lowest loss
    assert race_winner(first + last, "accuracy", 1000, 312, sliced=True)[0] == 0.32
    assert race_winner(first + last, "accuracy", 1000, 57, sliced=True)[0] == 0.1  # the stage's own length: no lean
    assert race_winner(first + last, "accuracy", 100_000, 312, sliced=True)[0] == 0.1  # 2.4 points is 17 errors
    assert race_winner(first + last, "valid_loss", 1000, 312, sliced=True)[0] == 0.1  # a loss does not lean


def test_before_unfreeze_a_rung_shorter_than_the_stage_ranks_by_validation_loss():
    # The seventh split's shapes-cnn-sgd-bs64-e10 seed 15 before unfreeze (0.8.0's race): 46-iteration trials of a
    # 460-iteration stage; 0.1 leads on accuracy, 1 and 3.2 (the whole training's best) have the lowest losses.
    trials = [Trial(0, 0.1, 46, 1.02, 0.560, 0.1), Trial(0, 0.32, 46, 0.96, 0.512, 0.1)]
    trials += [Trial(0, 1.0, 46, 0.91, 0.514, 0.1), Trial(0, 3.2, 46, 0.92, 0.505, 0.1)]
    assert rung_ranking("accuracy", compressed=True, sliced=False) == "valid_loss"
    assert rung_ranking("accuracy", compressed=False, sliced=False) == "accuracy"  # the stage's own training
    assert rung_ranking("accuracy", compressed=True, sliced=True) == "accuracy"  # after unfreeze
    assert race_winner(trials, "accuracy", 1000, 460)[0] == 1.0
    assert race_winner(trials, "accuracy", 1000, 46)[0] == 0.1  # as long as the stage: by accuracy
    assert survivors(trials, 2, rung_ranking("accuracy", True, False), compressed=True) == [1.0, 3.2]
    assert survivors(trials, 2, "accuracy", compressed=True) == [0.1, 0.32]  # 0.8.0's pair


def test_when_every_trial_diverged_the_lowest_lr_wins_with_a_warning():
    winner, warnings = pick_winner([_trial(1e-1, float("nan")), _trial(1e-2, float("inf"))], "valid_loss")
    assert winner == 1e-2 and "diverged" in warnings[0]
    earlier = [_trial(1e-4, float("nan")), _trial(1e-3, float("nan"))]
    last = [_trial(1e-1, float("nan")), _trial(1e-2, float("inf"))]
    assert pick_winner(last, "valid_loss", every=earlier + last)[0] == 1e-4  # the lowest lr tried in the race


def test_rule_picks_reads_each_rule_and_skips_one_that_cannot(frozen_curve):
    lrs, losses = frozen_curve
    picks = rule_picks(lrs, losses, "frozen", noise=3)
    assert set(picks) == {"bowl", "minimum", "slide"}
    assert all(lrs[0] <= lr <= lrs[-1] for lr in picks.values())
    assert rule_picks(lrs[:8], losses[:8], "frozen", noise=3).keys() < picks.keys()  # too short for some rules


@pytest.fixture
def frozen_curve():
    lrs, losses = read_curve_csv(EXAMPLE_CURVES / "digits_adam_bs64_frozen.csv")
    return np.asarray(lrs), np.asarray(losses)


def test_the_reviewers_table_marks_a_trial_whose_loss_ran_away():
    trials = (
        Trial(0, 1e-3, 16, 1.1, 0.56, 0.1),
        Trial(0, 0.32, 16, 16.6, 0.57, 0.1),
        Trial(0, 1.0, 16, float("nan"), None, 0.1),
        Trial(1, 1e-3, 48, 0.9, 0.60, 0.1),
    )
    race = Race((1e-3, 0.32, 1.0), trials, 1e-3, None, "accuracy", {"bowl": 0.32}, 80, 200, 0.4)
    text = "\n".join(race_markdown(race.to_dict()))
    assert "| 0 | 3.20e-01 | 16 | 16.6 (ran away) | 0.57 |" in text
    assert "| 0 | 1.00e-03 | 16 | 1.1 | 0.56 |" in text and "| 0 | 1.00e+00 | 16 | diverged |" in text
    assert "past 1.5 times the rung's best" in text
    assert "(ranked by accuracy, a rung shorter than the stage by valid_loss;" in text  # 48 of 80 iterations
    assert "standard error" not in text
    sliced = "\n".join(race_markdown(dataclasses.replace(race, ratio=10.0).to_dict()))
    assert "(ranked by accuracy;" in sliced and "within 3 standard errors of the best accuracy" in sliced
    whole = Race(
        (1e-3, 0.32), (*trials[:2], Trial(1, 0.32, 48, 9.0, 0.7, 0.1)), 0.32, None, "accuracy", {}, 48, 96, 0.4
    )
    text = "\n".join(race_markdown(whole.to_dict()))  # the last rung is the stage's own training: no guard there
    assert "| 1 | **3.20e-01 (winner)** | 48 | 9 |" in text and "16.6 (ran away)" in text
    assert "standard error" not in text


def test_without_a_positive_loss_to_guard_by_a_diverged_trial_is_still_never_the_upper_neighbour():
    trials = [_trial(1e-3, -0.2, 0.80), _trial(1e-2, -0.3, 0.85), _trial(0.1, float("inf"), 0.90)]
    assert survivors(trials, 2, "accuracy", compressed=True) == [1e-2, 1e-3]
