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
