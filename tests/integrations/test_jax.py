"""JAX: NumPy batches in the loader's order with its resume, a grain data source, and the example."""

from __future__ import annotations

import re
import sys

import grain
import numpy as np
import pytest

from tests.helpers import REPO, child_env
from tests.waits import run_child
from vl_datasets import ConfigurationError
from vl_datasets.integrations.jax import GrainSource, numpy_batches


def _fingerprint(batch: dict) -> tuple:
    return (*batch["label"].tolist(), int(batch["image"].sum()))


def test_batches_are_channels_last_numpy_arrays_of_the_datasets_items(open_part):
    train = open_part("train")
    batch = next(iter(numpy_batches(train.dataloader(8, shuffle=False, num_workers=0))))
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (8, 16, 16, 3)
    assert batch["label"].dtype == np.int64 and batch["label"].shape == (8,)
    for i in range(8):
        image, label = train[i]
        assert np.array_equal(batch["image"][i], image.permute(1, 2, 0).numpy())
        assert batch["label"][i] == label


def test_a_resumed_loop_sees_the_batches_an_uninterrupted_one_sees(open_part):
    train = open_part("train")
    uninterrupted = numpy_batches(train.dataloader(64, seed=3, num_workers=0))
    expected = [_fingerprint(b) for _ in range(2) for b in uninterrupted]

    cut = numpy_batches(train.dataloader(64, seed=3, num_workers=0))
    seen = []
    for batch in cut:
        seen.append(_fingerprint(batch))
        if len(seen) == 7:
            break
    state = cut.state_dict()
    resumed = numpy_batches(train.dataloader(64, seed=3, num_workers=0))
    resumed.load_state_dict(state)
    assert resumed.epoch == 0
    for _ in range(resumed.epoch, 2):  # the loop a checkpointed JAX job runs
        seen += [_fingerprint(b) for b in resumed]
    assert seen == expected


def test_the_processes_of_a_multi_host_job_share_the_items_and_resume_at_another_count(open_part):
    """rank=jax.process_index(), world_size=jax.process_count(): without torch.distributed there
    was no way to shard, and every host of a JAX job trained on every item."""
    train = open_part("train")
    # Each item known by its pixels and label (the sample's curated items are all distinct).
    item_of = {_item(image.permute(1, 2, 0).numpy(), label): i for i, (image, label) in enumerate(train)}
    assert len(item_of) == len(train)
    world, batch_size, everything = 3, 16, set(range(len(train)))

    def items(batches) -> list[int]:
        return [item_of[_item(b["image"][k], b["label"][k])] for b in batches for k in range(len(b["label"]))]

    def hosts():
        return [
            numpy_batches(train.dataloader(batch_size, seed=5, num_workers=0, rank=r, world_size=world))
            for r in range(world)
        ]

    job, epochs = hosts(), []
    for epoch in range(2):
        shares = [items(host) for host in job]
        assert len({len(share) for share in shares}) == 1, f"epoch {epoch}: shares of unequal size"
        assert set().union(*shares) == everything, f"epoch {epoch}: the hosts together missed items"
        assert sum(map(len, shares)) - len(everything) < world, f"epoch {epoch}: more than the padding repeated"
        epochs.append(shares)
    assert epochs[0] != epochs[1], "every epoch drew the same order"
    assert [items(host) for host in hosts()] == epochs[0], "another run of the job drew another order"

    # Preempted after two batches of the first epoch on every host; resumed as a job of one host.
    job, done = hosts(), []
    for host in job:
        iterator = iter(host)
        done += items([next(iterator), next(iterator)])
    alone = numpy_batches(train.dataloader(batch_size, seed=5, num_workers=0))
    alone.load_state_dict(job[0].state_dict())
    rest = items(alone)
    assert len(done) == 2 * batch_size * world and len(set(done)) == len(done)
    assert sorted(done + rest) == sorted(everything), "the resumed job saw items twice or missed some"


def _item(image: np.ndarray, label) -> tuple:
    return int(label), image.tobytes()


@pytest.mark.parametrize(
    ("ranks", "match"),
    [
        ({"rank": 0}, "rank and world_size go together"),
        ({"rank": 2, "world_size": 2}, r"rank must be in \[0, world_size\)"),
        ({"rank": -1, "world_size": 2}, r"rank must be in \[0, world_size\)"),
        ({"rank": 1.0, "world_size": 2}, "rank must be an integer"),
    ],
)
def test_ranks_that_describe_no_process_of_a_job_are_refused(open_part, ranks, match):
    with pytest.raises(ConfigurationError, match=match):
        open_part("train").dataloader(8, num_workers=0, **ranks)


def test_grain_reads_the_curated_dataset_and_resumes_its_own_iterator(open_part):
    train = open_part("train")
    source = GrainSource(train)
    assert len(source) == len(train)
    record = source[3]
    assert record["image"].shape == (16, 16, 3) and record["label"] == train[3][1]

    def loader() -> grain.DataLoader:
        sampler = grain.samplers.IndexSampler(
            len(source), shard_options=grain.sharding.NoSharding(), shuffle=True, num_epochs=1, seed=0
        )
        return grain.DataLoader(
            data_source=source, sampler=sampler, operations=[grain.transforms.Batch(32)], worker_count=0
        )

    everything = [_fingerprint(b) for b in loader()]
    assert sum(len(f) - 1 for f in everything) == len(train)
    iterator = iter(loader())
    head = [_fingerprint(next(iterator)) for _ in range(5)]
    state = iterator.get_state()
    resumed = iter(loader())
    resumed.set_state(state)
    assert head + [_fingerprint(b) for b in resumed] == everything

    batch = grain.MapDataset.source(source).shuffle(seed=0).batch(16)[0]
    assert batch["image"].shape == (16, 16, 16, 3)


def test_other_tasks_and_transforms_are_refused(open_part):
    with pytest.raises(ConfigurationError, match="classification"):
        GrainSource(open_part("train", task=None, classes=None))
    with pytest.raises(ConfigurationError, match="no transform"):
        numpy_batches(open_part("train", transform=lambda image: image).dataloader(8, num_workers=0))


def test_the_jax_example_trains_a_model_that_beats_chance_on_held_out_digits(tmp_path):
    # JAX runs in a process of its own: once its threads run here, the other tests' forked workers could deadlock.
    result = run_child(
        [sys.executable, str(REPO / "examples" / "train_jax.py"), "--epochs", "4"], env=child_env(), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    losses = [float(v) for v in re.findall(r"^epoch \d+: loss ([\d.]+)$", result.stdout, re.M)]
    assert len(losses) == 4 and losses[-1] < losses[0]
    accuracy = float(re.search(r"^test accuracy ([\d.]+)%", result.stdout, re.M).group(1))
    assert accuracy > 50, result.stdout  # chance is 10%
