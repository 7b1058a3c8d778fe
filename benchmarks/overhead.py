"""What lrgate's orchestration costs: the pipeline against a plain fastai script doing the same steps.

    python -m benchmarks.overhead [CONFIG.yaml]      # default: configs/demo.yaml

Runs the pipeline (Prefect's embedded server unless PREFECT_API_URL is set), then a plain script with the same
data, body, seed, range tests and the lr and slice the pipeline's gates chose, and prints the wall time of each
stage side by side and the ratio. Both run in this process, one after the other, on the same machine.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from lrgate.core.config import load_config  # noqa: E402
from lrgate.core.run_dir import RunInfo  # noqa: E402
from lrgate.training.stage_functions import as_lr, make_learner  # noqa: E402


def plain_fastai(config: Path, lr, sl) -> dict[str, float]:
    """The same steps without Prefect, checkpoints, plots or reports: build, lr_find, fit, unfreeze, lr_find, fit."""
    cfg = load_config(config)
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        learn = make_learner(cfg, RunInfo(Path(tmp), "plain", "-", "-"), log=lambda _: None)
        times["build-learner"] = time.perf_counter() - t
        for name, step in (
            ("gate-frozen", lambda: learn.lr_find(num_it=cfg.lr_find.num_it, show_plot=False)),
            ("train-frozen", lambda: learn.fit_one_cycle(cfg.train.frozen_epochs, as_lr(lr))),
            ("unfreeze", learn.unfreeze),
            ("gate-unfrozen", lambda: learn.lr_find(num_it=cfg.lr_find.num_it, show_plot=False)),
            ("fine-tune", lambda: learn.fit_one_cycle(cfg.train.unfrozen_epochs, as_lr(sl))),
            ("export", lambda: learn.export(Path(tmp) / "model.pkl")),
        ):
            t = time.perf_counter()
            with learn.no_logging():
                step()
            times[name] = time.perf_counter() - t
    return times


def main() -> None:
    config = Path(sys.argv[1] if len(sys.argv) > 1 else "configs/demo.yaml")
    from lrgate.flows.pipeline import pipeline

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        summary = pipeline(str(config), str(Path(tmp) / "run"))
        lrgate_total = time.perf_counter() - t
        lr, sl = summary["decisions"]["frozen"]["value"], summary["decisions"]["unfrozen"]["value"]
        stage_seconds = {
            "train-frozen": summary["metrics"]["train-frozen"]["seconds"],
            "fine-tune": summary["metrics"]["fine-tune"]["seconds"],
        }
    t = time.perf_counter()
    plain = plain_fastai(config, lr, sl)
    plain_total = time.perf_counter() - t
    print(f"\nconfig {config}: gate 1 lr {lr}, gate 2 slice {sl}")
    print(f"{'stage':<16}{'plain fastai s':>16}{'lrgate fit s':>14}")
    for name, seconds in plain.items():
        ours = stage_seconds.get(name)
        print(f"{name:<16}{seconds:>16.1f}{'' if ours is None else f'{ours:>14.1f}'}")
    print(f"{'total':<16}{plain_total:>16.1f}{lrgate_total:>14.1f}   (lrgate total includes Prefect's start-up)")
    print(f"lrgate / plain wall time: {lrgate_total / plain_total:.2f}")


if __name__ == "__main__":
    main()
