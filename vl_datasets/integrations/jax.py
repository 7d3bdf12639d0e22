"""JAX: a curated dataset as NumPy batches any JAX loop takes, or as a ``grain`` data source.

    batches = numpy_batches(train.dataloader(64, seed=0))    # {"image": uint8 B x H x W x 3, "label": int64 B}
    for epoch in range(batches.epoch, epochs):
        for batch in batches:
            state = train_step(state, batch)                  # jax.device_put / jnp.asarray as usual
    checkpoint = {"loader": batches.state_dict(), ...}        # resumes mid-epoch, as ds.dataloader() does

    source = GrainSource(train)                               # grain.MapDataset.source(source), grain.DataLoader(...)

On several hosts, give the loader this host's share: ``train.dataloader(64, seed=0,
rank=jax.process_index(), world_size=jax.process_count())`` (torch.distributed is not there to say it).

``numpy_batches`` keeps everything of ``ds.dataloader()``: its workers and read-ahead, the epochs'
order (from the seed alone), and ``state_dict()`` / ``load_state_dict()`` with their exact resume.
Images come channels-last, as JAX convolutions and Flax take them, with no copy: the loader's
batches are already channels-last in memory. ``GrainSource`` is the dataset behind grain's own
samplers, shuffling and checkpointing (its iterators' ``get_state`` / ``set_state``), with the
dataset's curation. Importing this module imports grain; JAX itself is never needed here.

JAX runs threads once it is used, and a process forked after that can deadlock (JAX warns of it):
give a loader with workers ``multiprocessing_context="forkserver"`` (or ``"spawn"``), or
``num_workers=0``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grain
import numpy as np
import torch

from ..errors import ConfigurationError
from ..loading.dataset import VisualLayerDataset


def _as_numpy(target: Any) -> np.ndarray:
    return target.numpy() if isinstance(target, torch.Tensor) else np.asarray(target, dtype=np.int64)


class NumpyBatches:
    """A vl_datasets loader whose batches are ``{"image": uint8 B x H x W x 3, "label": ...}`` NumPy
    arrays (labels int64, or float32 multi-hot for ``task="multilabel"``). ``epoch``,
    ``state_dict()``, ``load_state_dict()`` and ``skipped`` are the loader's."""

    def __init__(self, loader: Any) -> None:
        _check_task(loader.dataset)
        self.loader = loader

    @property
    def epoch(self) -> int:
        return self.loader.epoch

    @property
    def skipped(self) -> list:
        return self.loader.skipped

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for images, labels in self.loader:
            # NCHW in channels-last memory: the NHWC view is contiguous, and numpy() shares it (and
            # keeps the batch alive while the array is).
            yield {"image": images.permute(0, 2, 3, 1).numpy(), "label": labels.numpy()}

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)


def numpy_batches(loader: Any) -> NumpyBatches:
    """``loader`` (``ds.dataloader(...)``) with NumPy batches; see ``NumpyBatches``."""
    return NumpyBatches(loader)


class GrainSource(grain.sources.RandomAccessDataSource):
    """The dataset as a grain random-access data source: record ``i`` is ``{"image": uint8 H x W x 3,
    "label": ...}`` of the dataset's item ``i``. It pickles to grain's worker processes as the
    dataset does (Arrow and NumPy buffers, no open file)."""

    def __init__(self, dataset: VisualLayerDataset) -> None:
        _check_task(dataset)
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, record_key: int) -> dict[str, np.ndarray]:
        image, target = self.dataset[int(record_key)]
        return {"image": image.permute(1, 2, 0).numpy(), "label": _as_numpy(target)}

    def __repr__(self) -> str:
        return f"GrainSource({self.dataset!r})"


def _check_task(dataset: Any) -> None:
    if not isinstance(dataset, VisualLayerDataset) or dataset.task not in ("classification", "multilabel"):
        raise ConfigurationError(
            f"NumPy batches need a VisualLayerDataset of task 'classification' or 'multilabel', got {dataset!r}."
        )
    if dataset.decode != "tensor" or dataset.transform is not None:
        raise ConfigurationError(
            "NumPy batches need the dataset's own uint8 images: open it with decode='tensor' and no transform."
        )
