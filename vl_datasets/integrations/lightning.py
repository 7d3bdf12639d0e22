"""Lightning: a ``LightningDataModule`` over a curated Visual Layer dataset.

    data = VLDataModule("my-dataset-id", rules=CurationRules(min_uniqueness=0.3, dedupe=True),
                        split={"train": 0.8, "val": 0.1, "test": 0.1}, batch_size=64, image_size=224)
    trainer = pytorch_lightning.Trainer(max_epochs=10)
    trainer.fit(model, datamodule=data)          # ckpt_path=... after a preemption: resumes mid-epoch
    trainer.predict(model, datamodule=data)      # over predict_part ("test"), in order

train, val and test come from one ``leakage_safe_split`` of the whole export, so no near-duplicate
crosses them; the curation rules and the split are the module's hyperparameters, in every
checkpoint. The train loader has ``state_dict()`` / ``load_state_dict()``, which Lightning saves in
its checkpoints and loads before it iterates again, so a fit resumed from a mid-epoch checkpoint
sees exactly the batches an uninterrupted one would. From an epoch-end checkpoint Lightning loads
no loader state: the loader starts at the epoch the trainer resumes at. Under
``limit_train_batches`` each epoch ends at the limit in the loader too (see ``WholeEpochs``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DistributedSampler

from ..errors import ConfigurationError
from ..loading.dataset import VisualLayerDataset
from ..metadata.curation import CurationRules
from ..metadata.splits import leakage_safe_split
from .epochs import WholeEpochs

DEFAULT_SPLIT = {"train": 0.8, "val": 0.1, "test": 0.1}


class VLDataModule(pl.LightningDataModule):
    """train / val / test loaders of one leakage-safe split of a Visual Layer export.

    source: a dataset id, or a local export (a ``Path``, or a path that exists: a ZIP or a folder).
    rules: the curation (``CurationRules``, or a dict of its fields); ``subset`` comes from the
        split and ``where`` cannot be a hyperparameter. Default None, keep everything.
    split: part name -> fraction; ``"train"`` is required, ``"val"`` and ``"test"`` optional.
    split_seed: the split's seed. curate_eval: apply the rules to val and test too (True, the
        default: a flipped label there would mark a right answer wrong), or only to train.
    batch_size, num_workers, seed: the loaders' (see ``VisualLayerDataset.dataloader``).
    predict_part: the part ``trainer.predict(model, datamodule=...)`` goes over, in order ("test",
        the default; "val" or "train").
    image_size, cache_dir, and any other keyword: for every ``VisualLayerDataset`` of the module
        (``label_source`` belongs in ``rules``).
    """

    def __init__(
        self,
        source: str | os.PathLike,
        *,
        rules: CurationRules | Mapping[str, Any] | None = None,
        split: Mapping[str, float] | None = None,
        split_seed: int = 0,
        curate_eval: bool = True,
        batch_size: int = 64,
        num_workers: int | None = None,
        seed: int = 0,
        predict_part: str = "test",
        image_size: int | tuple[int, int] | None = None,
        cache_dir: str | os.PathLike | None = None,
        **dataset_options: Any,
    ) -> None:
        super().__init__()
        self.rules = _rules(rules)
        self.split = dict(split or DEFAULT_SPLIT)
        if "train" not in self.split or not set(self.split) <= set(DEFAULT_SPLIT):
            # Any other name ("validation", "holdout") would be split off and never used.
            raise ConfigurationError(f"split names the parts train (required), val and test, got {sorted(self.split)}.")
        if predict_part not in DEFAULT_SPLIT:
            raise ConfigurationError(f"predict_part names a part, train, val or test, got {predict_part!r}.")
        for name in ("curation", "subset"):
            if name in dataset_options:
                raise ConfigurationError(f"VLDataModule takes its curation as rules=, not {name}=.")
        self.source = source
        self.local = isinstance(source, os.PathLike) or Path(source).exists()
        self.dataset_options = {"image_size": image_size, "cache_dir": cache_dir, **dataset_options}
        # Plain values only: checkpoints load with weights_only, and the rules show in loggers' hparams.
        self.save_hyperparameters(
            {
                "source": str(source),
                "rules": _plain_rules(self.rules),
                "split": self.split,
                "split_seed": split_seed,
                "curate_eval": curate_eval,
                "batch_size": batch_size,
                "num_workers": num_workers,
                "seed": seed,
                "predict_part": predict_part,
                "image_size": image_size,
                # What decides the targets, when given: VLDataModule(**hparams) must rebuild the same module.
                **{name: dataset_options[name] for name in ("task", "classes") if name in dataset_options},
            }
        )
        self.datasets: dict[str, VisualLayerDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        """Split the export and open each part (once: later stages reuse them)."""
        if self.datasets:
            return
        everything = self._open(task=None)
        parts = leakage_safe_split(everything, self.split, seed=self.hparams["split_seed"])
        empty = [name for name, ids in parts.items() if not len(ids)]
        if empty:
            raise ConfigurationError(
                f"The split {self.split} leaves the {', '.join(empty)} part(s) empty: the export's "
                f"{len(everything):,} items form too few linked groups for it. Change split= or use more data."
            )
        train = self._open(curation=dataclasses.replace(self.rules, subset=parts["train"]))
        self.datasets["train"] = train
        for name in (name for name in ("val", "test") if name in parts):
            rules = self.rules if self.hparams["curate_eval"] else CurationRules(label_source=self.rules.label_source)
            self.datasets[name] = self._open(
                curation=dataclasses.replace(rules, subset=parts[name]), classes=train.classes
            )

    @property
    def classes(self) -> list[str]:
        """The train part's classes, the index order every part uses (after ``setup``)."""
        return self._part("train").classes

    def train_dataloader(self) -> WholeEpochs:
        loader = self._part("train").dataloader(
            self.hparams["batch_size"], shuffle=True, num_workers=self.hparams["num_workers"], seed=self.hparams["seed"]
        )
        trainer = getattr(self, "trainer", None)
        if trainer is not None and isinstance(loader.sampler, DistributedSampler):
            # The loader counts its epochs from 0, and Lightning begins iterating it before it sets
            # samplers' epochs: it draws the epoch the trainer is at, where it would draw epoch 0's
            # order when built again each epoch (reload_dataloaders_every_n_epochs) or when a fit
            # resumes from an epoch-end checkpoint, which Lightning loads no loader state from. Not
            # trainer.current_epoch: a resume restores it only after this. A loaded state (a
            # mid-epoch checkpoint) still names its own epoch.
            loader.sampler.set_epoch(trainer.fit_loop.epoch_progress.current.processed)
        return WholeEpochs(loader, limit=_batch_limit(trainer, len(loader)))

    def val_dataloader(self) -> Any:
        return self._in_order("val")

    def test_dataloader(self) -> Any:
        return self._in_order("test")

    def predict_dataloader(self) -> Any:
        return self._in_order(self.hparams["predict_part"])

    def _in_order(self, name: str) -> Any:
        return self._part(name).dataloader(
            self.hparams["batch_size"], shuffle=False, num_workers=self.hparams["num_workers"]
        )

    def _part(self, name: str) -> VisualLayerDataset:
        if name not in self.datasets:
            if not self.datasets:
                raise ConfigurationError("VLDataModule.setup() has not run: pass the module to a Trainer, or call it.")
            raise ConfigurationError(f"This VLDataModule's split has no {name!r} part: {sorted(self.split)}.")
        return self.datasets[name]

    def _open(self, **options: Any) -> VisualLayerDataset:
        options = {**self.dataset_options, **options}
        if self.local:
            return VisualLayerDataset.from_export(self.source, **options)
        return VisualLayerDataset(str(self.source), **options)


