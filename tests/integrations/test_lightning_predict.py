"""Lightning: trainer.predict over VLDataModule and over the library's loaders, in order.

For predict Lightning builds the loader again around a rebuilt batch sampler (drop_last=False,
wrapped to record indices); the loader's own batch sampler could not be rebuilt so: a TypeError."""

from __future__ import annotations

import pytest
import torch

from vl_datasets import ConfigurationError

from .test_lightning_checkpoints import Recording, _module, _trainer


def _predicted(predictions) -> tuple[list[int], list[int]]:
    labels = torch.cat([labels for labels, _ in predictions]).tolist()
    sums = torch.cat([sums for _, sums in predictions]).tolist()
    return labels, sums


def _in_order(ds) -> tuple[list[int], list[int]]:
    items = [ds[i] for i in range(len(ds))]
    return [int(label) for _, label in items], [int(image.sum()) for image, _ in items]


@pytest.mark.parametrize("workers", [0, 2])
def test_predict_over_the_module_goes_over_its_predict_part_in_order(tiny_export, workers):
    data = _module(tiny_export, num_workers=workers)
    predictions = _trainer().predict(Recording(), datamodule=data)
    assert _predicted(predictions) == _in_order(data.datasets["test"])
    data = _module(tiny_export, num_workers=workers, predict_part="val")
    predictions = _trainer().predict(Recording(), datamodule=data)
    assert _predicted(predictions) == _in_order(data.datasets["val"])
    with pytest.raises(ConfigurationError, match="predict_part names a part"):
        _module(tiny_export, predict_part="holdout")


@pytest.mark.parametrize("workers", [0, 2])
def test_predict_over_a_loader_of_the_library_sees_every_item_in_order(tiny_export, workers):
    """A loader built outside any hook (Lightning rebuilds it from its attributes), with drop_last,
    which Lightning turns off to predict every item."""
    data = _module(tiny_export)
    data.setup("predict")
    test = data.datasets["test"]
    assert len(test) % 5, "drop_last must have items to drop for the test to prove anything"
    loader = test.dataloader(5, shuffle=False, drop_last=True, num_workers=workers)
    assert _predicted(_trainer().predict(Recording(), dataloaders=loader)) == _in_order(test)
    assert _predicted(_trainer().predict(Recording(), dataloaders=data.test_dataloader())) == _in_order(test)
