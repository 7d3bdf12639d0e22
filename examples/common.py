"""What the examples share: where the data comes from, the model, training and scoring.

Kept beside the examples rather than in the package: it is a small, readable training loop for
a demo, not an API.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from vl_datasets import Client
from vl_datasets.sample import SAMPLE_DATASET_ID, SAMPLE_ROOT
from vl_datasets.testing import LocalVisualLayer

PLATFORM_VARIABLES = ("VL_API_KEY", "VL_API_TOKEN", "VL_API_URL")


def credentials_set() -> bool:
    return any(os.environ.get(name) for name in PLATFORM_VARIABLES)


@contextlib.contextmanager
def platform_or_sample(dataset_id: str | None, cache_dir: str | None) -> Iterator[tuple[Client, str, str | None]]:
    """(client, dataset id, cache dir): the configured Visual Layer, or the sample on a local service.

    The local service listens on a new port each run, so its exports are cached in a temporary
    folder (unless ``cache_dir`` is given) rather than piling up in the user's cache.
    """
    if credentials_set():
        if dataset_id is None:
            named = ", ".join(name for name in PLATFORM_VARIABLES if os.environ.get(name))
            raise SystemExit(
                f"--dataset-id is required when talking to Visual Layer ({named} set); "
                "unset it to run on the embedded sample"
            )
        yield Client(), dataset_id, cache_dir
        return
    with tempfile.TemporaryDirectory() as tmp, LocalVisualLayer(SAMPLE_ROOT, export_polls=1) as service:
        print(f"No credentials set: serving the sample dataset on a local Visual Layer service at {service.url}")
        yield Client(service.url), dataset_id or SAMPLE_DATASET_ID, cache_dir or str(Path(tmp) / "cache")


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head: enough for small images, seconds per epoch on a CPU."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
        )
        self.head = nn.Linear(64 * 16, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # uint8 images from the dataset; scaling here keeps the dataset's fast uint8 path.
        return self.head(self.features(images.float().div_(255).sub_(0.5)))


def train(dataset, *, epochs: int, seed: int, batch_size: int = 64) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN(len(dataset.classes))
    loader = dataset.dataloader(batch_size, shuffle=True, num_workers=0, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=epochs * len(loader))
    model.train()
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
            schedule.step()
    return model


@torch.no_grad()
def predict(model: nn.Module, dataset, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class, true class) for every item, in dataset order."""
    model.eval()
    predicted, truth = [], []
    for images, labels in dataset.dataloader(batch_size, shuffle=False, num_workers=0):
        predicted.append(model(images).argmax(dim=1))
        truth.append(labels)
    return torch.cat(predicted), torch.cat(truth)


@torch.no_grad()
def class_scores(model: nn.Module, dataset, batch_size: int = 256) -> torch.Tensor:
    """Each item's class probabilities (items x classes), in dataset order."""
    model.eval()
    loader = dataset.dataloader(batch_size, shuffle=False, num_workers=0)
    return torch.cat([model(images).softmax(dim=1) for images, _ in loader])


def accuracy(model: nn.Module, dataset) -> float:
    predicted, truth = predict(model, dataset)
    return (predicted == truth).float().mean().item()
