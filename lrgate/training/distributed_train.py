"""One rank of a distributed training stage: what ``torchrun`` runs N times (see :mod:`lrgate.training.distributed`).

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m lrgate.training.distributed_train \\
        --config launch-train-frozen/config.json --run-dir RUN --stage train-frozen \\
        --checkpoint RUN/checkpoints/0-initial.pth --lr 0.01 --backend gloo --out RUN/launch-train-frozen

Each rank builds the Learner from the checkpoint (:func:`lrgate.training.stage_functions.make_learner`),
joins the process group and runs the stage's ``fit_one_cycle`` under ``learn.distrib_ctx`` with the value it was
given, then writes ``rank-<r>.json`` (what it trained with and how it went). Rank 0 alone prints progress and
saves the weights (``checkpoint.pth`` in ``--out``); the launcher moves them into place once every rank has
finished.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed
from fastai.distributed import DistributedDL
from fastai.torch_core import num_distrib, rank_distrib
from torch.distributed.elastic.multiprocessing.errors import record

from lrgate.core import parent_death
from lrgate.core.config import RunConfig
from lrgate.core.outputs import write_text
from lrgate.core.run_dir import RUN_FILE, RunInfo
from lrgate.training.distributed import STAGED_CHECKPOINT
from lrgate.training.stage_functions import fit, make_learner, resolve_device, save_checkpoint


def _broadcast_on_cpu(self: DistributedDL, t: list[int], rank: int) -> list[int]:
    """fastai's ``DistributedDL._broadcast`` with the tensor left on the CPU, where gloo wants it."""
    t = torch.LongTensor(t)
    torch.distributed.broadcast(t, rank)
    return t.tolist()


def keep_broadcast_on_cpu() -> None:
    """Workaround for fastai 2.8.12: ``DistributedDL._broadcast`` moves the batch order to CUDA unconditionally
    (for nccl), so a gloo run on a machine without a GPU fails ("Found no NVIDIA driver"). Call this in a rank
    process only, and only when the backend is not nccl. ``tests/test_distributed.py`` fails once fastai keeps
    the tensor where the backend wants it: then delete this function and its caller."""
    DistributedDL._broadcast = _broadcast_on_cpu


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The launcher's arguments (:func:`lrgate.training.distributed.launch_training` writes them)."""
    p = argparse.ArgumentParser(prog="python -m lrgate.training.distributed_train", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True, help="the run's config as JSON (RunConfig)")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--stage", choices=("train-frozen", "fine-tune"), required=True)
    p.add_argument("--checkpoint", type=Path, required=True, help="the weights and freeze state to start from")
    value = p.add_mutually_exclusive_group(required=True)
    value.add_argument("--lr", type=float)
    value.add_argument("--slice", type=float, nargs=2, metavar=("LO", "HI"))
    p.add_argument("--backend", choices=("nccl", "gloo"), required=True)
    p.add_argument("--out", type=Path, required=True, help="the launch folder: rank files and rank 0's weights")
    return p.parse_args(argv)


@record  # torchrun's failure summary then carries the failing rank's traceback
def main(argv: list[str] | None = None) -> None:
    """Train one rank's share of the stage; rank 0 also saves the weights. Raises whatever the fit raises
    (torchrun then stops the other ranks and exits non-zero)."""
    parent_death.arm(os.getppid())  # torchrun killed outright: this rank stops too (it has a session of its own)
    args = parse_args(argv)
    cfg = RunConfig.model_validate_json(args.config.read_text())
    saved = json.loads((args.run_dir / RUN_FILE).read_text())
    run = RunInfo(args.run_dir, saved["run_id"], saved["config_digest"], saved["data_fingerprint"])
    value = args.slice if args.slice is not None else args.lr
    rank, world_size = rank_distrib(), num_distrib()
    device = resolve_device(cfg.device)
    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # one GPU per rank, before any CUDA tensor
    if args.backend != "nccl":
        keep_broadcast_on_cpu()
    torch.distributed.init_process_group(backend=args.backend)  # accelerate then uses this group as it is
    try:
        log = print if rank == 0 else _silent  # torchrun starts ranks unbuffered: the launcher relays each line
        learn = make_learner(cfg, run, args.checkpoint, log=log)
        # SyncBatchNorm runs on GPUs only; on the CPU each rank keeps its own BatchNorm statistics, and DDP
        # hands rank 0's to the others at every forward pass.
        with learn.distrib_ctx(cpu=device == "cpu", sync_bn=device == "cuda"):
            fitted = fit(learn, cfg, value, args.stage, log=log)
        if rank == 0:
            save_checkpoint(learn, args.out / STAGED_CHECKPOINT)
        trained = {"rank": rank, "world_size": world_size, "backend": args.backend, **fitted}
        write_text(args.out / f"rank-{rank}.json", json.dumps(trained, indent=2))
    finally:
        torch.distributed.destroy_process_group()


def _silent(_message: str) -> None:
    """Ranks other than 0 log nothing: one line per epoch, not N."""


if __name__ == "__main__":
    main()
