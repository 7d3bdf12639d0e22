"""Lightning: VLDataModule with a real pytorch_lightning Trainer, preempted and resumed mid-epoch."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from tests.integrations.lightning_helpers import Preempted, StopAt, quiet_trainer
from vl_datasets import ConfigurationError, CurationRules, leakage_safe_split
from vl_datasets.integrations.lightning import VLDataModule
from vl_datasets.metadata.splits import find_leaks

RULES = CurationRules(min_uniqueness=0.05, keep_unscored=True, drop_issues={"mislabels": 0.6}, dedupe=True)


class Digits(pl.LightningModule):
    """A linear classifier of 16 px digits that records every training batch it is given."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))
        self.seen: list[tuple[int, ...]] = []
        self.accuracy: list[float] = []

    def forward(self, images):
        return self.net(images.float().div(255).sub(0.5))

    def training_step(self, batch, batch_index):
        images, labels = batch
        self.seen.append((*labels.tolist(), int(images.sum())))
        return nn.functional.cross_entropy(self(images), labels)

    def test_step(self, batch, batch_index):
        images, labels = batch
        self.accuracy.append(float((self(images).argmax(1) == labels).float().mean()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def _trainer(**options) -> pl.Trainer:
    return quiet_trainer(**options)


@pytest.fixture(scope="module")
def export(sample_export):
    return sample_export


def _module(export, **options) -> VLDataModule:
    folder, cache = export
    defaults = {"rules": RULES, "batch_size": 64, "num_workers": 0, "image_size": 16, "cache_dir": cache}
    return VLDataModule(folder, **{**defaults, **options})


def test_the_parts_come_from_one_leakage_safe_split_and_the_rules_are_hyperparameters(export):
    data = _module(export)
    data.setup("fit")
    train, val, test = (data.datasets[name] for name in ("train", "val", "test"))
    assert val.classes == test.classes == train.classes == data.classes
    everything = data._open(task=None).table
    for part in (val, test):
        assert len(find_leaks(everything, train.media_ids, part.media_ids)) == 0
    assert set(train.media_ids).isdisjoint(test.media_ids)
    parts = leakage_safe_split(everything, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    assert set(train.media_ids) < set(parts["train"])  # curated: fewer than its part
    assert train.curation_summary().removed_by["dedupe"] > 0
    assert data.hparams["rules"]["drop_issues"] == {"mislabels": 0.6}
    assert data.hparams["split"] == {"train": 0.8, "val": 0.1, "test": 0.1}
    assert CurationRules(**data.hparams["rules"]) == RULES  # the hyperparameters rebuild the rules


def test_a_fit_learns_and_tests_above_chance(export):
    data, model = _module(export), Digits()
    trainer = _trainer(max_epochs=3)
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    assert sum(model.accuracy) / len(model.accuracy) > 0.5  # chance is 0.1


@pytest.mark.parametrize("where", ["mid-epoch", "last batch", "mid-epoch after the first"])
def test_a_preempted_fit_resumes_from_its_checkpoint_with_the_batches_an_uninterrupted_fit_sees(
    export, tmp_path, where
):
    data = _module(export)
    data.setup("fit")
    per_epoch = len(data.train_dataloader())
    # After the first epoch, the module asks the loader for the trainer's epoch: the resumed epoch
    # must not leave that ask to send the next epoch back to it.
    # "last batch": a step's checkpoint, which Lightning counts mid-epoch (ModelCheckpoint's default
    # one at the epoch's end: test_lightning_checkpoints.py).
    saved_at = {"mid-epoch": 5, "last batch": per_epoch, "mid-epoch after the first": per_epoch + 3}[where]
    epochs = 3 if where == "mid-epoch after the first" else 2
    uninterrupted = Digits()
    _trainer(max_epochs=epochs).fit(uninterrupted, datamodule=_module(export))

    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=saved_at, save_top_k=-1)
    preempted = Digits()
    trainer = _trainer(max_epochs=epochs, enable_checkpointing=True, callbacks=[checkpoints, StopAt(saved_at + 2)])
    with pytest.raises(Preempted):
        trainer.fit(preempted, datamodule=_module(export))
    (checkpoint,) = tmp_path.glob(f"*step={saved_at}.ckpt")
    saved = torch.load(checkpoint, weights_only=True)  # plain values only: hyperparameters and loader state
    assert saved["datamodule_hyper_parameters"]["rules"]["dedupe"] is True

    resumed = Digits()
    _trainer(max_epochs=epochs).fit(resumed, datamodule=_module(export), ckpt_path=checkpoint)
    assert len(uninterrupted.seen) == epochs * per_epoch
    assert preempted.seen[:saved_at] + resumed.seen == uninterrupted.seen
    for before, after in zip(uninterrupted.parameters(), resumed.parameters()):
        assert torch.allclose(before, after, atol=1e-6)


def test_bad_settings_are_refused_with_a_clear_error(export):
    for split in ({"fit": 0.8, "test": 0.2}, {"train": 0.8, "holdout": 0.2}, {"train": 0.8, "validation": 0.2}):
        with pytest.raises(ConfigurationError, match=r"train \(required\), val and test"):  # never a part unused
            _module(export, split=split)
    with pytest.raises(ConfigurationError, match="neither subset"):
        _module(export, rules=CurationRules(subset=["a"]))
    with pytest.raises(ConfigurationError, match="no field 'min_uniq'"):
        _module(export, rules={"min_uniq": 0.1})
    with pytest.raises(ConfigurationError, match="as rules=, not curation="):
        _module(export, curation=CurationRules(min_uniqueness=0.5))
    with pytest.raises(ConfigurationError, match="leaves the test part"):
        _module(export, split={"train": 0.9999, "test": 0.0001}).setup("fit")
    rebuilt = VLDataModule(**_module(export, task="multilabel", classes=list("0123456789")).hparams)
    assert (rebuilt.hparams["task"], rebuilt.hparams["classes"]) == ("multilabel", list("0123456789"))
    data = _module(export, split={"train": 0.8, "test": 0.2})
    with pytest.raises(ConfigurationError, match="setup"):
        data.train_dataloader()
    data.setup("fit")
    with pytest.raises(ConfigurationError, match="no 'val' part"):
        data.val_dataloader()


def test_loaders_built_anew_each_epoch_draw_each_epochs_order(export):
    """reload_dataloaders_every_n_epochs builds the train loader at every epoch: each drew epoch
    0's order, so every epoch trained on the same batches."""
    seen: dict[str, list] = {}

    class Recording(Digits):
        def training_step(self, batch, index):
            seen.setdefault(self.run, []).append(batch[0].sum().item())
            return super().training_step(batch, index)

    for run, options in (("kept", {}), ("rebuilt", {"reload_dataloaders_every_n_epochs": 1})):
        model = Recording()
        model.run = run
        _trainer(max_epochs=3, **options).fit(model, datamodule=_module(export))
    per_epoch = len(seen["kept"]) // 3
    epochs = [seen["rebuilt"][i * per_epoch : (i + 1) * per_epoch] for i in range(3)]
    assert epochs[0] != epochs[1] != epochs[2], "every rebuilt loader drew the same order"
    assert seen["rebuilt"] == seen["kept"], "a rebuilt loader should draw what the kept one draws"
