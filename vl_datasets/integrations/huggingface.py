"""Hugging Face ``transformers``: a curated dataset as the batches an image model takes.

    id2label, label2id = label_maps(train)                # for the model's config
    trainer = VLTrainer(model=model, args=TrainingArguments("out"), train_dataset=train,
                        eval_dataset=test, processing_class=image_processor)
    trainer.train()                                       # resume_from_checkpoint=True resumes mid-epoch exactly

``VLTrainer`` is a ``transformers.Trainer`` whose DataLoaders are ``ds.dataloader()``'s (workers kept
across epochs, read-ahead, shared-memory batch slots), each batch turned into
``{"pixel_values", "labels"}``; its checkpoints also hold the train loader's state. ``HFCollate``
does the same conversion for Trainer's own DataLoader, and ``to_hf_batches`` for a loop of your own.

``pixel_values`` come from the checkpoint's image processor (``processing_class``: its resize,
rescale and normalization, as Trainer would apply it), or, without one, from our own: the dataset's
``image_size`` resizes at decode time, and the batch is rescaled to [0, 1] and normalized by
``mean`` and ``std`` (``PixelValues.like(processor)`` takes those from a processor).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..errors import ConfigurationError
from ..loading.dataset import VisualLayerDataset
from .epochs import WholeEpochs

LOADER_STATE_FILE = "vl_loader_state.pt"
"""The train loader's state in each of VLTrainer's checkpoint folders."""


def label_maps(dataset: VisualLayerDataset) -> tuple[dict[int, str], dict[str, int]]:
    """``(id2label, label2id)`` of the dataset's classes, for a model config's ``id2label`` and ``label2id``."""
    if not dataset.classes:
        raise ConfigurationError(f"{dataset!r} has no classes: label maps need task='classification' or 'multilabel'.")
    return dict(enumerate(dataset.classes)), {name: i for i, name in enumerate(dataset.classes)}


class PixelValues:
    """uint8 ``B x 3 x H x W`` image batches to the float ``pixel_values`` a model takes.

    processor: an image processor (``AutoImageProcessor.from_pretrained(checkpoint)``): it resizes,
        rescales and normalizes, exactly as for the checkpoint's own training. Not with ``mean``/``std``.
    mean, std: per-channel normalization after rescaling to [0, 1], when no processor is given; the
        dataset's ``image_size`` has already resized. Default 0.5 and 0.5 (pixels in [-1, 1]).
    """

    def __init__(
        self, processor: Any = None, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
    ) -> None:
        if processor is not None and (mean is not None or std is not None):
            raise ConfigurationError("PixelValues takes a processor or mean/std, not both: the processor normalizes.")
        self.processor = processor
        self.mean = _per_channel("mean", (0.5, 0.5, 0.5) if mean is None else mean)  # [] is no default
        self.std = _per_channel("std", (0.5, 0.5, 0.5) if std is None else std)

    @classmethod
    def like(cls, processor: Any) -> PixelValues:
        """Our resize and normalization with a processor's ``image_mean`` and ``image_std``: the dataset's
        ``image_size`` should then be the processor's size."""
        return cls(mean=processor.image_mean, std=processor.image_std)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _check_tensor(images)
        if self.processor is not None:
            return self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        # In place on the new float tensor, which keeps the batch's channels-last memory.
        return images.float().div_(255).sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        if self.processor is not None:
            return f"PixelValues({type(self.processor).__name__})"
        return f"PixelValues(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def _check_tensor(images: Any) -> None:
    if not isinstance(images, torch.Tensor):
        raise ConfigurationError(
            f"pixel values are made from uint8 image tensors, got {type(images).__name__}: open the dataset "
            "with decode='tensor' (the default), not decode='pil'."
        )


def _per_channel(name: str, values: Sequence[float]) -> torch.Tensor:
    values = list(values)
    if len(values) not in (1, 3) or not all(math.isfinite(v) and (name != "std" or v > 0) for v in values):
        raise ConfigurationError(f"{name} must be 1 or 3 numbers (std above 0), got {values!r}.")
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


