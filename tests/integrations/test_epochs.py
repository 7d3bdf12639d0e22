"""WholeEpochs: a trainer's epochs over a vl_datasets loader, and the states saved in them."""

from __future__ import annotations

import pytest

from vl_datasets import VisualLayerDataset
from vl_datasets.integrations.epochs import WholeEpochs


def _loader(tiny_export, workers: int):
    folder, cache = tiny_export
    ds = VisualLayerDataset.from_export(folder, cache_dir=cache, image_size=8)
    return ds.dataloader(8, num_workers=workers, seed=3)


def _sums(batches) -> list[int]:
    return [int(images.sum()) for images, _ in batches]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_limit_ends_each_epoch_and_a_state_saved_there_resumes_to_the_next(tiny_export, workers):
    """A trainer that takes 3 batches an epoch begins the next epoch after them: a state saved after
    the third named the rest of the epoch, which a resume trained on instead of the next epoch."""
    reference = _loader(tiny_export, 0)
    whole = [_sums(reference) for _ in range(2)]
    epochs = WholeEpochs(_loader(tiny_export, workers), limit=3)
    assert len(epochs) == len(whole[0]) > 3  # a trainer applies its limit to the whole epoch's length
    assert _sums(epochs) == whole[0][:3]
    at_the_limit = epochs.state_dict()
    assert (at_the_limit["epoch"], at_the_limit["position"]) == (1, 0)
    batches = iter(epochs)
    assert int(next(batches)[0].sum()) == whole[1][0]
    mid_epoch = epochs.state_dict()
    assert _sums(batches) == whole[1][1:3]

    for state, rest in ((at_the_limit, whole[1][:3]), (mid_epoch, whole[1][1:3])):
        resumed = WholeEpochs(_loader(tiny_export, workers), limit=3)
        resumed.load_state_dict(state)
        assert _sums(resumed) == rest  # a resumed epoch ends at the limit too, its earlier batches counted
