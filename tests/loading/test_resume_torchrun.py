"""A real torchrun job killed with SIGKILL at random steps and resumed from its last checkpoint, on
2 ranks and then on 1: each rank continues exactly, and every item of every epoch is trained on once.

The job is ``tests/loading/resume_job.py``; a kill takes every process of it at once (the agent, the
ranks and their DataLoader workers), as a lost node would.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import REPO, child_env
from tests.loading.helpers import make_items
from tests.loading.resume_job import BATCH_SIZE, SEED, WINDOW, shard_groups
from tests.waits import Child
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.loading.sampler import EpochSampler
from vl_datasets.testing import write_dataset

ITEMS = 24  # divides among 4, 2 and 1 ranks: no padding, so "exactly once" is exact
EPOCHS = 4
JOB = Path(__file__).with_name("resume_job.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def job(tmp_path):
    """(export folder, cache folder, checkpoints folder), the export opened once so no rank builds its index."""
    write_dataset(tmp_path, "export", media_items=make_items(ITEMS))
    VisualLayerDataset.from_export(tmp_path / "export", cache_dir=tmp_path / "cache", task=None)
    return tmp_path / "export", tmp_path / "cache", tmp_path / "checkpoints"


def start(job, run: str, *, ranks: int, workers: int, per_shard: int = 0) -> Child:
    export, cache, checkpoints = job
    command = [str(JOB), str(export), str(cache), str(checkpoints), run, "--epochs", str(EPOCHS)]
    command += ["--workers", str(workers), "--per-shard", str(per_shard)]
    if ranks > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}", "--nnodes=1"]
        launcher += ["--master-addr=127.0.0.1", f"--master-port={free_port()}"]
    else:
        launcher = [sys.executable]
    env = {**child_env(), "OMP_NUM_THREADS": "1"}
    return Child(launcher + command, env=env, cwd=REPO, start_new_session=True)


def latest_step(checkpoints: Path) -> tuple[str, int]:
    """(run, step) of the last complete checkpoint; ("", -1) before the first."""
    path = checkpoints / "latest.json"
    if not path.exists():
        return "", -1
    pointer = json.loads(path.read_text())
    return pointer["run"], pointer["step"]


def kill(job: Child, checkpoints: Path, run: str) -> None:
    """SIGKILL every process of the job. torchrun starts each rank in a session of its own, so the
    agent's group holds no rank: each rank's group (the rank and its DataLoader workers) goes too."""
    for pid_file in (checkpoints / "pids" / run).glob("rank-*.json"):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(json.loads(pid_file.read_text()), signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(job.pid, signal.SIGKILL)
    job.wait(f"run {run}'s end after SIGKILL")


def kill_at(job: Child, where, run: str, step: int) -> None:
    """Kill the job once its checkpoint of ``step`` (or a later one) is complete."""
    with job:
        # runs are named in order: "a", "b", ...
        job.until(lambda: latest_step(where[2]) >= (run, step), f"run {run}'s checkpoint of step {step}")
        kill(job, where[2], run)


def finish(job: Child, run: str) -> None:
    with job:
        code = job.wait(f"run {run}'s end")
        assert code == 0, f"run {run} failed:\n{job.report('failed')[-3000:]}"


def trained_on(checkpoints: Path, run: str) -> Counter:
    """What ``run`` trained on, as its last complete checkpoint records it: (epoch, media id) counts."""
    pointer_run, step = latest_step(checkpoints)
    assert pointer_run == run, f"the last complete checkpoint is {pointer_run!r}'s, not {run!r}'s"
    counts: Counter = Counter()
    for path in (checkpoints / run / f"step-{step}").glob("rank-*.json"):
        counts.update(tuple(pair) for pair in json.loads(path.read_text())["seen"])
    return counts


def every_item_once(counts: Counter) -> None:
    expected = {(epoch, f"m{i:03d}") for epoch in range(EPOCHS) for i in range(ITEMS)}
    missing = sorted(expected - set(counts))
    repeated = sorted(key for key, count in counts.items() if count > 1)
    assert not missing, f"items never trained on: {missing[:10]}"
    assert not repeated, f"items trained on twice: {repeated[:10]}"
    assert set(counts) == expected


def rank_sequences(checkpoints: Path, run: str, ranks: int) -> list[list]:
    """Each rank's (epoch, media id) in the order it trained on them, as ``run``'s last checkpoint records."""
    _, step = latest_step(checkpoints)
    step_dir = checkpoints / run / f"step-{step}"
    return [[tuple(p) for p in json.loads((step_dir / f"rank-{r}.json").read_text())["seen"]] for r in range(ranks)]


def uninterrupted(export: Path, cache: Path, ranks: int, per_shard: int = 0) -> list[list]:
    """Each rank's (epoch, media id) of an uninterrupted job, by the same arithmetic the loader uses."""
    ds = VisualLayerDataset.from_export(export, cache_dir=cache, task=None)
    out = []
    for rank in range(ranks):
        shards = {"groups": shard_groups(ITEMS, per_shard), "window": WINDOW} if per_shard else {}
        order = "shards" if per_shard else "distributed"
        sampler = EpochSampler(ds, order=order, seed=SEED, rank=rank, world_size=ranks, **shards)
        out.append([])
        for epoch in range(EPOCHS):
            sampler.set_epoch(epoch)
            out[-1] += [(epoch, ds.media_ids[i]) for i in sampler]
    return out


@pytest.mark.parametrize(("trial", "per_shard"), [(1, 0), (2, 0), (3, 5)])
def test_two_ranks_killed_twice_then_one_rank_train_on_every_item_once(job, tmp_path, trial, per_shard):
    """Killed part-way through epoch 0 or 1, then through epoch 3, then finished on one rank without
    workers; the third trial with its items in shards (the shard-aware order)."""
    rng = random.Random(trial)
    steps_per_epoch = ITEMS // 2 // BATCH_SIZE
    kills = {
        "a": rng.randint(1, 2 * steps_per_epoch - 1),
        "b": rng.randint(3 * steps_per_epoch + 1, 4 * steps_per_epoch - 1),
    }
    counts: Counter = Counter()
    sequences = [[], []]
    for run, kill in kills.items():
        kill_at(start(job, run, ranks=2, workers=2, per_shard=per_shard), job, run, kill)
        counts += trained_on(job[2], run)
        for rank, sequence in enumerate(rank_sequences(job[2], run, 2)):
            sequences[rank] += sequence
    expected = uninterrupted(job[0], job[1], 2, per_shard)
    for rank in range(2):
        assert sequences[rank] == expected[rank][: len(sequences[rank])], f"rank {rank} did not continue exactly"
    finish(start(job, "c", ranks=1, workers=0, per_shard=per_shard), "c")
    counts += trained_on(job[2], "c")
    every_item_once(counts)