class HFCollate:
    """A ``collate_fn`` for Trainer's own DataLoader (``Trainer(data_collator=HFCollate(...))``):
    ``(image, label)`` samples of a dataset to ``{"pixel_values", "labels"}``."""

    def __init__(self, pixel_values: PixelValues | None = None) -> None:
        self.pixel_values = pixel_values or PixelValues()

    def __call__(self, samples: list) -> dict[str, torch.Tensor]:
        images = [image for image, _ in samples]
        for image in images:
            _check_tensor(image)
        labels = [label for _, label in samples]
        # Class indices (classification) or multi-hot vectors (multilabel), as the loader collates them.
        stacked = torch.stack(labels) if isinstance(labels[0], torch.Tensor) else torch.as_tensor(labels)
        return {"pixel_values": self.pixel_values(torch.stack(images)), "labels": stacked}


class HFBatches(WholeEpochs):
    """A vl_datasets loader whose batches are ``{"pixel_values", "labels"}``: what ``VLTrainer`` hands
    Trainer, and a loop of your own can iterate. ``state_dict()`` / ``load_state_dict()`` are the
    loader's, as of the last batch yielded; each epoch ends as its last batch is taken (see
    ``vl_datasets.integrations.epochs``).
    """

    def __init__(self, loader: Any, pixel_values: PixelValues | None = None) -> None:
        _check_batches_of(loader.dataset)
        self.pixel_values = pixel_values or PixelValues()
        # Not a bound method of self: that would be a reference cycle, and a dropped HFBatches (each
        # evaluate() makes new ones) would keep its loader's workers and shared-memory batch slots
        # until the cyclic garbage collector happened to run.
        super().__init__(loader, _AsDict(self.pixel_values))


class _AsDict:
    """A loader's ``(images, labels)`` batch as ``{"pixel_values", "labels"}``."""

    def __init__(self, pixel_values: PixelValues) -> None:
        self.pixel_values = pixel_values

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        images, labels = batch
        return {"pixel_values": self.pixel_values(images), "labels": labels}


def _check_batches_of(dataset: Any) -> None:
    """Refuse, up front, a dataset whose batches are not image tensors and class targets: PIL images
    would fail in torch's collate with a TypeError, and the metadata rows of task=None (or
    detection's boxes) would pass as "labels" without a word."""
    if not isinstance(dataset, VisualLayerDataset) or dataset.task not in ("classification", "multilabel"):
        raise ConfigurationError(
            f"Hugging Face batches need a VisualLayerDataset of task 'classification' or 'multilabel', got {dataset!r}."
        )
    if dataset.decode != "tensor":
        raise ConfigurationError(
            f"Hugging Face batches are made from uint8 image tensors: open the dataset with decode='tensor' "
            f"(the default), not decode={dataset.decode!r}."
        )


