"""``torchrun ... -m vl_datasets prepare SOURCE --size S --to URL``: every rank of the job builds its
own shares, on one node of two ranks and on two "nodes" (two torchrun agents on loopback, each with
a cache folder of its own), against S3 on loopback; the published store equals a one-process build.
A two-rank build killed mid-build (every process at once) resumes with only the missing shares.
A two-node training job reads the published store with its originals gone, killed and resumed."""

from __future__ import annotations

import json
import shutil
import sys

from tests.helpers import REPO, child_env
from tests.loading.resume_job import BATCH_SIZE
from tests.loading.shared_store_files import ITEMS, SIZE, location_of, open_shared, read_store, same_store
from tests.loading.test_resume_torchrun import EPOCHS, free_port, kill, latest_step, trained_on
from tests.loading.test_shared_store_writer import (
    clean_build,
    kill_job,
    killed_mid_build,
    resumed_only_the_missing_shares,
    start_job,
    wait_for,
)
from tests.waits import Child, run_child
from vl_datasets.loading.dataset import VisualLayerDataset

RESUME_JOB = REPO / "tests" / "loading" / "resume_job.py"
SHARDS = ["--share-images", "4", "--shard-size", "3000"]


def prepare_command(shared_export, cache, shared_bucket) -> list[str]:
    root, options = shared_bucket
    command = ["-m", "vl_datasets", "prepare", str(shared_export), "--size", str(SIZE), "--to", root]
    for key in ("endpoint_url", "key", "secret"):
        command += ["--storage-option", f"{key}={options[key]}"]
    return [*command, "--cache-dir", str(cache), "--workers", "1", *SHARDS]


def torchrun(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *arguments]


def env() -> dict:
    return {**child_env(), "OMP_NUM_THREADS": "1", "VL_DATASETS_PROGRESS": "0"}


def one_process_build(shared_export, cache, shared_bucket):
    """The same store built by one process under another prefix, read back."""
    alone = (shared_bucket[0] + "-one-process", shared_bucket[1])
    ds = open_shared(shared_export, cache, alone)
    ds.prepare(num_workers=0, progress=False, share_images=4, shard_bytes=3000)
    return read_store(location_of(ds, alone).url, shared_bucket[1])


def published(shared_export, cache, shared_bucket):
    ds = open_shared(shared_export, cache, shared_bucket)
    return read_store(location_of(ds, shared_bucket).url, shared_bucket[1])


