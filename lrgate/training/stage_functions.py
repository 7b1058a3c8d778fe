"""The pipeline's stages as plain functions (no Prefect): a notebook can call them, the tasks wrap them.

    build-learner -> range test (gate 1) -> train-frozen(lr) -> unfreeze -> range test (gate 2) -> fine-tune(slice)

Stages hand each other checkpoint paths, never models: each rebuilds its Learner from the config and the
previous stage's checkpoint (weights plus the freeze state), does its one job and writes its own outputs
into the run folder, atomically. That is what lets a killed run resume from its last finished stage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastai.callback.progress  # noqa: F401  (patches Learner.no_bar and the progress bar)
import fastai.callback.schedule  # noqa: F401  (patches Learner.fit_one_cycle)
import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import LRFinder
from fastai.learner import Learner, load_model, save_model
from fastai.torch_core import num_distrib, set_seed

from lrgate.core.config import RunConfig
from lrgate.core.curve_file import write_curve_csv
from lrgate.core.errors import CurveError, LrgateError, ShortCurveError
from lrgate.core.gate_records import GateRecord, SuggestionRecord
from lrgate.core.outputs import file_digest, write_atomic, write_text
from lrgate.core.plot import save_review, save_unread_curve
from lrgate.core.run_dir import RunInfo
from lrgate.core.suggest import format_choices, takes_slice
from lrgate.training.data import ImageSet, build_dataloaders, list_images
from lrgate.training.distributed import launch_training
from lrgate.training.learner_state import detect_state
from lrgate.training.learner_suggestion import suggest_for_learner
from lrgate.training.models import build_learner
from lrgate.training.race import CompressedSchedule, race_suggestion
from lrgate.training.range_test import recorded_curve


class DeviceError(LrgateError):
    """A device or precision the machine cannot give."""


def resolve_device(device: str) -> str:
    """``auto`` is CUDA when there is a GPU, else the CPU; asking for CUDA without one is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device: cuda was asked for, but torch sees no GPU here; use device: auto or cpu")
    return device


def effective_precision(cfg: RunConfig, device: str) -> str:
    """Mixed precision runs on CUDA only (fastai's MixedPrecision autocasts for CUDA); the CPU trains in fp32."""
    return cfg.precision if device == "cuda" else "fp32"


def data_cache_dir(cfg: RunConfig) -> Path:
    """Where generated data (the demo digits) lives: shared by the runs of one output folder."""
    return cfg.output_dir / ".data"


def load_images(cfg: RunConfig, *, check: bool = True) -> ImageSet:
    return list_images(cfg.data, data_cache_dir(cfg), check=check)


Log = Callable[[str], object]


class ProgressLog(Callback):
    """One log line per epoch (losses, metrics, time) instead of a terminal progress bar, for Prefect's logs."""

    order = 60  # after the Recorder has written the epoch's log

    def __init__(self, log: Log) -> None:
        self.log = log

    def before_epoch(self) -> None:
        self.skipped = False

    def after_cancel_epoch(self) -> None:
        self.skipped = True  # an epoch a resumed fit skips (fastai's SkipToEpoch): it was logged before the kill

    def after_epoch(self) -> None:
        if self.skipped or any(isinstance(cb, LRFinder | CompressedSchedule) for cb in self.learn.cbs):
            return  # a range test or a race's trial: its gate logs its own lines
        values = dict(zip(self.recorder.metric_names, self.recorder.log, strict=False))
        shown = ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items() if k != "epoch"
        )
        self.log(f"epoch {self.epoch + 1}/{self.n_epoch}: {shown}")


class FitProbe(Callback):
    """Records what a fit really trained with: the peak lr of each parameter group, and images seen."""

    order = 90  # after the ParamScheduler has set this batch's hyper-parameters

    def before_fit(self) -> None:
        self.peak_lrs = [0.0] * len(self.opt.hypers)
        self.images = 0

    def after_batch(self) -> None:
        if self.training:
            self.peak_lrs = [max(p, float(h["lr"])) for p, h in zip(self.peak_lrs, self.opt.hypers, strict=True)]
            self.images += len(self.xb[0])


