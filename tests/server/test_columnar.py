"""metadata.json streamed into its columnar form, kept in the service's own folder, and read back."""

from __future__ import annotations

import io
import json
import os
import zipfile

import pyarrow.parquet as pq
import pytest
import requests

from tests.server.helpers import api, finished, open_zip, start_full, start_selective
from tests.waits import cpu_of, wait_until
from vl_datasets.server import columnar
from vl_datasets.server.metadata_stream import MetadataFormatError, iter_media_items, read_info
from vl_datasets.testing import LocalVisualLayer, write_dataset, write_metadata_dataset


def _items(n: int) -> list[dict]:
    return [
        {"media_id": f"m{i}", "file_name": f"f{i}.jpg", "file_path": f"d/f{i}.jpg", "metadata_items": []}
        for i in range(n)
    ]


def test_items_stream_in_either_key_order_and_from_a_bare_list(tmp_path):
    items = _items(3)
    after = tmp_path / "after.json"
    after.write_text(json.dumps({"media_items": items, "info": {"dataset": "late"}}))
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(items, indent=2))
    assert list(iter_media_items(after)) == items
    assert read_info(after) == {"dataset": "late"}
    assert list(iter_media_items(bare)) == items
    assert read_info(bare) == {}


@pytest.mark.parametrize(
    "text,words",
    [
        ('{"info": {}, "media_items": [{"media_id": "a"}, ', "not valid JSON (after 1 media items)"),
        ('{"media_items": {"a": 1}}', "'media_items' is not a list"),
        ('{"media_items": [1]}', "media item 0 is not an object"),
        ('"text"', "not a Visual Layer JSON export"),
    ],
)
def test_bad_metadata_is_named(tmp_path, text, words):
    path = tmp_path / "metadata.json"
    path.write_text(text)
    with pytest.raises(MetadataFormatError, match=r"metadata\.json") as caught:
        list(iter_media_items(path))
    assert words in str(caught.value)


def test_a_field_null_in_the_first_batch_takes_its_type_from_the_later_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(columnar, "BATCH_ROWS", 2)
    items = _items(5)
    for i, item in enumerate(items):
        item["uniqueness_score"] = None if i < 2 else i / 10
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps({"info": {}, "media_items": items}))
    (tmp_path / "index").mkdir()
    summary = columnar.build(path, tmp_path / "index")
    assert len(summary.runs) == 2, "a batch of another schema did not start a new run"
    rows = columnar.Columns(tmp_path / "index", summary.runs)
    scores = [v for b in rows.batches(["uniqueness_score"]) for v in b.column(0).to_pylist()]
    assert scores == [None, None, 0.2, 0.3, 0.4]
    assert summary.fields == ["media_id", "file_name", "file_path", "uniqueness_score"]


def test_a_selection_holds_only_the_fields_its_items_have(tmp_path):
    items = _items(4)
    items[3]["uniqueness_score"] = 0.5
    write_dataset(tmp_path, "ds-ready", media_items=items)
    with LocalVisualLayer(tmp_path) as service:
        some = finished(service, start_selective(service, {"media_ids": ["m0", "m1"]}, export_format="parquet"))
        every = finished(service, start_full(service, export_format="parquet"))
        with open_zip(service, some) as zf:
            selected = pq.read_table(io.BytesIO(zf.read("metadata.parquet")))
        with open_zip(service, every) as zf:
            whole = pq.read_table(io.BytesIO(zf.read("metadata.parquet")))
    assert "uniqueness_score" not in selected.column_names
    assert whole.column("uniqueness_score").to_pylist() == [None, None, None, 0.5]


def test_the_index_lives_in_the_index_dir_and_a_restart_reuses_it(tmp_path):
    root, index_dir = tmp_path / "datasets", tmp_path / "index"
    write_metadata_dataset(root, "big", 300)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    seen = []
    for _ in range(2):
        with LocalVisualLayer(root, index_dir=index_dir) as service:
            body = requests.get(api(service, "big")).json()
            seen.append(body)
        summaries = list(index_dir.glob("*/v*/summary.json"))
        assert len(summaries) == 1, f"expected one built version: {summaries}"
        seen.append(summaries[0].stat().st_mtime_ns)
    assert seen[0] == seen[2]
    assert seen[1] == seen[3], "the second start built the index again"
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before, "the service wrote into the dataset folder"
    items = list(iter_media_items(root / "big" / "metadata.json"))
    assert seen[0]["n_images"] == sum(1 for m in items if m["media_type"] == "image") < 300
    assert seen[0]["n_videos"] == len({m["file_path"].split("/")[1] for m in items if m["media_type"] == "video_frame"})