def test_two_ranks_of_one_node_publish_the_store_a_single_process_builds(shared_export, tmp_path, shared_bucket):
    cache = tmp_path / "cache"
    VisualLayerDataset.from_export(shared_export, cache_dir=cache, task=None)  # opened once: no rank builds its index
    launcher = torchrun("--standalone", "--nproc-per-node", "2")
    result = run_child([*launcher, *prepare_command(shared_export, cache, shared_bucket)], env=env(), cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert shared_bucket[1]["secret"] not in result.stdout + result.stderr
    store = published(shared_export, cache, shared_bucket)
    assert store["manifest"]["images"] == ITEMS and len(store["manifest"]["shares"]) == 5
    same_store(store, one_process_build(shared_export, cache, shared_bucket))


def test_two_nodes_with_caches_of_their_own_publish_the_store_a_single_process_builds(
    shared_export, tmp_path, shared_bucket
):
    caches = [tmp_path / "node-0", tmp_path / "node-1"]
    for cache in caches:  # each node exports for itself: other version names, the same content
        VisualLayerDataset.from_export(shared_export, cache_dir=cache, task=None)
    port = free_port()
    rendezvous = ["--nnodes", "2", "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port)]
    commands = [
        [*torchrun(*rendezvous, "--node-rank", str(node)), *prepare_command(shared_export, caches[node], shared_bucket)]
        for node in (0, 1)
    ]
    with Child(commands[1], env=env(), cwd=REPO) as other:
        result = run_child(commands[0], env=env(), cwd=REPO)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert other.wait("node 1's end, after node 0's") == 0, other.report("failed")
        other_output = other.text("stdout") + other.text("stderr")
    outputs = result.stdout + result.stderr + other_output
    built_now = [int(line.split("(")[1].split()[0]) for line in outputs.splitlines() if "prepared now" in line]
    assert len(built_now) == 2 and sum(built_now) == ITEMS, f"the nodes did not split the images: {outputs}"
    store = published(shared_export, caches[0], shared_bucket)
    assert store["manifest"]["images"] == ITEMS and len(store["manifest"]["shares"]) == 5
    same_store(store, one_process_build(shared_export, caches[0], shared_bucket))


def test_a_killed_two_rank_build_resumes_with_only_the_missing_shares(shared_export, tmp_path, shared_bucket):
    cache = tmp_path / "cache"
    VisualLayerDataset.from_export(shared_export, cache_dir=cache, task=None)
    marker = tmp_path / "hung"
    launcher = torchrun("--standalone", "--nproc-per-node", "2")
    # Each rank publishes a whole share (a shard per image, the index, the share file) and one shard more.
    url, job = start_job(shared_export, cache, shared_bucket, marker, uploads=7, launcher=launcher)
    try:
        wait_for([marker.with_name(f"hung.{rank}") for rank in (0, 1)], job)
    finally:
        kill_job(job)  # the agent and both ranks
    killed = (url, shared_bucket[1])
    before = killed_mid_build(shared_export, cache, killed)
    result = run_child([*launcher, *prepare_command(shared_export, cache, killed)], env=env(), cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    resumed_only_the_missing_shares(shared_export, cache, killed, before)
    same_store(published(shared_export, cache, killed), clean_build(shared_export, tmp_path, cache, shared_bucket))


def train_on_two_nodes(shared_export, caches, checkpoints, bucket, run: str) -> list[Child]:
    """resume_job.py as a two-node torchrun job (one rank a node, a cache folder each), its images
    read from the shared store under ``bucket`` through each node's shard cache, with 2 workers."""
    port = free_port()
    rendezvous = ["--nnodes", "2", "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port)]
    shared = ["--prepare", str(SIZE), "--prepared-root", bucket[0], "--storage-options", json.dumps(bucket[1])]
    job = [str(RESUME_JOB), str(shared_export), "CACHE", str(checkpoints), run, "--epochs", str(EPOCHS)]
    job += ["--workers", "2", "--step-s", "0.05", *shared]
    nodes = []
    for node in (0, 1):
        command = [*torchrun(*rendezvous, "--node-rank", str(node)), *job]
        command[command.index("CACHE")] = str(caches[node])
        nodes.append(Child(command, env=env(), cwd=REPO, start_new_session=True))
    return nodes


def test_a_two_node_job_trains_from_the_published_store_and_resumes_after_a_kill(
    shared_export, tmp_path, shared_bucket
):
    """Prepared once to the bucket; then both "nodes" train from it with their originals gone (a
    decode on a node would fail the job), are killed mid-epoch, and resume: every item once an epoch."""
    open_shared(shared_export, tmp_path / "builder", shared_bucket).prepare(num_workers=0, progress=False)
    caches, checkpoints = [tmp_path / "node-0", tmp_path / "node-1"], tmp_path / "checkpoints"
    for cache in caches:
        VisualLayerDataset.from_export(shared_export, cache_dir=cache, task=None)  # no rank builds the index
    shutil.move(shared_export / "images", tmp_path / "originals-gone")
    steps_per_epoch = ITEMS // 2 // BATCH_SIZE
    nodes = train_on_two_nodes(shared_export, caches, checkpoints, shared_bucket, "a")
    try:
        nodes[0].until(
            lambda: latest_step(checkpoints) >= ("a", steps_per_epoch + 2), "a checkpoint in the second epoch"
        )
    finally:
        for node in nodes:
            kill(node, checkpoints, "a")
            node.close()
    counts = trained_on(checkpoints, "a")
    for node in train_on_two_nodes(shared_export, caches, checkpoints, shared_bucket, "b"):
        with node:
            assert node.wait("the resumed node's end") == 0, node.report("failed")
    counts += trained_on(checkpoints, "b")
    media_ids = VisualLayerDataset.from_export(shared_export, cache_dir=caches[0], task=None).media_ids
    assert sorted(counts) == sorted((epoch, m) for epoch in range(EPOCHS) for m in media_ids)
    assert max(counts.values()) == 1, f"items trained on twice: {[k for k, c in counts.items() if c > 1]}"
    for cache in caches:
        assert not any(p.stat().st_size for p in cache.rglob("*.pixels") if "shards" not in p.parts), (
            f"{cache.name} prepared images itself instead of reading the store"
        )