def _batch_limit(trainer: pl.Trainer | None, batches: int) -> int | None:
    """The batches the trainer takes an epoch of ``batches`` (``limit_train_batches``: a count, or
    a fraction, as Lightning reads it); None without a trainer."""
    if trainer is None:
        return None
    limit = trainer.limit_train_batches
    return min(batches, limit) if isinstance(limit, int) else int(batches * limit)


def _rules(rules: CurationRules | Mapping[str, Any] | None) -> CurationRules:
    if rules is None:
        return CurationRules()
    if not isinstance(rules, CurationRules):
        unknown = sorted(set(rules) - {field.name for field in dataclasses.fields(CurationRules)})
        if unknown:
            raise ConfigurationError(f"rules has no field {', '.join(map(repr, unknown))}; see CurationRules.")
        rules = CurationRules(**rules)
    if rules.subset is not None or rules.where is not None:
        raise ConfigurationError(
            "VLDataModule's rules take neither subset (the split makes each part's) nor where (a pyarrow "
            "expression cannot be a checkpoint's hyperparameter); filter with labels= or build the datasets yourself."
        )
    return rules


def _plain_rules(rules: CurationRules) -> dict[str, Any]:
    """The rules as plain values (lists and dicts), from which ``CurationRules(**...)`` rebuilds them."""
    plain: dict[str, Any] = {}
    for field in dataclasses.fields(rules):
        value = getattr(rules, field.name)
        if field.name in ("subset", "where"):
            continue
        if isinstance(value, Mapping):
            value = dict(value)
        elif isinstance(value, (frozenset, tuple)):
            value = sorted(value)
        plain[field.name] = value
    return plain
