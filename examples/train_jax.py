"""Train a small plain-JAX classifier on a curated Visual Layer dataset, on the CPU.

The same export, leakage-safe split and curation as train_classifier.py, with the batches coming
through vl_datasets.integrations.jax as NumPy arrays (channels-last uint8 images, int64 labels) in
the loader's order, which its state_dict() resumes exactly. The model is a two-layer perceptron
written in jax.numpy, trained with SGD and momentum by a jitted step; no Flax or optax needed.

    pip install "vl_datasets[jax]"
    python examples/train_jax.py                          # the sample dataset shipped in the package
    python examples/train_jax.py --export export.zip      # a local export of your own
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vl_datasets import CurationRules, VisualLayerDataset, leakage_safe_split
from vl_datasets.integrations.jax import numpy_batches
from vl_datasets.sample import SAMPLE_DATASET_ID, SAMPLE_ROOT


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, default=SAMPLE_ROOT / SAMPLE_DATASET_ID, help="a local export")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def init_params(key: jax.Array, n_inputs: int, n_classes: int, hidden: int = 128) -> dict[str, jax.Array]:
    first, second = jax.random.split(key)
    return {
        "w1": jax.random.normal(first, (n_inputs, hidden)) * jnp.sqrt(2.0 / n_inputs),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(second, (hidden, n_classes)) * jnp.sqrt(1.0 / hidden),
        "b2": jnp.zeros(n_classes),
    }


def logits(params: dict[str, jax.Array], images: jax.Array) -> jax.Array:
    # uint8 B x H x W x 3 from the loader, scaled here so the loader keeps its fast uint8 path.
    x = images.reshape(images.shape[0], -1).astype(jnp.float32) / 255.0 - 0.5
    return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def loss_fn(params, images, labels):
    log_probs = jax.nn.log_softmax(logits(params, images))
    return -jnp.take_along_axis(log_probs, labels[:, None], axis=1).mean()


@jax.jit
def train_step(params, momentum, images, labels, lr):
    loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
    momentum = jax.tree.map(lambda m, g: 0.9 * m + g, momentum, grads)
    params = jax.tree.map(lambda p, m: p - lr * m, params, momentum)
    return params, momentum, loss


@jax.jit
def correct(params, images, labels):
    return (logits(params, images).argmax(axis=1) == labels).sum()


def accuracy(params, dataset: VisualLayerDataset) -> float:
    hits = sum(
        int(correct(params, b["image"], b["label"]))
        for b in numpy_batches(dataset.dataloader(256, shuffle=False, num_workers=0))
    )
    return hits / len(dataset)


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    rules = CurationRules(
        min_uniqueness=0.05,
        keep_unscored=True,
        drop_issues={"mislabels": 0.6, "blur": 0.5, "outliers": 0.5},
        dedupe=True,
    )
    with tempfile.TemporaryDirectory() as cache:  # the export's index; nothing is written beside it
        everything = VisualLayerDataset.from_export(args.export, task=None, cache_dir=cache)
        parts = leakage_safe_split(everything, {"train": 0.8, "test": 0.2}, seed=args.seed)

        def part(name: str, **options) -> VisualLayerDataset:
            curation = dataclasses.replace(rules, subset=parts[name])
            return VisualLayerDataset.from_export(
                args.export, cache_dir=cache, curation=curation, image_size=args.image_size, **options
            )

        train = part("train")
        test = part("test", classes=train.classes)
        print(f"{len(train):,} curated train items, {len(test):,} test items, {len(train.classes)} classes")
        # No worker processes: JAX runs threads, and a fork after that can deadlock. 16 px digits
        # decode fast enough in this process; for larger images pass multiprocessing_context="forkserver".
        batches = numpy_batches(train.dataloader(64, seed=args.seed, num_workers=0))
        params = init_params(jax.random.key(args.seed), args.image_size**2 * 3, len(train.classes))
        momentum = jax.tree.map(jnp.zeros_like, params)
        for epoch in range(batches.epoch, args.epochs):
            lr = 0.05 * 0.5 * (1 + np.cos(np.pi * epoch / args.epochs))  # cosine decay, epoch by epoch
            losses = []
            for batch in batches:
                params, momentum, loss = train_step(params, momentum, batch["image"], batch["label"], lr)
                losses.append(loss)
            print(f"epoch {epoch}: loss {float(jnp.mean(jnp.stack(losses))):.3f}")
        print(f"test accuracy {accuracy(params, test):.1%} (chance {1 / len(train.classes):.0%})")
    print(f"done in {time.perf_counter() - started:.0f} s on {jax.devices()[0].platform}")


if __name__ == "__main__":
    main()
