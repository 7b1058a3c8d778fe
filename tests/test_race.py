"""The race on real fastai Learners: compressed trials, the Learner given back unchanged, a slice after unfreeze."""

from __future__ import annotations

import numpy as np
import torch
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.torch_core import params, set_seed
from torch import nn
from torch.utils.data import TensorDataset

from lrgate.core.plot import review_figure
from lrgate.core.race_plan import HEAD_SPAN_DECADES, STEP_DECADES
from lrgate.core.suggest import format_choices
from lrgate.notebook import find_optimal_lr, suggest_for_learner
from lrgate.training.race import CompressedSchedule, run_trial
from tests.tiny_learners import tiny_cnn, transfer_learner


def _state(learn: Learner) -> dict:
    """Everything a race may touch, comparable with ==."""
    opt = learn.opt.state_dict()
    return {
        "model": {k: v.clone() for k, v in learn.model.state_dict().items()},
        "opt_state": [{k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()} for s in opt["state"]],
        "hypers": [dict(h) for h in opt["hypers"]],
        "frozen_idx": learn.opt.frozen_idx,
        "requires_grad": [p.requires_grad for p in learn.model.parameters()],
        "cbs": list(learn.cbs),
        "recorder": (list(learn.recorder.lrs), list(learn.recorder.losses), list(learn.recorder.values)),
        "training": learn.model.training,
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert len(a["opt_state"]) == len(b["opt_state"])
    for sa, sb in zip(a["opt_state"], b["opt_state"], strict=True):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]) if torch.is_tensor(sa[k]) else sa[k] == sb[k], k
    for key in ("hypers", "frozen_idx", "requires_grad", "recorder", "training"):
        assert a[key] == b[key], key
    assert [(type(cb).__name__, id(cb)) for cb in a["cbs"]] == [(type(cb).__name__, id(cb)) for cb in b["cbs"]]


def test_a_compressed_trial_trains_exactly_its_iterations_over_the_whole_schedule(body, tmp_path):
    learn = transfer_learner(body, path=tmp_path)
    n = len(learn.dls.train)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 1e-2)
        one_epoch = list(learn.recorder.lrs)
        learn.fit_one_cycle(3, 1e-2, cbs=CompressedSchedule(n))  # three epochs' schedule squeezed into one
        assert learn.recorder.lrs == one_epoch
        learn.fit_one_cycle(2, 1e-2, cbs=CompressedSchedule(n + 3))  # two epochs, the second cut after 3 batches
    lrs = np.array(learn.recorder.lrs)
    assert len(lrs) == n + 3
    assert np.isclose(lrs.max(), 1e-2, rtol=0.05)  # the one-cycle peak is reached...
    assert lrs[-1] < lrs.max() / 20  # ...and the schedule is annealed by the last batch, not cut mid-way


