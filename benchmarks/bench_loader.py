"""DataLoader throughput at 224x224: VisualLayerDataset against its peers, side by side in one run.

    pip install scikit-image            # the corpora's source photos (benchmarks only)
    python benchmarks/bench_loader.py   # writes benchmarks/RESULTS_loader.md

Corpora (benchmarks/corpus.py): ImageNet-like 500x375 JPEGs and 2000x1500 originals. Each
loader yields uint8 3x224x224 images and int64 labels at batch 64, shuffled, with 0 and 2
workers, each with its own defaults (the peers' workers are not persistent, as in most training
scripts). A rate is the images of the timed epochs over their total time, after a warm-up epoch:
epochs may overlap, since VisualLayerDataset's workers prefetch across them. With 0 workers
the main process runs one intra-op thread for every loader (PERF_BASELINE §3: the second
thread only spins). Peers: the plain Pillow dataset that torchvision's ImageFolder amounts to
(open, convert, resize, to tensor), and, when installed, torchvision's ImageFolder and Hugging
Face datasets. The decode ceiling is decode_image's rate on the same files, bytes in RAM, one
process pinned to each core.

Every rate is measured in a fresh interpreter. Pillow's rate on large images depends on the
process's allocator history (see bench_decode.py: each decoded 2000x1500 image is a fresh,
page-faulted mmap until glibc's mmap threshold has risen above 12 MB), which differed by 2x
between runs in one process. The plain Pillow dataset is therefore also measured with glibc
told to keep such buffers on its heap (``WARMED_ALLOCATOR``, "warmed allocator"), and the
speedup target is taken against the faster of the two.

The shared machines drift by 10-20% over minutes, so the numbers behind the targets (plain
Pillow and VisualLayerDataset at 2 workers, and the ceiling) are measured in interleaved rounds,
and each target is the median of its per-round ratios.

Targets: >= 1.7x the plain Pillow dataset at 2 workers on 500x375, >= 4x on the originals,
>= 85% of the decode ceiling on 2 cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import corpus
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.loading.images import decode_image

HERE = Path(__file__).resolve().parent
SIZE = 224
BATCH = 64
ROUNDS = 3
# Timed epochs per corpus: at least ~1,200 images, so a rate spans several batches per worker.
EPOCHS = {"imagenet": 1, "large": 4}
SPEEDUP_TARGETS = {"imagenet": 1.7, "large": 4.0}
PLAIN, WARMED, OURS = "plain Pillow dataset", "plain Pillow dataset, warmed allocator", "VisualLayerDataset"
# glibc then serves allocations under 32 MB (its maximum) from its heap and keeps freed heap
# pages instead of returning them to the kernel, so a decoded image reuses warm pages.
WARMED_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


class PlainPillowDataset(Dataset):
    """What ImageFolder + Resize((224, 224)) + PILToTensor does, in plain code."""

    def __init__(self, items: list[tuple[str, int]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        with Image.open(path) as image:
            image = image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
        return torch.from_numpy(np.asarray(image)).permute(2, 0, 1), label


def _plain(folder: Path, workers: int):
    return DataLoader(
        PlainPillowDataset(corpus.image_paths(folder)), batch_size=BATCH, shuffle=True, num_workers=workers
    )


def _ours(folder: Path, workers: int):
    return VisualLayerDataset.from_export(folder, image_size=SIZE).dataloader(BATCH, num_workers=workers, seed=0)


def _torchvision(folder: Path, workers: int):
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize((SIZE, SIZE)), transforms.PILToTensor()])
    return DataLoader(
        datasets.ImageFolder(str(folder / "imagefolder"), transform=tf),
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
    )


def _huggingface(folder: Path, workers: int):
    import datasets

    hf = datasets.load_dataset("imagefolder", data_dir=str(folder / "imagefolder"), split="train")

    def to_tensor(batch):
        batch["image"] = [
            torch.from_numpy(np.asarray(i.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR))).permute(2, 0, 1)
            for i in batch["image"]
        ]
        return batch

    hf.set_transform(to_tensor)
    return DataLoader(hf, batch_size=BATCH, shuffle=True, num_workers=workers)


def _available(name: str) -> bool:
    # Without importing it: every measurement's fresh interpreter builds this table.
    return importlib.util.find_spec(name) is not None


def loaders() -> dict:
    """Loader factories by name; the peers only when installed."""
    found = {PLAIN: _plain, WARMED: _plain, OURS: _ours}
    if _available("torchvision"):
        found["torchvision ImageFolder"] = _torchvision
    if _available("datasets"):
        found["HF datasets imagefolder"] = _huggingface
    return found


def measure_fresh(name: str, folder: Path, workers: int, epochs: int) -> float:
    """``measure`` of loader ``name`` in a fresh interpreter (one intra-op thread in its main process)."""
    code = (
        "import torch, bench_loader as b; from pathlib import Path; torch.set_num_threads(1); "
        f"print(b.measure(b.loaders()[{name!r}], Path({str(folder)!r}), {workers}, {epochs}))"
    )
    env = {**os.environ, **(WARMED_ALLOCATOR if name == WARMED else {})}
    result = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"measuring {name} failed:\n{result.stderr[-3000:]}")
    return float(result.stdout.split()[-1])


def measure(make, folder: Path, workers: int, epochs: int) -> float:
    """img/s over ``epochs`` timed epochs after a warm-up epoch: all their images over all their time."""
    loader = make(folder, workers)
    seen = 0
    for epoch in range(epochs + 1):
        if epoch == 1:
            start, seen = time.perf_counter(), 0
        for batch in loader:
            seen += len(batch[1] if isinstance(batch, (tuple, list)) else batch["label"])
    rate = seen / (time.perf_counter() - start)
    del loader
    return rate


def _decode_rate(blobs: list[bytes], core: int, passes: int, results=None) -> float:
    """img/s of decode_image(size=224) pinned to ``core``, median of ``passes``."""
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    rates = []
    for _ in range(passes):
        start = time.perf_counter()
        for blob in blobs:
            decode_image(blob, size=SIZE)
        rates.append(len(blobs) / (time.perf_counter() - start))
    rate = statistics.median(rates)
    if results is not None:
        results.put(rate)
    return rate


def decode_ceilings(folder: Path, passes: int = 5) -> tuple[float, float]:
    """(single-core img/s, all cores decoding at once): bytes preloaded, one process per core.

    The second is the ceiling a loader can reach on this machine: on a VM whose vCPUs are
    hyperthreads of one core, it is well below cores x the single-core rate.
    """
    import multiprocessing as mp

    blobs = [Path(p).read_bytes() for p, _ in corpus.image_paths(folder)]
    cores = sorted(os.sched_getaffinity(0))
    context = mp.get_context("fork")
    single = context.Queue()
    proc = context.Process(target=_decode_rate, args=(blobs, cores[0], passes, single))
    proc.start()
    one = single.get()
    proc.join()
    together = context.Queue()
    procs = [context.Process(target=_decode_rate, args=(blobs, core, passes, together)) for core in cores]
    for proc in procs:
        proc.start()
    total = sum(together.get() for _ in procs)
    for proc in procs:
        proc.join()
    return one, total


def _corpus_section(kind: str, count: int, names: list[str], cores: int) -> list[str]:
    folder = corpus.build(kind, count)
    epochs = EPOCHS[kind]
    rates = {name: {0: measure_fresh(name, folder, 0, epochs)} for name in names}
    for name in set(names) - {PLAIN, WARMED, OURS}:
        rates[name][2] = measure_fresh(name, folder, 2, epochs)
    rounds = []  # (plain, plain warmed, ours, one core, all cores), interleaved
    for _ in range(ROUNDS):
        one_core, all_cores = decode_ceilings(folder, passes=2)
        rounds.append(
            (
                measure_fresh(PLAIN, folder, 2, epochs),
                measure_fresh(WARMED, folder, 2, epochs),
                measure_fresh(OURS, folder, 2, epochs),
                one_core,
                all_cores,
            )
        )
    plain, warmed, ours, one_core, all_cores = (statistics.median(column) for column in zip(*rounds))
    rates[PLAIN][2], rates[WARMED][2], rates[OURS][2] = plain, warmed, ours
    speedup = statistics.median(o / max(p, w) for p, w, o, _, _ in rounds)
    of_two = statistics.median(o / (one * cores) for _, _, o, one, _ in rounds)
    of_all = statistics.median(o / every for _, _, o, _, every in rounds)
    lines = [
        f"## {kind} corpus ({count} images; {epochs} timed epoch{'s' if epochs > 1 else ''})",
        "",
        "| loader | 0 workers | 2 workers |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {rate[0]:,.0f} | {rate[2]:,.0f} |" for name, rate in rates.items()]
    lines += [
        "",
        f"At 2 workers, {ROUNDS} interleaved rounds (plain Pillow as started / with a warmed allocator, "
        "VisualLayerDataset, decode ceiling on one core and on all cores at once):",
        "",
    ]
    lines += [
        f"- round {i + 1}: {p:,.0f} / {w:,.0f} / {o:,.0f} img/s = {o / max(p, w):.2f}x the faster plain; "
        f"ceiling {one:,.0f} on one core, {every:,.0f} on {cores} at once"
        for i, (p, w, o, one, every) in enumerate(rounds)
    ]
    lines += [
        "",
        f"- VisualLayerDataset / the faster plain Pillow at 2 workers: **{speedup:.2f}x** (median of rounds)",
        f"- VisualLayerDataset at 2 workers: **{of_two:.0%}** of {cores} x the one-core ceiling, "
        f"**{of_all:.0%}** of the ceiling measured on {cores} cores at once (medians of rounds)",
    ]
    target = SPEEDUP_TARGETS[kind]
    fastest_plain = max(plain, warmed)
    if target * fastest_plain > all_cores:
        lines.append(
            f"- the {target:g}x target is out of reach here: {target:g} x plain Pillow's {fastest_plain:,.0f} "
            f"img/s is {target * fastest_plain:,.0f} img/s, above the {all_cores:,.0f} img/s that decode_image "
            f"reaches on all {cores} cores with the bytes already in RAM"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imagenet", type=int, default=2000, help="images in the 500x375 corpus")
    parser.add_argument("--large", type=int, default=300, help="images in the 2000x1500 corpus")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS_loader.md")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    names = list(loaders())
    lines = [f"# DataLoader benchmark ({cores} cores, batch {BATCH}, 224x224 uint8, img/s)", ""]
    for kind, count in (("imagenet", args.imagenet), ("large", args.large)):
        lines += _corpus_section(kind, count, names, cores)
        print("\n".join(lines), flush=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
