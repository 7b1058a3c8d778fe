"""Record the example curves in lrgate/example_curves/ from real fastai ``lr_find`` runs.

    python -m tests.record_curves

Each curve is a real range test of a tiny transfer Learner (see tests/tiny_learners.py): frozen, then
after one frozen epoch at the suggested lr, ``freeze_to(1)`` and unfrozen. Re-running rewrites them
(torch's CPU kernels may differ slightly between machines, so the figures may move a little).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from lrgate.core.curve_file import write_curve_csv
from lrgate.core.suggest import suggest
from lrgate.training.range_test import run_range_test
from tests.tiny_learners import pretrained_body, transfer_learner

OUT = Path(__file__).resolve().parents[1] / "lrgate" / "example_curves"

# name: (optimizer, batch size, stop_div)
SETUPS = {"adam_bs64": ("adam", 64, True), "sgd_bs8": ("sgd", 8, True), "sgd_bs64_nostop": ("sgd", 64, False)}


def record(name: str, opt: str, bs: int, stop_div: bool, body: dict, workdir: str) -> None:
    learn = transfer_learner(body, bs=bs, opt=opt, path=workdir)
    with learn.no_bar():
        curve = run_range_test(learn, end_lr=10 if stop_div else 1e4, stop_div=stop_div)
        write_curve_csv(OUT / f"digits_{name}_frozen.csv", *curve)
        if not stop_div:
            return
        with learn.no_logging():
            learn.fit_one_cycle(1, suggest(*curve, "frozen").lr)
        learn.freeze_to(1)
        write_curve_csv(OUT / f"digits_{name}_freeze_to.csv", *run_range_test(learn))
        learn.unfreeze()
        write_curve_csv(OUT / f"digits_{name}_unfrozen.csv", *run_range_test(learn))


def main() -> None:
    body = pretrained_body()
    with tempfile.TemporaryDirectory() as workdir:
        for name, (opt, bs, stop_div) in SETUPS.items():
            record(name, opt, bs, stop_div, body, workdir)
            print("recorded", name)


if __name__ == "__main__":
    main()
