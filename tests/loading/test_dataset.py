"""VisualLayerDataset end to end: export from the local service or a local file, curate, decode, audit."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
import pydoc
import zipfile
from pathlib import Path

import pyarrow.compute as pc
import pytest
import torch

from vl_datasets import (
    CuratedItems,
    CurationError,
    CurationRules,
    ImageOptions,
    TargetOptions,
    errors,
    leakage_safe_split,
)
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.loading.image_reader import ImageReader
from vl_datasets.testing import write_dataset


def item(i, labels=("cat",), score=0.5, issues=(), objects=(), path=None):
    metadata = [
        {"type": "image_label", "properties": {"category_name": name, "source": source, "original_id": -1}}
        for name, source in ((label, "User") if isinstance(label, str) else label for label in labels)
    ]
    metadata += [{"type": "issue", "properties": dict(p)} for p in issues]
    metadata += [{"type": "object_label", "properties": dict(o)} for o in objects]
    return {
        "media_id": f"m{i:03d}",
        "media_type": "image",
        "file_name": f"img_{i}.jpg",
        "file_path": path or f"folder/img_{i}.jpg",
        "height": 40,
        "width": 60,
        "uniqueness_score": score,
        "cluster_id": f"c{i % 2}",
        "url": "",
        "metadata_items": metadata,
    }


def test_fetches_curates_and_yields_tensors(quick_vl, quick_client, tmp_path):
    ds = VisualLayerDataset("ds-ready", client=quick_client, cache_dir=tmp_path, image_size=32)
    assert len(ds) == 8
    assert ds.classes == ["bird", "cat", "dog"]
    assert ds.class_to_idx == {"bird": 0, "cat": 1, "dog": 2}
    image, label = ds[0]
    assert image.dtype == torch.uint8
    assert image.shape == (3, 32, 32)
    assert isinstance(label, int)
    assert ds.classes[label] == ds.table.column("labels")[0].as_py()[0]["category_name"]
    assert len(ds.media_ids) == 8
    assert "VisualLayerDataset(items=8" in repr(ds)
    again = VisualLayerDataset(
        "ds-ready", client=quick_client, cache_dir=tmp_path, min_uniqueness=0.5, keep_unscored=False, dedupe=True
    )
    summary = again.curation_summary()
    assert summary.total == 8
    assert summary.kept == len(again) < 8
    assert set(summary.removed_by) == {"min_uniqueness=0.5", "dedupe"}
    assert quick_vl.count("export") == 1  # the second dataset reused the cached export


def test_from_export_opens_a_zip_or_folder_without_network(quick_client, tmp_path):
    task = quick_client.wait_for_export("ds-ready", quick_client.start_export("ds-ready", export_format="json").id)
    archive = quick_client.download_export(task, tmp_path / "export.zip")
    from_zip = VisualLayerDataset.from_export(archive, cache_dir=tmp_path / "cache", image_size=16)
    assert len(from_zip) == 8
    assert from_zip[3][0].shape == (3, 16, 16)
    folder = from_zip.export_dir
    assert from_zip.entry.index_path.is_file(), "the JSON was not normalized once, when the ZIP was published"
    reopened = VisualLayerDataset.from_export(folder, cache_dir=tmp_path / "cache")
    assert reopened.media_ids == from_zip.media_ids
    with pytest.raises(errors.ExportNotFoundError):
        VisualLayerDataset.from_export(tmp_path / "missing.zip")


def test_unsafe_or_corrupt_zip_is_refused(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../metadata.json", "{}")
    with pytest.raises(errors.UnsafeArchiveError):
        VisualLayerDataset.from_export(bad, cache_dir=tmp_path / "cache")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(b"PK\x03\x04" + b"\0" * 20)
    with pytest.raises(errors.CorruptArchiveError, match=r"truncated\.zip"):
        VisualLayerDataset.from_export(truncated, cache_dir=tmp_path / "cache")


def export_folder(tmp_path, items, name="custom") -> Path:
    write_dataset(tmp_path / "src", name, media_items=items)
    folder = tmp_path / "src" / name
    return folder


def test_label_rules_classes_and_invalid_labels(tmp_path):
    items = [
        item(0, ["cat"]),
        item(1, ["dog"]),
        item(2, []),
        item(3, ["cat", "dog"]),
        item(4, ["cat", ("dog", "Model")]),
        item(5, [("cat", "User"), ("cat", "Model")]),
    ]
    folder = export_folder(tmp_path, items)
    with pytest.raises(errors.CurationError, match=r"1 with no label.*2 with several labels"):
        VisualLayerDataset.from_export(folder)
    ds = VisualLayerDataset.from_export(folder, invalid_labels="drop", label_source="User")
    assert ds.media_ids == ["m000", "m001", "m004", "m005"]
    assert ds.curation_summary().removed_by == {"invalid_labels": 2}
    fixed = VisualLayerDataset.from_export(
        folder, invalid_labels="drop", label_source="User", classes=["dog", "cat", "bird"]
    )
    assert [fixed[i][1] for i in range(len(fixed))] == [1, 0, 1, 1]
    multi = VisualLayerDataset.from_export(folder, task="multilabel")
    assert multi.classes == ["cat", "dog"]
    assert multi[3][1].tolist() == [1.0, 1.0]
    assert multi[2][1].sum() == 0


def test_detection_boxes_follow_the_image_when_it_is_resized(tmp_path):
    objects = [{"bbox": [10, 5, 20, 10], "category_name": "car", "source": "User", "original_id": -1}]
    folder = export_folder(tmp_path, [item(0, [], objects=objects)])  # a 60x40 image
    image, target = VisualLayerDataset.from_export(folder, task="detection", image_size=(20, 30))[0]
    assert tuple(image.shape[-2:]) == (20, 30)
    assert target["boxes"].tolist() == [[5.0, 2.5, 15.0, 7.5]], "the boxes were not scaled with the image"
    pil_image, pil_target = VisualLayerDataset.from_export(folder, task="detection", image_size=(20, 30), decode="pil")[
        0
    ]
    assert pil_image.size == (30, 20) and pil_target["boxes"].tolist() == [[5.0, 2.5, 15.0, 7.5]]
    _, as_stored = VisualLayerDataset.from_export(folder, task="detection")[0]
    assert as_stored["boxes"].tolist() == [[10.0, 5.0, 30.0, 15.0]], "an image at its own size keeps its boxes"


def test_an_object_without_a_box_is_left_out_of_the_detection_target(tmp_path):
    objects = [
        {"bbox": None, "category_name": "car", "source": "User", "original_id": -1, "metadata_items": []},
        {"bbox": [1, 2, 3, 4], "category_name": "car", "source": "User", "original_id": -1, "metadata_items": []},
    ]
    folder = export_folder(tmp_path, [item(0, [], objects=objects)])
    _, target = VisualLayerDataset.from_export(folder, task="detection")[0]
    assert target["boxes"].tolist() == [[1.0, 2.0, 4.0, 6.0]], "the box-less object should be left out"


def test_detection_targets_are_xyxy_with_object_issue_filter(tmp_path):
    objects = [
        {"bbox": [10, 5, 20, 10], "category_name": "car", "source": "User", "original_id": -1, "metadata_items": []},
        {
            "bbox": [0, 0, 4, 4],
            "category_name": "person",
            "source": "User",
            "original_id": -1,
            "metadata_items": [{"type": "issue", "properties": {"issue_type": "blur", "confidence": 0.9}}],
        },
    ]
    folder = export_folder(tmp_path, [item(0, [], objects=objects), item(1, [], objects=objects[:1])])
    ds = VisualLayerDataset.from_export(folder, task="detection", object_drop_issues={"blur": 0.8})
    assert ds.classes == ["car", "person"]
    _, target = ds[0]
    assert target["boxes"].tolist() == [[10.0, 5.0, 30.0, 15.0]]
    assert target["labels"].tolist() == [0]
    assert target["media_id"] == "m000"
    assert target["boxes"].dtype == torch.float32
    images, targets = next(iter(ds.dataloader(2, shuffle=False, num_workers=0)))
    assert len(targets) == 2
    assert images.shape[0] == 2


def test_task_none_gives_metadata_rows(tmp_path):
    folder = export_folder(tmp_path, [item(0, ["cat"], score=0.7)])
    image, row = VisualLayerDataset.from_export(folder, task=None)[0]
    assert row["media_id"] == "m000"
    assert row["uniqueness_score"] == 0.7
    assert image.shape == (3, 40, 60)


def test_where_and_issue_rules_reach_the_dataset(tmp_path):
    items = [
        item(i, ["cat"], score=i / 10, issues=[{"issue_type": "blur", "confidence": 0.9}] if i == 2 else [])
        for i in range(6)
    ]
    folder = export_folder(tmp_path, items)
    ds = VisualLayerDataset.from_export(folder, drop_issues={"blur": 0.8}, where=pc.field("uniqueness_score") > 0.05)
    assert ds.media_ids == ["m001", "m003", "m004", "m005"]
    with pytest.raises(errors.CurationError, match=r"min_uniqueness=0\.9"):
        VisualLayerDataset.from_export(folder, min_uniqueness=0.9)


def test_missing_and_corrupt_images(tmp_path):
    folder = export_folder(tmp_path, [item(i) for i in range(4)])
    (folder / "images" / "folder" / "img_1.jpg").unlink()
    with pytest.raises(errors.ImageNotFoundError, match="m001"):
        VisualLayerDataset.from_export(folder)
    ds = VisualLayerDataset.from_export(folder, missing_images="drop")
    assert ds.media_ids == ["m000", "m002", "m003"]
    assert ds.curation_summary().removed_by == {"missing_images": 1}
    corrupt = folder / "images" / "folder" / "img_2.jpg"
    corrupt.write_bytes(corrupt.read_bytes()[:100])
    with pytest.raises(errors.ImageDecodeError, match="m002") as caught:
        ds[1]
    assert str(corrupt) in str(caught.value)
    skipping = VisualLayerDataset.from_export(folder, missing_images="drop", on_error="skip", image_size=8)
    loader = skipping.dataloader(2, shuffle=False, num_workers=0)
    batches = list(loader)
    assert sum(len(labels) for _, labels in batches) == 2
    assert [s.media_id for s in loader.skipped] == ["m002"]


@pytest.mark.parametrize(
    "spelled", ["folder/img_1.jpg", "folder\\img_1.jpg", "./folder/img_1.jpg", "folder//img_1.jpg"]
)
@pytest.mark.parametrize("form", ["json", "parquet"])
def test_one_image_two_rows_name_is_neither_s(tmp_path, spelled, form):
    """m002's file_path names m001's image, however spelled: no file is ever given to two rows, so
    the export is refused as ambiguous (never dropped silently), JSON or Parquet."""
    import pyarrow.parquet as pq

    from tests.metadata.helpers import json_strings_table

    items = [item(i) for i in range(4)]
    items[2]["file_path"] = spelled
    folder = export_folder(tmp_path, items)
    for extra in (folder / "images").iterdir():  # a literal "folder\\img_1.jpg" write_dataset made
        if extra.is_file():
            extra.unlink()
    if form == "parquet":
        pq.write_table(json_strings_table(items), folder / "metadata.parquet")
        (folder / "metadata.json").unlink()
    for missing in ("raise", "drop"):
        with pytest.raises(errors.ImageNotFoundError, match=r"media_id 'm001'.*media_id 'm002' names too"):
            VisualLayerDataset.from_export(folder, missing_images=missing, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("task", ["classification", "multilabel", None])
def test_slices_whose_kept_rows_have_no_image_are_said_or_dropped_whatever_the_task(tmp_path, monkeypatch, task):
    """A metadata-only export opened without an images_root, and an export whose first slice of
    rows has no image: the error that says what to do, or those rows dropped (an Arrow error
    about dictionaries of labels, where a slice had no item left)."""
    from vl_datasets.metadata import row_batches

    monkeypatch.setattr(row_batches, "SLICE_ROWS", 2)
    folder = export_folder(tmp_path, [item(i) for i in range(6)])
    for i in (0, 1, 3):  # the whole first slice, and one row of the second
        (folder / "images" / "folder" / f"img_{i}.jpg").unlink()
    ds = VisualLayerDataset.from_export(folder, missing_images="drop", task=task, cache_dir=tmp_path / "c")
    assert ds.media_ids == ["m002", "m004", "m005"]
    assert ds.curation_summary().removed_by["missing_images"] == 3
    for image in (folder / "images").rglob("*.jpg"):
        image.unlink()
    (folder / "images" / "folder").rmdir()
    (folder / "images").rmdir()  # metadata only
    with pytest.raises(errors.ImageNotFoundError, match="pass images_root="):
        VisualLayerDataset.from_export(folder, task=task, cache_dir=tmp_path / "c")


def test_dataset_pickles_without_live_resources(quick_vl, quick_client, tmp_path):
    ds = VisualLayerDataset("ds-ready", client=quick_client, cache_dir=tmp_path, image_size=8)
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.media_ids == ds.media_ids
    assert torch.equal(copy[0][0], ds[0][0]), "the unpickled dataset decodes a different first image"


def test_transforms_follow_torchvision_conventions(tmp_path):
    folder = export_folder(tmp_path, [item(0, ["cat"]), item(1, ["dog"])])
    ds = VisualLayerDataset.from_export(
        folder,
        decode="pil",
        image_size=(20, 30),
        transform=lambda image: ("pil", image.size, image.mode),
        target_transform=lambda label: label + 100,
    )
    assert ds[0] == (("pil", (30, 20), "RGB"), 100)
    tensors = VisualLayerDataset.from_export(folder, image_size=16, transform=lambda t: t.float() / 255)
    image, label = tensors[1]
    assert image.dtype == torch.float32
    assert image.max() <= 1.0
    assert label == 1


CURATION_OPTIONS = [
    "curation",
    "subset",
    "labels",
    "label_source",
    "min_uniqueness",
    "keep_unscored",
    "drop_issues",
    "dedupe",
    "where",
]


VIEW_OPTIONS = [
    *CURATION_OPTIONS,
    "targets",
    "task",
    "classes",
    "invalid_labels",
    "object_drop_issues",
    "target_transform",
    "images",
    "image_size",
    "decode",
    "transform",
    "on_error",
    "missing_images",
    "images_root",
    "storage_options",
    "image_cache",
    "read_retry",
    "prepare",
    "prepared_root",
    "prepared_cache_limit",
]


FETCH_OPTIONS = ["client", "cache_dir", "offline", "export_format", "media_ids", "cluster_ids", "refresh", "version"]


@pytest.mark.parametrize(
    ("entry_point", "first", "options"),
    [
        (VisualLayerDataset, "dataset_id", FETCH_OPTIONS + VIEW_OPTIONS),
        (VisualLayerDataset.from_export, "path", ["cache_dir", *VIEW_OPTIONS]),
    ],
)
def test_every_option_is_in_the_signature_and_the_docs(entry_point, first, options):
    parameters = inspect.signature(entry_point).parameters
    assert sorted(parameters) == sorted([first, *options])
    assert parameters[first].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in options), (
        f"not keyword-only: {[n for n in options if parameters[n].kind is not inspect.Parameter.KEYWORD_ONLY]}"
    )
    for name in options:
        assert f"{name}: " in VisualLayerDataset.__doc__ + entry_point.__doc__, name


def test_subset_from_a_generator_builds_the_dataset_and_its_audit(tmp_path):
    folder = export_folder(tmp_path, [item(i) for i in range(4)])
    ds = VisualLayerDataset.from_export(folder, subset=(media_id for media_id in ["m002", "m000", "m002"]))
    assert len(ds) == 2
    assert ds.media_ids == ["m000", "m002"]
    details = ds.curation_details()
    assert details.column("removed_by").to_pylist() == [None, "subset", None, "subset"]
    assert ds.curation_rules.subset == ("m002", "m000")


def test_curation_rules_as_one_object_also_choose_the_targets_labels(tmp_path):
    items = [item(0, ["cat"]), item(1, ["dog"]), item(2, ["cat", ("dog", "Model")]), item(3, [("bird", "Model")])]
    folder = export_folder(tmp_path, items)
    rules = CurationRules(labels=["cat", "dog"], label_source="User", drop_issues={"blur": 0.8})
    ds = VisualLayerDataset.from_export(folder, curation=rules)
    # Item 2's Model label is not counted, so it has one label: no error, and it is a cat.
    assert ds.media_ids == ["m000", "m001", "m002"]
    assert [ds[i][1] for i in range(3)] == [0, 1, 0]
    assert ds.curation_rules is rules
    assert ds.label_source == "User"
    copy = pickle.loads(pickle.dumps(ds))  # as DataLoader workers get it
    assert copy.curation_rules == rules
    assert copy.curation_details().equals(ds.curation_details()), "the unpickled dataset's curation audit differs"
    alone = VisualLayerDataset.from_export(folder, labels=["cat", "dog"], label_source="User")
    assert alone.media_ids == ds.media_ids


def test_curation_given_twice_is_refused_before_any_export(quick_vl, quick_client, tmp_path):
    with pytest.raises(errors.ConfigurationError, match="min_uniqueness, label_source"):
        VisualLayerDataset(
            "ds-ready",
            client=quick_client,
            cache_dir=tmp_path,
            curation=CurationRules(dedupe=True),
            min_uniqueness=0.5,
            label_source="User",
        )
    with pytest.raises(errors.ConfigurationError, match="dedupe"):
        VisualLayerDataset("ds-ready", client=quick_client, cache_dir=tmp_path, curation=CurationRules(), dedupe=0.9)
    with pytest.raises(errors.ConfigurationError, match="decode"):
        VisualLayerDataset("ds-ready", client=quick_client, cache_dir=tmp_path, decode="numpy")
    with pytest.raises(errors.ConfigurationError, match="classes must be a collection"):  # not ["c", "a", "t"]
        VisualLayerDataset("ds-ready", client=quick_client, cache_dir=tmp_path, classes="cat")
    assert quick_vl.count("export") == 0


OPTION_GROUPS = [("curation", CurationRules), ("targets", TargetOptions), ("images", ImageOptions)]


@pytest.mark.parametrize(("keyword", "group"), OPTION_GROUPS)
@pytest.mark.parametrize("entry_point", [VisualLayerDataset, VisualLayerDataset.from_export])
def test_every_field_of_every_option_group_is_a_keyword_with_its_default_and_doc(entry_point, keyword, group):
    """An option added to a group reaches both entry points, their help() and their defaults."""
    parameters = inspect.signature(entry_point).parameters
    shown = pydoc.render_doc(VisualLayerDataset, renderer=pydoc.plaintext)
    assert parameters[keyword].default is None and f"{keyword}: " in shown
    for f in dataclasses.fields(group):
        assert f.name in parameters, f"{group.__name__}.{f.name} is not a keyword of {entry_point.__qualname__}"
        assert parameters[f.name].kind is inspect.Parameter.KEYWORD_ONLY
        assert parameters[f.name].default == f.default, f.name
        assert str(parameters[f.name]) in shown, f"help()'s signature lacks {parameters[f.name]}"
        assert f"{f.name}: {f.metadata['doc'][:40]}" in " ".join(shown.split()), f"help()'s docstring lacks {f.name}"


def test_option_groups_are_taken_whole_and_never_beside_their_own_keywords(tmp_path):
    folder = export_folder(tmp_path, [item(0, ["cat"]), item(1, ["dog"]), item(2, ["cat", "dog"])])
    grouped = VisualLayerDataset.from_export(
        folder,
        targets=TargetOptions(task="multilabel", classes=["dog", "cat"]),
        images=ImageOptions(image_size=8, decode="pil"),
    )
    single = VisualLayerDataset.from_export(
        folder, task="multilabel", classes=["dog", "cat"], image_size=8, decode="pil"
    )
    assert (grouped.task, grouped.classes, grouped.image_size) == ("multilabel", ["dog", "cat"], 8)
    assert grouped[2][1].tolist() == single[2][1].tolist() == [1.0, 1.0]
    assert grouped[0][0].size == single[0][0].size == (8, 8)
    with pytest.raises(errors.ConfigurationError, match="image_size"):
        VisualLayerDataset.from_export(folder, images=ImageOptions(), image_size=8)
    with pytest.raises(errors.ConfigurationError, match="targets must be a TargetOptions"):
        VisualLayerDataset.from_export(folder, targets={"task": None})
    with pytest.raises(TypeError, match="image_sise"):
        VisualLayerDataset.from_export(folder, image_sise=8)
    secret = ImageOptions(images_root="https://user:pw@host/images?sig=abc", storage_options={"key": "k"})
    assert "pw" not in repr(secret) and "sig" not in repr(secret) and "'k'" not in repr(secret)


def test_the_two_parts_of_a_dataset_work_on_their_own(tmp_path):
    folder = export_folder(tmp_path, [item(i, [("cat", "dog")[i % 2]]) for i in range(4)])
    ds = VisualLayerDataset.from_export(folder, task="classification", image_size=8)
    assert isinstance(ds.items, CuratedItems) and isinstance(ds.images, ImageReader)
    assert ds.items.target(1) == ds[1][1] and ds.items.classes == ds.classes
    reader = ImageReader(
        ImageOptions(image_size=16),
        items=ds.items,
        export_images=ds.export_dir / "images",
        entry=ds.entry,
        cache_dir=None,
    )
    assert reader.load(1).shape == (3, 16, 16)
    assert torch.equal(ds.images.load(1), ds[1][0])
    assert reader.location(1) == ds.image_path(1)


# -- the subset rule, applying a split --------------------------------------------------------


def test_subset_keeps_one_part_before_the_other_rules(tmp_path):
    write_dataset(tmp_path, "x", n_items=30, n_clusters=6)
    everything = VisualLayerDataset.from_export(tmp_path / "x", task=None)
    parts = leakage_safe_split(everything.table, {"train": 0.5, "test": 0.5}, seed=0)
    train = VisualLayerDataset.from_export(tmp_path / "x", subset=parts["train"], dedupe=True)
    summary = train.curation_summary()
    assert list(summary.removed_by)[:2] == ["subset", "dedupe"]
    assert summary.removed_by["subset"] == len(parts["test"])
    assert set(train.media_ids) <= set(parts["train"])
    details = train.curation_details()
    removed = dict(zip(details.column("media_id").to_pylist(), details.column("removed_by").to_pylist()))
    assert all(removed[m] == "subset" for m in parts["test"]), (
        "items outside the subset credited to another rule: "
        f"{[(m, removed[m]) for m in parts['test'] if removed[m] != 'subset']}"
    )


def test_subset_with_an_id_from_elsewhere_is_an_error_not_a_smaller_split(tmp_path):
    write_dataset(tmp_path, "x", n_items=6)
    with pytest.raises(CurationError, match="not-in-this-export"):
        VisualLayerDataset.from_export(tmp_path / "x", subset=["not-in-this-export"])
