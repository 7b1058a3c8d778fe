"""The notebook API on real Learners: find_optimal_lr runs, reuses or refuses to reuse a range test."""

from __future__ import annotations

import numpy as np
from PIL import Image

from lrgate.notebook import find_optimal_lr, suggest_for_learner
from lrgate.training.range_test import last_range_test, run_range_test
from tests.tiny_learners import single_group_learner, transfer_learner


def test_frozen_learner_gets_one_lr_and_the_choices_are_printed(body, tmp_path, capsys):
    learn = transfer_learner(body, path=tmp_path)
    with learn.no_bar():
        lr = find_optimal_lr(learn, show_df="head", show_min_values=True, save_plot=tmp_path / "gate1.png")
    assert isinstance(lr, float) and 1e-7 <= lr <= 10
    out = capsys.readouterr().out
    assert "state: frozen" in out and "gradient" in out and "min_grad" in out
    with Image.open(tmp_path / "gate1.png") as im:
        assert im.format == "PNG"


def test_unfrozen_learner_gets_a_slice(body, tmp_path):
    learn = transfer_learner(body, path=tmp_path)
    learn.unfreeze()
    with learn.no_bar():
        value = find_optimal_lr(learn)
    assert isinstance(value, slice) and value.start <= value.stop


def test_a_fresh_range_test_is_reused_not_rerun(body, tmp_path):
    learn = transfer_learner(body, path=tmp_path)
    with learn.no_bar():
        first = suggest_for_learner(learn)
        recorded = learn.recorder.lrs
        second = suggest_for_learner(learn)
    assert learn.recorder.lrs is recorded  # no new fit happened
    assert second.lr == first.lr


def test_a_training_schedule_is_never_read_as_a_range_test(body, tmp_path):
    learn = transfer_learner(body, path=tmp_path)
    with learn.no_bar():
        run_range_test(learn)
        with learn.no_logging():
            learn.fit_one_cycle(1, 1e-3)
        assert last_range_test(learn) is None
        s = suggest_for_learner(learn)
    lrs = np.array(learn.recorder.lrs)
    assert lrs[0] == 1e-7 and np.all(np.diff(lrs) > 0)  # a new range test, not the one-cycle schedule
    assert s.tested_range[0] == 1e-7


def test_a_users_own_lr_find_is_reused_once_the_marker_is_on(body, tmp_path):
    learn = transfer_learner(body, path=tmp_path)
    with learn.no_bar():
        assert last_range_test(learn) is None  # unknown history: never trusted
        learn.lr_find(num_it=60, show_plot=False)
    lrs, _ = last_range_test(learn)
    assert len(lrs) <= 60


def test_single_group_learner_gets_one_lr_and_a_warning(trains, tmp_path):
    learn = single_group_learner(path=tmp_path)
    with learn.no_bar():
        s = suggest_for_learner(learn)
    assert s.state == "unfrozen" and s.slice is None
    assert "single parameter group" in s.warnings[0]
