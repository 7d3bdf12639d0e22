"""The shipped sample: real digits whose injected defects the matching curation rules find."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys

import pytest
import requests

from tests.waits import Child
from vl_datasets import Client, VisualLayerDataset, fetch_export
from vl_datasets.sample import SAMPLE_DATASET_ID, SAMPLE_ROOT


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The sample, copied so that opening it writes nothing into the package, and its ground truth."""
    folder = tmp_path_factory.mktemp("sample") / SAMPLE_DATASET_ID
    shutil.copytree(SAMPLE_ROOT / SAMPLE_DATASET_ID, folder)
    return folder, json.loads((folder / "defects.json").read_text())


def _removed(folder, **rules) -> dict[str, str | None]:
    details = VisualLayerDataset.from_export(folder, task=None, **rules).curation_details()
    return dict(zip(details.column("media_id").to_pylist(), details.column("removed_by").to_pylist()))


def test_sample_is_small_real_and_in_the_export_schema(sample):
    folder, defects = sample
    payload = json.loads((folder / "metadata.json").read_text())
    assert payload["info"]["total_media_items"] == len(payload["media_items"]) == 1797 + 120 + 100
    size = sum(p.stat().st_size for p in (SAMPLE_ROOT / SAMPLE_DATASET_ID).rglob("*") if p.is_file())
    assert size < 4 * 2**20
    dataset = VisualLayerDataset.from_export(folder)
    assert dataset.classes == [str(d) for d in range(10)]
    image, _ = dataset[0]
    assert tuple(image.shape) == (3, 32, 32)
    assert image.float().std() > 10  # a real drawing, not a blank
    assert len(defects["flipped_label"]) >= 0.2 * 1797


def test_dedupe_removes_the_injected_near_duplicates(sample):
    folder, defects = sample
    removed = _removed(folder, dedupe=0.99)
    # Of each copy and its original exactly one stays: the other is removed by dedupe.
    pairs = defects["near_duplicate"].items()
    found = sum(1 for copy, original in pairs if (removed[copy] == "dedupe") != (removed[original] == "dedupe"))
    assert found >= 0.95 * len(pairs)
    assert sum(1 for r in removed.values() if r == "dedupe") <= 1.1 * len(pairs)  # few natural look-alikes


def test_blur_rule_removes_the_blurred_copies_and_little_else(sample):
    folder, defects = sample
    removed = _removed(folder, drop_issues={"blur": 0.5})
    hits = [m for m, r in removed.items() if r == "drop_issues"]
    assert sum(1 for m in defects["blurred"] if removed[m] == "drop_issues") >= 0.95 * len(defects["blurred"])
    assert sum(1 for m in hits if m in defects["blurred"]) >= 0.9 * len(hits)


def test_mislabels_rule_finds_flipped_labels_and_suggests_the_true_one(sample):
    folder, defects = sample
    removed = _removed(folder, drop_issues={"mislabels": 0.6})
    flipped = defects["flipped_label"]
    assert sum(1 for m in flipped if removed[m] == "drop_issues") >= 0.8 * len(flipped)
    table = VisualLayerDataset.from_export(folder, task=None).table
    suggested = {
        row["media_id"]: issue["suggested_label"]
        for row in table.select(["media_id", "issues"]).to_pylist()
        for issue in row["issues"]
        if issue["issue_type"] == "mislabels"
    }
    right = sum(1 for m, truth in flipped.items() if suggested.get(m) == truth["true_label"])
    assert right >= 0.8 * len(flipped)


def test_low_uniqueness_marks_the_redundant_copies(sample):
    folder, defects = sample
    table = VisualLayerDataset.from_export(folder, task=None).table
    score = dict(zip(table.column("media_id").to_pylist(), table.column("uniqueness_score").to_pylist()))
    copies = [score[m] for m in defects["near_duplicate"]]
    others = sorted(score.values())
    assert sorted(copies)[len(copies) // 2] < others[len(others) // 4]  # the median copy is in the bottom quarter


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_sample_exports_it_over_http(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VL_")}
    command = [sys.executable, "-m", "vl_datasets", "serve", "--sample", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            requests.get(url, timeout=1)
        except requests.ConnectionError:
            return False
        return True

    with Child(command, env=env) as server:
        server.until(answers, f"vl-datasets serve --sample to answer on {url}")
        client = Client(url, progress=False, env={})
        assert client.get_dataset(SAMPLE_DATASET_ID).n_images == 2017
        entry = fetch_export(SAMPLE_DATASET_ID, client=client, cache_dir=tmp_path, include_images=True)
        assert entry.row_count == 2017
        assert sum(1 for p in entry.images_dir.rglob("*.jpg")) == 2017
        server.process.terminate()
        server.wait("serve's exit after SIGTERM")
