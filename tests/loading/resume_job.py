"""A training job for the resume tests, run by torchrun (or alone, as one rank).

Each rank "trains" on the media ids of its batches and checkpoints after every step, as a real job
checkpoints its model: the loader's state and what the rank has trained on since this run began.
A checkpoint is complete once ``latest.json`` names it: every rank writes
``<checkpoints>/<run>/step-<k>/rank-<r>.json``, and after a barrier rank 0 writes ``latest.json``.
Every file is written to a temporary name and moved into place, so a SIGKILL leaves either the
old file or the new one. A run that finds ``latest.json`` resumes from it: each rank loads its own
rank's state, or rank 0's when that rank did not exist (another world size): any rank's state
resumes every rank.

    python resume_job.py EXPORT CACHE CHECKPOINTS RUN --epochs 4 --workers 2 --step-s 0.02 [--per-shard 5]

With ``--per-shard N`` the dataset's items are in shards of N (``shard_groups``), as a shared
prepared store gives them, and the loader deals them in the shard-aware order (window ``WINDOW``).
With ``--prepared-root URL --prepare S --storage-options JSON`` the images are read from a real
shared prepared store there, through the node's shard cache (under CACHE), in its shard-aware order.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch.distributed as dist

from vl_datasets.loading.dataset import VisualLayerDataset

BATCH_SIZE = 2
SEED = 7
WINDOW = 2


def shard_groups(items: int, per_shard: int) -> np.ndarray:
    """Items in shards of ``per_shard``, every seventh in none (-1: read from its original)."""
    groups = np.arange(items) // per_shard
    groups[::7] = -1
    return groups


class Shards:
    """The dataset image side's ``item_shards`` answer, as a shared prepared store gives it."""

    def __init__(self, groups: np.ndarray) -> None:
        self.groups = groups

    def __call__(self) -> np.ndarray:
        return self.groups


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)


def resume_point(checkpoints: Path, rank: int) -> tuple[dict | None, int]:
    """(the loader state to load or None, the step to count on from)."""
    latest = checkpoints / "latest.json"
    if not latest.exists():
        return None, 0
    pointer = json.loads(latest.read_text())
    step_dir = checkpoints / pointer["run"] / f"step-{pointer['step']}"
    own = step_dir / f"rank-{rank}.json"
    saved = json.loads((own if own.exists() else step_dir / "rank-0.json").read_text())
    return saved["state"], pointer["step"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("export")
    parser.add_argument("cache")
    parser.add_argument("checkpoints", type=Path)
    parser.add_argument("run")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--step-s", type=float, default=0.02)
    parser.add_argument("--per-shard", type=int, default=0)
    parser.add_argument("--prepare", type=int)
    parser.add_argument("--prepared-root")
    parser.add_argument("--storage-options", type=json.loads)
    args = parser.parse_args()
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    # torchrun starts each rank in a session of its own: the test kills each rank's group by this pid.
    write_json(args.checkpoints / "pids" / args.run / f"rank-{rank}.json", os.getpid())
    shared = {}
    if args.prepared_root:
        shared = {"prepare": args.prepare, "prepared_root": args.prepared_root, "storage_options": args.storage_options}
    ds = VisualLayerDataset.from_export(args.export, cache_dir=args.cache, task=None, image_size=8, **shared)
    context = {"multiprocessing_context": "fork"} if args.workers else {}
    if args.per_shard:
        ds.images.item_shards = Shards(shard_groups(len(ds), args.per_shard))
    if args.per_shard or args.prepared_root:
        context["shard_window"] = WINDOW
    loader = ds.dataloader(BATCH_SIZE, num_workers=args.workers, seed=SEED, **context)
    state, step = resume_point(args.checkpoints, rank)
    if state is not None:
        loader.load_state_dict(state)
    seen: list[list] = []
    for epoch in range(loader.epoch, args.epochs):
        for _, rows in loader:
            seen += [[epoch, row["media_id"]] for row in rows]
            step += 1
            time.sleep(args.step_s)  # the training step
            step_dir = args.checkpoints / args.run / f"step-{step}"
            write_json(step_dir / f"rank-{rank}.json", {"state": loader.state_dict(), "seen": seen})
            if distributed:
                dist.barrier()
            if rank == 0:
                write_json(args.checkpoints / "latest.json", {"run": args.run, "step": step})
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
