"""Lightning: a fit resumed from any checkpoint Lightning writes sees the batches an uninterrupted
fit sees, on a tiny synthetic export (fast enough to try every kind of checkpoint)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from tests.integrations.lightning_helpers import Preempted, StopAt, quiet_trainer
from vl_datasets.integrations.lightning import VLDataModule

EPOCHS = 3


@pytest.fixture(scope="module")
def tiny(tiny_export):
    return tiny_export


def _module(tiny, **options) -> VLDataModule:
    folder, cache = tiny
    defaults = {"batch_size": 8, "num_workers": 0, "image_size": 8, "cache_dir": cache}
    return VLDataModule(folder, **{**defaults, **options})


class Recording(pl.LightningModule):
    """A linear classifier that records every batch it trains on, and predicts its labels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
        self.seen: list[tuple[int, ...]] = []

    def forward(self, images):
        return self.net(images.float().div(255))

    def training_step(self, batch, batch_index):
        images, labels = batch
        self.seen.append((*labels.tolist(), int(images.sum())))
        return nn.functional.cross_entropy(self(images), labels)

    def validation_step(self, batch, batch_index):
        pass

    def predict_step(self, batch, batch_index):
        images, labels = batch
        return labels, images.sum(dim=(1, 2, 3))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _trainer(**options) -> pl.Trainer:
    return quiet_trainer(**{"max_epochs": EPOCHS, **options})


def _preempted_and_resumed(tiny, tmp_path, saved: str, workers: int, **options) -> None:
    """Fit uninterrupted, then preempted after a checkpoint of kind ``saved`` and resumed from it:
    the two see the same batches."""
    uninterrupted = Recording()
    _trainer(**options).fit(uninterrupted, datamodule=_module(tiny, num_workers=workers))
    per_epoch = len(uninterrupted.seen) // EPOCHS
    if saved in ("epoch end", "epoch end, validated"):  # ModelCheckpoint's default: at each epoch's end
        step, checkpoints = per_epoch, ModelCheckpoint(dirpath=tmp_path, save_top_k=-1)
    else:  # a step's: the epoch's last batch (Lightning counts the epoch unfinished), or one mid-epoch
        step = per_epoch if saved == "last batch" else per_epoch + 2
        checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=step, save_top_k=-1)
    if saved == "epoch end, validated":
        options["limit_val_batches"] = 1.0
    preempted = Recording()
    trainer = _trainer(enable_checkpointing=True, callbacks=[checkpoints, StopAt(step + 2)], **options)
    with pytest.raises(Preempted):
        trainer.fit(preempted, datamodule=_module(tiny, num_workers=workers))
    (checkpoint,) = tmp_path.glob(f"*step={step}.ckpt")

    resumed = Recording()
    _trainer(**options).fit(resumed, datamodule=_module(tiny, num_workers=workers), ckpt_path=checkpoint)
    assert len(uninterrupted.seen) == EPOCHS * per_epoch
    assert uninterrupted.seen[:per_epoch] != uninterrupted.seen[per_epoch : 2 * per_epoch]  # the epochs differ
    assert preempted.seen[:step] + resumed.seen == uninterrupted.seen


@pytest.mark.parametrize(
    ("saved", "workers", "options"),
    [
        ("epoch end", 0, {}),
        ("epoch end", 2, {}),
        ("epoch end", 0, {"reload_dataloaders_every_n_epochs": 1}),
        ("epoch end, validated", 0, {}),
        ("last batch", 0, {}),
        ("mid-epoch", 2, {}),
    ],
)
def test_a_fit_resumed_from_any_checkpoint_sees_the_batches_an_uninterrupted_fit_sees(
    tiny, tmp_path, saved, workers, options
):
    """From an epoch-end checkpoint Lightning loads no loader state, and the module built the train
    loader before Lightning restored its epoch: the resumed fit replayed epoch 0's order."""
    _preempted_and_resumed(tiny, tmp_path, saved, workers, **options)


@pytest.mark.parametrize(
    ("saved", "workers", "options"),
    [
        ("last batch", 0, {"limit_train_batches": 3}),
        ("last batch", 2, {"limit_train_batches": 0.25}),
        ("mid-epoch", 0, {"limit_train_batches": 0.25}),
        ("epoch end, validated", 2, {"limit_train_batches": 3}),
    ],
)
def test_under_a_batch_limit_a_resumed_fit_begins_the_next_epoch_not_the_cut_rest(
    tiny, tmp_path, saved, workers, options
):
    """limit_train_batches ends each epoch early: the state saved at the limit was mid-epoch, and the
    resumed fit trained on the rest of the epoch before, where the uninterrupted one began the next."""
    _preempted_and_resumed(tiny, tmp_path, saved, workers, **options)