def to_hf_batches(
    loader: Any,
    *,
    processor: Any = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> HFBatches:
    """``loader`` (``ds.dataloader(...)``) with batches as ``{"pixel_values", "labels"}``; see ``PixelValues``."""
    return HFBatches(loader, PixelValues(processor, mean=mean, std=std))


class VLTrainer(Trainer):
    """A ``transformers.Trainer`` fed by vl_datasets loaders.

    ``train_dataset`` and ``eval_dataset`` (or a dict of them) are ``VisualLayerDataset`` objects of
    task ``"classification"``. Trainer's arguments set the loaders: ``per_device_*_batch_size``,
    ``dataloader_num_workers``, ``data_seed`` (else ``seed``) and ``dataloader_drop_last``. Pixel
    values: the ``processing_class`` image processor when given, else our normalization by
    ``pixel_mean`` and ``pixel_std`` (see ``PixelValues``).

    Each checkpoint folder also holds the train loader's state (``LOADER_STATE_FILE``), and
    ``train(resume_from_checkpoint=...)`` loads it, so the resumed run sees exactly the batches an
    uninterrupted one would. The loader skips by index arithmetic, in place of Trainer's own
    skipping (which would draw and drop the skipped batches): ``ignore_data_skip`` has no effect.
    """

    def __init__(
        self,
        *args: Any,
        pixel_mean: Sequence[float] | None = None,
        pixel_std: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        given = pixel_mean is not None or pixel_std is not None
        processor = _image_processor(self.processing_class, normalization_given=given)
        self.pixel_values = PixelValues(processor, mean=pixel_mean, std=pixel_std)
        _check_same_classes(self.train_dataset, self.eval_dataset)
        self._train_batches: HFBatches | None = None
        self._loader_state: dict[str, Any] | None = None
        self.add_callback(_SaveLoaderState(self))

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
            if checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
        self._loader_state = _read_loader_state(checkpoint) if checkpoint else None
        # Trainer then counts the resumed epoch's steps from where the checkpoint left it (its
        # state.epoch, and where accumulation steps the optimizer, follow that count), and hands
        # its train loader to get_resumed_dataloader, which needs no skipping: the state loaded did it.
        # Before that hook (transformers < 5.25), Trainer would skip again what the state skipped:
        # its skipping is turned off instead, and it counts the resumed epoch from its start.
        skipping = self.args.ignore_data_skip
        self.args.ignore_data_skip = not resumes_through_hook()
        try:
            return super().train(checkpoint, *args, **kwargs)
        finally:
            self.args.ignore_data_skip = skipping

    def get_train_dataloader(self) -> HFBatches:  # type: ignore[override]
        dataset = _classification("train_dataset", self.train_dataset)
        loader = dataset.dataloader(
            self._train_batch_size,
            shuffle=True,
            num_workers=self.args.dataloader_num_workers,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            drop_last=self.args.dataloader_drop_last,
        )
        self._train_batches = HFBatches(loader, self.pixel_values)
        if self._loader_state is not None:
            if not resumes_through_hook():
                _check_accumulation(len(loader), self.args.gradient_accumulation_steps, self._loader_state)
            self._train_batches.load_state_dict(self._loader_state)
        return self._train_batches

    def get_resumed_dataloader(self, dataloader: Any, num_batches: int) -> Any:
        # The train loader as it is: its loaded state already resumes it after the checkpoint's
        # batches. Trainer counts the batches left from its own checkpoint: at another batch size or
        # accumulation the two would disagree, and Trainer would end the epoch early (the loader's
        # last batches lost) or late.
        state = self._loader_state or {}
        saved = (state.get("batches_yielded"), state.get("batch_size"))
        if saved != (num_batches, dataloader.batch_size):
            raise ConfigurationError(
                f"Trainer resumes its epoch after {num_batches} batches of {dataloader.batch_size}, the "
                f"checkpoint's loader state after {saved[0]} of {saved[1]}: resume with the batch size and "
                "gradient_accumulation_steps the checkpoint was saved with."
            )
        return dataloader

    def get_eval_dataloader(self, eval_dataset: Any = None) -> HFBatches:  # type: ignore[override]
        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]  # type: ignore[index]
        return self._in_order(eval_dataset if eval_dataset is not None else self.eval_dataset, "eval_dataset")

    def get_test_dataloader(self, test_dataset: Any) -> HFBatches:  # type: ignore[override]
        return self._in_order(test_dataset, "test_dataset")

    def _in_order(self, dataset: Any, name: str) -> HFBatches:
        dataset = _classification(name, dataset)
        # Again here, not only at construction: evaluate(eval_dataset=...) and predict(...) bring
        # datasets __init__ never saw.
        _check_same_classes(self.train_dataset, {name: dataset})
        loader = dataset.dataloader(
            self.args.eval_batch_size, shuffle=False, num_workers=self.args.dataloader_num_workers
        )
        return HFBatches(loader, self.pixel_values)


def resumes_through_hook() -> bool:
    """Whether Trainer hands a resumed epoch's loader to ``get_resumed_dataloader`` (transformers
    5.25 on), where VLTrainer returns its own, already resumed, as it is."""
    return hasattr(Trainer, "get_resumed_dataloader")


def _check_accumulation(batches: int, accumulation: int, state: dict[str, Any]) -> None:
    """Before ``get_resumed_dataloader``, Trainer counts a resumed epoch's steps from the point it
    resumes at and steps the optimizer at multiples of the accumulation from there: the last,
    partial group of an epoch whose batches it does not divide would not step."""
    if accumulation > 1 and batches % accumulation and 0 < state["batches_yielded"] < batches:
        raise ConfigurationError(
            f"Resuming mid-epoch with gradient_accumulation_steps={accumulation} needs the epoch's {batches} "
            "batches to be a multiple of it with transformers older than 5.25; resume from an epoch's end, "
            "pick a batch size or accumulation that divides the epoch, or upgrade transformers."
        )


def _image_processor(processing_class: Any, *, normalization_given: bool) -> Any:
    """The image processor of Trainer's ``processing_class``: itself, or the one a multimodal
    processor (``AutoProcessor`` of CLIP, SigLIP...) holds; None without one. A processing class
    with no image processor, and no ``pixel_mean``/``pixel_std`` given, is refused: the pixels'
    normalization would be left to a default without a word."""
    if processing_class is None:
        return None
    for candidate in (processing_class, getattr(processing_class, "image_processor", None)):
        if candidate is not None and hasattr(candidate, "image_mean"):
            return candidate
    if normalization_given:  # a tokenizer, say, beside the normalization the caller chose
        return None
    raise ConfigurationError(
        f"processing_class {type(processing_class).__name__} has no image processor (image_mean, image_std): "
        "pass the checkpoint's image processor, or pixel_mean and pixel_std."
    )


def _check_same_classes(train: Any, evaluated: Any) -> None:
    """Every eval dataset must number the classes as train does: the model's outputs are train's."""
    if not isinstance(train, VisualLayerDataset) or evaluated is None:
        return  # no numbering to hold to (a train_dataset not ours is refused by get_train_dataloader)
    named = evaluated.items() if isinstance(evaluated, Mapping) else [("eval_dataset", evaluated)]
    for name, dataset in named:
        if list(getattr(dataset, "classes", [])) != list(train.classes):
            raise ConfigurationError(
                f"{name}'s classes {list(dataset.classes)} are not train_dataset's {list(train.classes)}: the model's "
                "outputs are numbered as train's. Open it with classes=train_dataset.classes."
            )


class _SaveLoaderState(TrainerCallback):
    """Writes the train loader's state into each checkpoint folder that Trainer has just saved."""

    def __init__(self, trainer: VLTrainer) -> None:
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        batches = self.trainer._train_batches
        if batches is None or not args.should_save:
            return
        # The folder Trainer._save_checkpoint has just written: under a hyperparameter search's
        # trial that is <output_dir>/run-<n>/checkpoint-<step>, not <output_dir>/checkpoint-<step>
        # (which may hold an earlier run's checkpoint).
        run_dir = self.trainer._get_output_dir(self.trainer._trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        partial = os.path.join(folder, LOADER_STATE_FILE + ".partial")
        torch.save(batches.state_dict(), partial)
        os.replace(partial, os.path.join(folder, LOADER_STATE_FILE))


def _read_loader_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    path = os.path.join(checkpoint, LOADER_STATE_FILE)
    if not os.path.exists(path):
        raise ConfigurationError(
            f"{checkpoint} holds no {LOADER_STATE_FILE}: it was not saved by a VLTrainer, so where its "
            "loader stood is unknown. Resume from a VLTrainer checkpoint, or start afresh."
        )
    return torch.load(path)  # weights_only: the state is plain values


def _classification(name: str, dataset: Any) -> VisualLayerDataset:
    if not isinstance(dataset, VisualLayerDataset) or dataset.task != "classification":
        raise ConfigurationError(
            f"VLTrainer's {name} must be a VisualLayerDataset with task='classification', got {dataset!r}."
        )
    return dataset
