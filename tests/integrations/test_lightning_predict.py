"""Lightning: trainer.predict over VLDataModule and over the library's loaders, in order.

For predict Lightning builds the loader again around a rebuilt batch sampler (drop_last=False,
wrapped to record indices); the loader's own batch sampler could not be rebuilt so: a TypeError.
A prediction writer is told the indices of each batch's items, as the loader yielded them."""

from __future__ import annotations

import shutil

import pytest
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from vl_datasets import ConfigurationError, VisualLayerDataset

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


class IndicesWriter(BasePredictionWriter):
    """What a prediction writer is told, batch by batch and for the whole run: each batch's item
    indices beside its labels, to write predictions under their items' names."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch_and_epoch")
        self.batches: list[tuple[list[int], list[int]]] = []
        self.epoch: list = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self.batches.append((list(batch_indices), prediction[0].tolist()))

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        self.epoch = batch_indices


@pytest.mark.parametrize("workers", [0, 2])
def test_a_prediction_writer_is_told_each_batchs_item_indices(tiny_export, workers):
    data = _module(tiny_export, num_workers=workers)
    writer = IndicesWriter()
    _trainer(callbacks=[writer]).predict(Recording(), datamodule=data, return_predictions=False)
    labels, _ = _in_order(data.datasets["test"])
    indices = [index for batch_indices, _ in writer.batches for index in batch_indices]
    assert indices == list(range(len(labels))), "the writer was not told every item's index, in order"
    assert all(len(batch) == len(predicted) for batch, predicted in writer.batches)
    assert [labels[i] for i in indices] == [label for _, predicted in writer.batches for label in predicted]
    assert writer.epoch == [[batch for batch, _ in writer.batches]]


def test_an_item_skipped_for_its_image_is_reported_and_not_among_the_indices_a_writer_is_told(tiny_export, tmp_path):
    folder = shutil.copytree(tiny_export[0], tmp_path / "export")
    ds = VisualLayerDataset.from_export(folder, cache_dir=tmp_path / "cache", image_size=8, on_error="skip")
    broken = 9
    image = folder / "images" / ds.images.paths[broken].as_py()
    image.write_bytes(image.read_bytes()[:100])
    writer = IndicesWriter()
    trainer = _trainer(callbacks=[writer])
    trainer.predict(Recording(), dataloaders=ds.dataloader(4, shuffle=False, num_workers=2), return_predictions=False)
    indices = [index for batch_indices, _ in writer.batches for index in batch_indices]
    assert indices == [i for i in range(len(ds)) if i != broken]
    assert all(len(batch) == len(predicted) for batch, predicted in writer.batches)
    # Reported though Lightning asks for no batch after the epoch's last: the loader it built again, and iterated.
    assert [s.media_id for s in trainer.predict_dataloaders.skipped] == [ds.media_ids[broken]]