class EpochCheckpoint(Callback):
    """After each finished epoch of a stage's fit, the weights and optimizer state (fastai's ``save_model``) in
    ``path``, and beside it ``path.json``: the last finished epoch, the file's sha256 and size, the metrics of every
    epoch so far and ``identity`` (the stage's key, its starting checkpoint, its value), so that a killed stage
    resumes after that epoch (:func:`resume_epochs`). Both files are written atomically, the weights first.

    ``earlier`` is the record a resumed fit starts from (its epochs are merged into each new record), else None.
    """

    order = 65  # after the Recorder (50) has stored the epoch's values, before fastai's SkipToEpoch (70)

    def __init__(self, path: Path, identity: dict[str, Any], earlier: dict[str, Any] | None = None) -> None:
        self.file, self.identity, self.earlier = path, identity, earlier  # (``path`` would shadow learn.path)

    @property
    def done(self) -> int:
        """The epochs finished before this fit (the ``start_epoch`` a resumed fit skips to)."""
        return self.earlier["epoch"] if self.earlier else 0

    def before_fit(self) -> None:
        self.started = time.perf_counter()

    def before_epoch(self) -> None:
        self.skipped = False

    def after_cancel_epoch(self) -> None:
        self.skipped = True  # skipped on resume: the saved file already holds it

    def after_epoch(self) -> None:
        if self.skipped:
            return
        write_atomic(self.file, lambda f: save_model(f, self.learn.model, self.learn.opt))
        progress = fit_progress(self.learn, self.earlier, time.perf_counter() - self.started)
        record = {**self.identity, "epoch": self.epoch + 1, "file": file_digest(self.file), **progress}
        write_text(epoch_record(self.file), json.dumps(record, indent=2))

    def remove(self) -> None:
        """Remove both files: the stage finished, and its own checkpoint replaces them."""
        for p in (self.file, epoch_record(self.file)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def epoch_record(path: Path) -> Path:
    """The JSON beside an epoch checkpoint: which epoch it holds, its digest, the epochs' metrics."""
    return path.with_suffix(".json")


def resume_epochs(
    learn: Learner, path: Path, identity: dict[str, Any], start: str | os.PathLike, warn: Log = print
) -> dict[str, Any] | None:
    """Load the weights and optimizer state of a killed fit's last finished epoch into ``learn``, if ``path`` holds
    one of this same fit (the record's ``identity`` is this one and the file's sha256 and size are recorded);
    return its record, or None (nothing there; or a mismatching or corrupt file, said with ``warn``: the fit then
    starts at epoch 1, from ``start``, the stage's own checkpoint)."""
    record_path = epoch_record(path)
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except (ValueError, UnicodeDecodeError):
        record = None
    why = None
    if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
        why = f"{record_path.name} is not an epoch record"
    elif differ := [k for k, v in identity.items() if record.get(k) != v]:
        why = f"it is another fit's: its {', '.join(differ)} not this one's"
    elif not 1 <= record["epoch"] <= identity["n_epoch"]:
        why = f"its epoch {record['epoch']} is not one of {identity['n_epoch']}"
    elif not path.is_file() or file_digest(path) != record.get("file"):
        why = "its sha256 or size is not the one recorded: it changed since it was written"
    else:
        try:
            # fastai's load_model only warns when the optimizer state does not load: here that is an error
            if learn.opt is None:
                learn.create_opt()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                load_model(path, learn.model, learn.opt, device=learn.dls.device)
            if any("optimizer state" in str(w.message) for w in caught):
                raise ValueError("the optimizer state does not load")
            return record
        except Exception as e:  # any failure to load: train from the stage's start
            why = f"it cannot be loaded: {e}"
            learn.create_opt()
            restore_checkpoint(learn, start)
    warn(f"{identity['stage']}: ignoring {path.parent.name}/{path.name} ({why}): training from epoch 1")
    return None


def _spawn_safe_workers() -> None:
    """DataLoader workers forked from Prefect's multithreaded process can deadlock (prefect issue 12083):
    start them from a fork server instead, unless the program already chose a start method."""
    import multiprocessing

    if multiprocessing.get_start_method(allow_none=True) is None:
        multiprocessing.set_start_method("forkserver")


def make_learner(
    cfg: RunConfig, run: RunInfo, checkpoint: str | os.PathLike | None = None, log: Log = print
) -> Learner:
    """The run's Learner: data, body and head from the config, weights and freeze state from ``checkpoint``.

    Progress goes to ``log``, an epoch a line, not to a terminal progress bar.
    """
    device = resolve_device(cfg.device)
    set_seed(cfg.seed, reproducible=True)
    images = load_images(cfg, check=False)
    workers = cfg.train.num_workers if cfg.train.num_workers is not None else (8 if device == "cuda" else 0)
    if workers:
        _spawn_safe_workers()
    dls = build_dataloaders(
        images,
        image_size=cfg.train.image_size,
        batch_size=cfg.train.batch_size,
        valid_pct=cfg.data.valid_pct,
        seed=cfg.seed,
        device=device,
        num_workers=workers,
    )
    learn = build_learner(dls, cfg.model, run.run_dir)
    learn.model_dir = "lr_find_tmp"  # lr_find's temporary weights: inside this run's folder, never shared
    if checkpoint is not None:
        restore_checkpoint(learn, checkpoint)
    if device == "cuda":
        learn.model.to(memory_format=torch.channels_last)  # faster convolutions on tensor cores
    precision = effective_precision(cfg, device)
    if precision == "fp16":
        learn.to_fp16()
    elif precision == "bf16":
        learn.to_bf16()
    if hasattr(learn, "progress"):
        learn.remove_cb(learn.progress)
    learn.add_cbs([FitProbe(), ProgressLog(log)])
    return learn


def save_checkpoint(learn: Learner, path: Path) -> Path:
    """Weights and freeze state, atomically (optimizer state is not kept: each stage starts its own fit)."""
    state = {"model": learn.model.state_dict(), "frozen_idx": detect_state(learn).frozen_groups}
    return write_atomic(path, lambda f: torch.save(state, f))


def written(*paths: Path) -> dict[str, dict[str, str | int]]:
    """The ``files`` of a stage's record: each file the stage wrote, with its sha256 and size, so a resume redoes
    the stage when one has changed since (a truncated or corrupted checkpoint)."""
    return {str(p): file_digest(p) for p in paths}


def restore_checkpoint(learn: Learner, path: str | os.PathLike) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    learn.model.load_state_dict(state["model"])
    learn.freeze_to(state["frozen_idx"])


def _gate_dir(run: RunInfo, gate: str) -> Path:
    return run.path(f"gate-{gate}")


def build_initial(cfg: RunConfig, run: RunInfo, log: Log = print) -> dict[str, Any]:
    """The pretrained body with a fresh head, frozen: the checkpoint gate 1 starts from."""
    learn = make_learner(cfg, run, log=log)
    state = detect_state(learn)
    path = save_checkpoint(learn, run.path("checkpoints/0-initial.pth"))
    device = resolve_device(cfg.device)
    return {
        "checkpoint": str(path),
        "files": written(path),
        "state": state.state,
        "n_groups": state.n_groups,
        "device": device,
        "precision": effective_precision(cfg, device),
    }


def range_test(
    cfg: RunConfig, run: RunInfo, checkpoint: str, gate: str, log: Log = print, head_lr: float | None = None
) -> GateRecord:
    """Run ``lr_find`` on the checkpoint's Learner and write the gate's curve, review plot, data and suggestion.
    After unfreeze, ``head_lr`` (the lr the frozen stage trained with) centres the race's candidates."""
    learn = make_learner(cfg, run, checkpoint, log=log)
    log(
        f"gate {gate}: lr_find from {cfg.lr_find.start_lr:g} to {cfg.lr_find.end_lr:g}, {cfg.lr_find.num_it} iterations"
    )
    started = time.perf_counter()
    settings = dict(
        noise=cfg.suggest.noise,
        margin=cfg.suggest.margin,
        method=cfg.suggest.method,
        start_lr=cfg.lr_find.start_lr,
        end_lr=cfg.lr_find.end_lr,
        num_it=cfg.lr_find.num_it,
        rerun=True,
    )
    try:
        try:
            s = suggest_for_learner(learn, stop_div=cfg.lr_find.stop_div, **settings)
        except ShortCurveError as e:
            if not cfg.lr_find.stop_div:
                raise
            # A low loss (a well-trained head, say) passes fastai's 4x-best stop within a few noisy batches.
            log(f"gate {gate}: {e}; running the range test again without fastai's early stop")
            s = suggest_for_learner(learn, stop_div=False, **settings)
            note = f"the range test stopped too early ({e}); reran it with stop_div=False"
            s = dataclasses.replace(s, warnings=(note, *s.warnings))
    except CurveError as e:
        # The curve cannot be read: keep it for a person; the gate decides what that means (a pinned value
        # goes on, a person may override or reject, an unattended gate without a guard stops the run).
        s, error = None, str(e)
        log(f"gate {gate}: the range test cannot be read: {e}")
    finally:
        # lr_find saves and removes its temporary weights there, and leaves the folder behind: remove it if empty
        with contextlib.suppress(OSError):
            (learn.path / learn.model_dir).rmdir()
    if s is not None and cfg.race is not None:
        pin = getattr(cfg.gates, gate)
        if pin.lr is None and pin.slice is None:  # a pinned gate trains with its pin: nothing to race for
            s = race_suggestion(
                learn,
                s,
                recorded_curve(learn),
                epochs=stage_epochs(cfg, "train-frozen" if gate == "frozen" else "fine-tune"),  # what it trains
                range_test_iterations=cfg.lr_find.num_it,
                budget=cfg.race.budget,
                score=cfg.race.score or cfg.promotion.metric,
                head_lr=head_lr,
                log=log,
            )
    seconds = round(time.perf_counter() - started, 2)
    out = _gate_dir(run, gate)
    lrs, losses = recorded_curve(learn)
    curve = write_curve_csv(out / "curve.csv", lrs, losses)
    state = detect_state(learn)
    common = {"gate": gate, "state": state.state, "curve_csv": str(curve), "seconds": seconds}
    if s is None:
        # No suggestion, but the gate keeps its graph, and a person can still decide (override or reject) with
        # the tested range and the kind of value (lr or slice) the next stage trains with.
        tested = (float(lrs[0]), float(lrs[-1])) if len(lrs) else (cfg.lr_find.start_lr, cfg.lr_find.end_lr)
        title = f"{state.state}: the range test cannot be read: {error}"
        return GateRecord(
            **common,
            suggestion=None,
            error=error,
            takes_slice=takes_slice(state.state, state.n_groups),
            tested_range=tested,
            plot=str(save_unread_curve(lrs, losses, out / "review.png", title)),
        )
    plot, frame = save_review(s, out / "review.png")
    suggestion = s.to_dict()
    write_text(out / "suggestion.json", json.dumps(suggestion, indent=2))
    return GateRecord(
        **common,
        suggestion=SuggestionRecord.read(suggestion),
        choices=format_choices(s, race=False),
        plot=str(plot),
        frame_csv=str(frame),
    )


def as_lr(value: float | list[float]) -> float | slice:
    """A decision's value as ``fit_one_cycle`` takes it."""
    return slice(*value) if isinstance(value, list) else float(value)


def train(
    cfg: RunConfig,
    run: RunInfo,
    checkpoint: str,
    value: float | list[float],
    stage: str,
    log: Log = print,
    warn: Log | None = None,
) -> dict[str, Any]:
    """``fit_one_cycle`` from the checkpoint with the gate's lr or slice; writes the next checkpoint and metrics.

    In one process, each finished epoch is saved as ``checkpoints/<stage>-epoch.pth`` (:class:`EpochCheckpoint`):
    a stage killed mid-fit resumes after its last finished epoch when run again, with the same one-cycle schedule
    (fastai's ``start_epoch``), and its metrics list every epoch; the files are removed once the stage is done. A
    mismatching or corrupt epoch file is ignored, said with ``warn`` (default ``log``).

    With ``distributed.processes`` above 1 the fit runs as a ``torchrun`` launch of that many ranks
    (:mod:`lrgate.training.distributed`), every rank with this ``value``; the checkpoint and metrics are rank 0's.
    No epoch is saved there: a killed distributed stage trains again from epoch 1.
    """
    out = run.path(f"checkpoints/{'1-frozen' if stage == 'train-frozen' else '3-fine-tuned'}.pth")
    if cfg.distributed.processes > 1:
        fitted = launch_training(cfg, run, checkpoint, value, stage, out, device=resolve_device(cfg.device), log=log)
        epochs = None
    else:
        learn = make_learner(cfg, run, checkpoint, log=log)
        name = f"checkpoints/{stage}-epoch.pth"
        path = run.path(name)
        identity = {
            "stage": stage,
            "key": run.stage_key(stage),  # the run id, config digest and data fingerprint
            "start": {"checkpoint": str(checkpoint), **file_digest(checkpoint)},
            "value": json.loads(json.dumps(value)),  # as the record has it: a slice is a list
            "n_epoch": stage_epochs(cfg, stage),
        }
        earlier = resume_epochs(learn, path, identity, checkpoint, warn or log)
        if earlier is not None and earlier["epoch"] < identity["n_epoch"]:
            log(f"{stage}: resuming from epoch {earlier['epoch'] + 1} of {identity['n_epoch']} ({name})")
        elif earlier is not None:  # killed after its last epoch, before the stage's checkpoint was written
            log(f"{stage}: all {identity['n_epoch']} epochs were done ({name})")
        epochs = EpochCheckpoint(path, identity, earlier)
        fitted = fit(learn, cfg, value, stage, log, epochs)
        save_checkpoint(learn, out)
    metrics = {"stage": stage, "checkpoint": str(out), "files": written(out), **fitted}
    write_text(run.path(f"metrics-{stage}.json"), json.dumps(metrics, indent=2))
    if epochs is not None:
        epochs.remove()
    return metrics


def stage_epochs(cfg: RunConfig, stage: str) -> int:
    return cfg.train.frozen_epochs if stage == "train-frozen" else cfg.train.unfrozen_epochs


def fit(
    learn: Learner,
    cfg: RunConfig,
    value: float | list[float],
    stage: str,
    log: Log = print,
    epochs: EpochCheckpoint | None = None,
) -> dict[str, Any]:
    """The stage's ``fit_one_cycle`` with ``value``; what it trained with and how it went (writes nothing but what
    ``epochs`` saves after each epoch).

    A fit that ``epochs`` resumes (``epochs.earlier``: weights and optimizer state already loaded) skips the epochs
    done before with fastai's ``start_epoch``, which keeps the one-cycle schedule where it was; its record counts
    the earlier epochs, images and seconds too (``resumed_from_epoch`` says where it went on; 1 when it did not).

    Under fastai's distributed context each rank sees an equal share of every epoch (``DistributedDL`` pads the
    shares), so images/s counts this rank's images times the world size.
    """
    n_epoch = stage_epochs(cfg, stage)
    done = epochs.done if epochs else 0
    started = time.perf_counter()
    log(f"{stage}: fit_one_cycle({n_epoch}, {as_lr(value)})")
    with learn.no_logging():
        learn.fit_one_cycle(n_epoch, as_lr(value), cbs=[epochs] if epochs else None, start_epoch=done)
    progress = fit_progress(learn, epochs.earlier if epochs else None, time.perf_counter() - started)
    seconds = progress["seconds"]
    return {
        "fit_lr": value,
        "peak_lrs": progress["peak_lrs"],
        "epochs": progress["epochs"],
        "seconds": round(seconds, 2),
        "images_per_s": round(progress["images"] / seconds, 1) if seconds > 0 else None,
        "resumed_from_epoch": done + 1,
    }


def fit_progress(learn: Learner, earlier: dict[str, Any] | None, seconds: float) -> dict[str, Any]:
    """What a fit has done so far, counting the ``earlier`` record of the killed fit it resumed: every finished
    epoch's metrics, the peak lr of each parameter group, the images seen and the seconds."""
    probe = learn.fit_probe
    names = learn.recorder.metric_names[1:-1]  # drop "epoch" and "time"
    # the Recorder stores an empty row for each epoch a resumed fit skips: its own rows come after them
    done = earlier["epoch"] if earlier else 0
    epochs = [dict(zip(names, map(_number, values), strict=True)) for values in learn.recorder.values[done:]]
    progress = {
        "epochs": epochs,
        "peak_lrs": probe.peak_lrs,
        "images": probe.images * max(1, num_distrib()),
        "seconds": seconds,
    }
    if earlier is None:
        return progress
    return {
        "epochs": earlier["epochs"] + epochs,
        "peak_lrs": [max(a, b) for a, b in zip(earlier["peak_lrs"], probe.peak_lrs, strict=True)],
        "images": earlier["images"] + progress["images"],
        "seconds": earlier["seconds"] + seconds,
    }


def _number(v: Any) -> float | None:
    return None if v is None else float(v)


def unfreeze(cfg: RunConfig, run: RunInfo, checkpoint: str) -> dict[str, Any]:
    """``unfreeze()``, or ``freeze_to(n)`` when the config says so; the checkpoint gate 2 starts from."""
    learn = make_learner(cfg, run, checkpoint)
    n_groups = detect_state(learn).n_groups
    if cfg.train.unfreeze == "all":
        learn.unfreeze()
    elif cfg.train.unfreeze >= n_groups:
        raise LrgateError(
            f"train.unfreeze: freeze_to({cfg.train.unfreeze}) on a model of {n_groups} groups trains nothing"
        )
    else:
        learn.freeze_to(cfg.train.unfreeze)
    state = detect_state(learn)
    path = save_checkpoint(learn, run.path("checkpoints/2-unfrozen.pth"))
    return {"checkpoint": str(path), "files": written(path), "state": state.state, "frozen_groups": state.frozen_groups}


def export(cfg: RunConfig, run: RunInfo, checkpoint: str) -> dict[str, Any]:
    """``learn.export`` of the fine-tuned model as ``model.pkl`` (written beside, then renamed into place)."""
    learn = make_learner(cfg, run, checkpoint)
    learn.remove_cbs([learn.fit_probe, learn.progress_log])  # run-time helpers, not part of the model
    final = run.path("model.pkl")
    tmp = final.with_name(".model.pkl.part")
    learn.export(tmp)
    os.replace(tmp, final)
    return {"model": str(final), "files": written(final), "classes": list(learn.dls.vocab)}