def test_a_cut_trial_is_scored_by_its_own_validation(body, tmp_path):
    learn = transfer_learner(body, path=tmp_path)
    with learn.no_bar():
        loss, metric = run_trial(learn, 3e-2, len(learn.dls.train) // 2, "accuracy")  # an epoch cut in half
        valid_loss, acc = learn.validate()
    assert np.isclose(loss, valid_loss) and np.isclose(metric, acc)


def test_the_race_gives_the_learner_back_exactly_and_a_later_fit_is_the_same_as_without_it(body, tmp_path):
    raced, plain = transfer_learner(body, path=tmp_path / "a"), transfer_learner(body, path=tmp_path / "b")
    with raced.no_bar(), plain.no_bar():
        suggest_for_learner(raced)
        suggest_for_learner(plain)  # the same range test on both; the raced one races after it
        before = _state(raced)
        s = suggest_for_learner(raced, epochs=2, log=lambda _: None)  # reuses the range test, then races
        _assert_same(before, _state(raced))
        assert s.race is not None and len(s.race.trials) >= 4
        torch.manual_seed(7)
        raced.fit_one_cycle(1, 1e-2)
        torch.manual_seed(7)
        plain.fit_one_cycle(1, 1e-2)
    for (k, a), b in zip(raced.model.state_dict().items(), plain.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k  # same batches, same random state: the race left no trace


def test_the_same_candidate_twice_scores_the_same(body, tmp_path):
    learn = transfer_learner(body, path=tmp_path)
    with learn.no_bar():
        s = suggest_for_learner(learn, epochs=1, log=lambda _: None)
        again = suggest_for_learner(learn, epochs=1, head_lr=1e-4, log=lambda _: None)  # frozen: no head_lr to use
    assert [t.valid_loss for t in s.race.trials] == [t.valid_loss for t in again.race.trials]
    assert s.value == again.value and again.race.head_lr is None


def test_after_unfreeze_the_race_returns_a_slice_with_the_curves_ratio(body, tmp_path):
    learn = transfer_learner(body, path=tmp_path)
    learn.unfreeze()
    with learn.no_bar():
        curve = suggest_for_learner(learn)
        s = suggest_for_learner(learn, epochs=1, log=lambda _: None)
    assert isinstance(s.value, slice) and s.value.stop == s.race.winner
    ratio = curve.slice[1] / curve.slice[0]
    assert np.isclose(s.value.stop / s.value.start, ratio)
    assert s.race.winner in s.race.candidates
    assert max(s.race.candidates) <= s.tested_range[1]  # after unfreeze the candidates stop at the test's end
    assert s.to_dict()["race"]["cost"]["trainings"] > 0 and s.race.head_lr is None
    # told the lr the frozen stage trained the head with, the race spans the lattice around it instead
    lines = []
    with learn.no_bar():
        around = suggest_for_learner(learn, epochs=1, head_lr=slice(1e-5, 1e-4), log=lines.append)  # its top
    lo, hi = HEAD_SPAN_DECADES
    assert np.allclose(np.log10(around.race.candidates), np.arange(-4 + lo, -4 + hi + 0.01, STEP_DECADES))
    assert around.value.stop == around.race.winner and np.isclose(around.value.stop / around.value.start, ratio)
    assert around.to_dict()["race"]["head_lr"] == 1e-4 and "around the frozen stage's lr 1.0e-04" in lines[0]
    assert "candidates around the frozen stage's lr, 1.00e-04" in format_choices(around)
    curve_axes, race_axes = review_figure(around).axes[:2]  # the plot says so, and marks it in the race's panel
    assert f"race of {len(around.race.candidates)} around the frozen stage's lr 1.0e-04" in curve_axes.get_title(
        loc="left"
    )
    assert "frozen stage's lr 1.0e-04" in race_axes.get_legend_handles_labels()[1]


def test_a_plain_tensor_dataset_learner_races_and_scores_by_its_loss_without_metrics(trains, tmp_path):
    x = torch.randn(256, 1, 8, 8)
    y = (x.mean((1, 2, 3)) > 0).long()
    dls = DataLoaders(
        DataLoader(TensorDataset(x[:192], y[:192]), bs=16, shuffle=True),
        DataLoader(TensorDataset(x[192:], y[192:]), bs=64),
    )
    learn = Learner(dls, tiny_cnn(2), loss_func=CrossEntropyLossFlat(), path=tmp_path)
    with learn.no_bar():
        s = suggest_for_learner(learn, epochs=1, log=lambda _: None)
    assert s.race.score == "valid_loss" and isinstance(s.value, float)


class TinyTextClassifier(nn.Module):
    """Token ids -> embedding -> LSTM -> head: a text model, with a splitter of its own."""

    def __init__(self, vocab: int = 20, n_out: int = 2) -> None:
        super().__init__()
        self.embed, self.lstm, self.head = (
            nn.Embedding(vocab, 16),
            nn.LSTM(16, 16, batch_first=True),
            nn.Linear(16, n_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x))
        return self.head(out[:, -1])


def test_a_text_model_with_its_own_splitter_races_frozen_and_comes_back_unchanged(trains, tmp_path):
    set_seed(0, reproducible=True)
    x = torch.randint(0, 20, (320, 12))
    y = (x == 3).any(1).long()  # does the sequence hold token 3?
    dls = DataLoaders(
        DataLoader(TensorDataset(x[:256], y[:256]), bs=32, shuffle=True),
        DataLoader(TensorDataset(x[256:], y[256:]), bs=64),
    )
    learn = Learner(
        dls,
        TinyTextClassifier(),
        loss_func=CrossEntropyLossFlat(),
        metrics=accuracy,
        splitter=lambda m: [params(m.embed), params(m.lstm), params(m.head)],
        path=tmp_path,
    )
    learn.freeze()
    with learn.no_bar():
        suggest_for_learner(learn)
        before = _state(learn)
        s = suggest_for_learner(learn, epochs=2, log=lambda _: None)
        _assert_same(before, _state(learn))
    assert s.state == "frozen" and isinstance(s.value, float) and s.race.score == "accuracy"


def test_find_optimal_lr_races_when_told_the_epochs_and_prints_the_race(body, tmp_path, capsys):
    learn = transfer_learner(body, path=tmp_path, opt="sgd")
    learn.metrics = [accuracy]
    with learn.no_bar():
        lr = find_optimal_lr(learn, epochs=1)
    out = capsys.readouterr().out
    assert "race (scored by accuracy" in out and "<- winner" in out and "curve rules:" in out
    assert isinstance(lr, float)