def test_a_new_metadata_json_is_indexed_again(tmp_path):
    write_dataset(tmp_path, "ds-ready", n_items=4)
    with LocalVisualLayer(tmp_path) as service:
        assert requests.get(api(service, "ds-ready")).json()["n_images"] == 4
        write_dataset(tmp_path, "ds-ready", n_items=6)
        assert requests.get(api(service, "ds-ready")).json()["n_images"] == 6
        task = finished(service, start_full(service))
        assert task["entities_count"] == 6


def test_synthetic_metadata_is_deterministic_and_shaped_like_an_export(tmp_path):
    first = write_metadata_dataset(tmp_path / "a", "big", 2_000, seed=1) / "metadata.json"
    again = write_metadata_dataset(tmp_path / "b", "big", 2_000, seed=1) / "metadata.json"
    assert first.read_bytes() == again.read_bytes()
    payload = json.loads(first.read_text())
    items = payload["media_items"]
    assert payload["info"]["total_media_items"] == len(items) == 2_000
    assert len({m["media_id"] for m in items}) == 2_000
    assert not (first.parent / "images").exists()
    entries = [e for m in items for e in m["metadata_items"]]
    sources = {e["properties"]["source"] for e in entries if e["type"] == "image_label"}
    issues = {e["properties"]["issue_type"] for e in entries if e["type"] == "issue"}
    assert sources == {"User", "Model", "Visual Layer"}
    assert issues >= {"duplicates", "blur", "dark", "mislabels", "outliers"}
    assert all(0 <= e["properties"]["confidence"] <= 1 for e in entries if e["type"] == "issue")
    groups = {}
    for m in items:
        for e in m["metadata_items"]:
            if e["properties"].get("issue_type") == "duplicates":
                groups.setdefault(e["properties"]["duplicate_group_id"], set()).add(m["media_id"])
    assert groups and all(len(members) == 2 for members in groups.values()), "duplicates come in pairs"
    frames = [m for m in items if m["media_type"] == "video_frame"]
    assert frames and len({m["file_name"] for m in frames}) < len(frames), "frame names repeat across videos"


def test_repeated_frame_names_are_renamed_by_media_id_in_a_parquet_export(tmp_path):
    write_metadata_dataset(tmp_path, "big", 2_000)
    with LocalVisualLayer(tmp_path) as service:
        start = requests.get(
            api(service, "big/export_context_async"),
            params={"file_name": "e.zip", "export_format": "parquet"},
        )
        for _ in range(20):
            task = requests.get(api(service, "big/export_status"), params={"export_task_id": start.json()["id"]}).json()
            if task["status"] == "COMPLETED":
                break
        answer = requests.get(service.url + task["download_uri"])
    with zipfile.ZipFile(io.BytesIO(answer.content)) as zf:
        table = pq.read_table(io.BytesIO(zf.read("metadata.parquet"))).to_pylist()
    names = [row["image_filename"] for row in table]
    assert len({n.lower() for n in names}) == len(names) == 2_000
    for row in table:
        expected = f"{row['media_id']}.jpg" if row["media_type"] == "video_frame" else row["file_name"]
        assert row["image_filename"] == expected, row


def test_a_dataset_asked_for_while_it_is_indexed_answers_503_with_retry_after(tmp_path, monkeypatch):
    from vl_datasets.server import api as api_origin

    monkeypatch.setattr(api_origin, "DATASET_WAIT_S", 0.0)  # answer at once instead of waiting for the index
    write_metadata_dataset(tmp_path, "big", 20_000)
    with LocalVisualLayer(tmp_path) as service:
        early = requests.get(api(service, "big"))
        build = service.datasets.get("big").index  # built by a thread of this process: its CPU is the progress
        wait_until(lambda: build.wait(0.5) is not None, "the index of 20,000 items", progress=cpu_of(os.getpid()))
        later = requests.get(api(service, "big"))
    assert early.status_code == 503, early.text
    assert early.headers["Retry-After"] == str(api_origin.RETRY_AFTER_S)
    assert "being indexed" in early.json()["detail"]
    assert later.status_code == 200
    assert later.json()["n_images"] == 20_000 - 20_000 // 100  # one item in 100 is a video frame
