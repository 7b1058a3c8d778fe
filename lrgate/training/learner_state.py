"""Which parameter groups of a fastai Learner train: frozen, freeze_to(n) or unfrozen.

The optimizer's ``frozen_idx`` (how many leading groups are frozen) against its number of parameter
groups is the ground truth. Counting ``requires_grad`` is not: BatchNorm layers stay trainable in frozen
groups (``train_bn=True``), so a frozen model would look partly unfrozen. No ``model[-2]`` or
``model.body`` is assumed: any splitter works.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastai.learner import Learner

from lrgate.core.errors import LearnerStateError
from lrgate.core.suggest import State


@dataclass(frozen=True)
class LearnerState:
    """``state`` plus the figures it was read from, and a warning where the reading needs one."""

    state: State
    frozen_groups: int
    n_groups: int
    warnings: tuple[str, ...] = ()


def detect_state(learn: Learner) -> LearnerState:
    """Read the freeze state of ``learn`` (creates its optimizer if it has none yet, as ``fit`` would).

    Raises
    ------
    LearnerStateError
        Every parameter group is frozen, so a range test would train nothing.
    """
    if learn.opt is None:
        learn.create_opt()
    n_groups = len(learn.opt.param_lists)
    frozen = int(learn.opt.frozen_idx)
    if n_groups == 1:
        return LearnerState(
            "unfrozen",
            0,
            1,
            (
                "the model has a single parameter group, so it cannot be frozen: read as unfrozen, with one lr "
                "(give the Learner a splitter to train body and head apart)",
            ),
        )
    if frozen >= n_groups:
        raise LearnerStateError(
            f"all {n_groups} parameter groups are frozen (frozen_idx={frozen}): nothing would train; "
            "call learn.freeze() or learn.unfreeze() first"
        )
    if frozen <= 0:
        return LearnerState("unfrozen", 0, n_groups)
    if frozen == n_groups - 1:
        return LearnerState("frozen", frozen, n_groups)
    return LearnerState("freeze_to", frozen, n_groups)
