"""Which file of an export is each row's image (contract §5): preferences, ambiguity, missing images."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from tests.metadata.helpers import BARE, VIDEO_A, VIDEO_B, items
from vl_datasets import VisualLayerDataset
from vl_datasets.errors import ConfigurationError, ImageNotFoundError
from vl_datasets.metadata.image_paths import resolve_image_paths
from vl_datasets.metadata.normalize import normalize
from vl_datasets.testing import write_dataset


def _resolve(members, **kwargs):
    return resolve_image_paths(normalize(items()), members, **kwargs).to_pylist()


def test_resolution_prefers_file_path_then_file_name():
    members = [
        "images/train/cat/cat_01.jpg",
        "images/cat_01.jpg",
        "images/videos/a.mp4/output_000001.jpg",
        "images/videos/b.mp4/output_000001.jpg",
        "images/bare.png",
    ]
    assert _resolve(members) == members[:1] + members[2:]
    assert _resolve(members[1:])[0] == "images/cat_01.jpg"


def test_resolution_by_unique_base_name_and_by_media_id():
    members = [
        "images/elsewhere/cat_01.jpg",
        "images/videos/a.mp4/output_000001.jpg",
        "images/videos/b.mp4/output_000001.jpg",
        f"images/{BARE}.PNG",
        "metadata.json",
    ]
    assert _resolve(members) == [members[0], members[1], members[2], members[3]]


@pytest.mark.parametrize("extension", ["heic", "AVIF", "jp2"])
def test_an_image_named_by_its_media_id_in_a_phones_format_is_found(extension):
    """Only nine web formats were looked for: a HEIC named by its media id was a missing image."""
    members = [f"images/{BARE}.{extension}", f"images/{BARE}.json"]
    assert _resolve(members, on_missing="null")[3] == members[0]


def test_root_relative_paths_that_already_start_with_images():
    table = normalize(
        [
            {"media_id": "m1", "file_name": "images/x/a.jpg"},
            {"media_id": "m2", "file_path": "images/y/b.jpg", "file_name": "b.jpg"},
        ]
    )
    assert resolve_image_paths(table, ["images/x/a.jpg", "images/y/b.jpg", "images/z/b.jpg"]).to_pylist() == [
        "images/x/a.jpg",
        "images/y/b.jpg",
    ]


def test_ambiguous_file_name_names_media_id_and_candidates():
    members = [
        "images/train/cat/cat_01.jpg",
        "images/videos/a.mp4/output_000001.jpg",
        "images/x/output_000001.jpg",
        "images/y/output_000001.jpg",
        "images/bare.png",
    ]
    with pytest.raises(ImageNotFoundError) as caught:
        _resolve(members, on_missing="null")  # ambiguity is never dropped silently
    assert caught.value.media_id == VIDEO_B
    assert "images/x/output_000001.jpg" in str(caught.value)
    assert "images/y/output_000001.jpg" in str(caught.value)


def test_one_file_for_two_rows_of_the_same_name_is_ambiguous():
    media = items()
    media[1]["file_path"] = "videos/c.mp4/output_000001.jpg"
    members = ["images/train/cat/cat_01.jpg", "images/x/output_000001.jpg", "images/bare.png"]
    with pytest.raises(ImageNotFoundError, match="shared by 2 row"):
        resolve_image_paths(normalize(media), members)


@pytest.mark.parametrize(
    "spelled",
    [
        "videos/a.mp4/output_000001.jpg",
        "videos\\a.mp4\\output_000001.jpg",
        "./videos/a.mp4/output_000001.jpg",
        "videos//a.mp4/output_000001.jpg",
        "videos/./a.mp4/output_000001.jpg",
    ],
)
def test_one_file_two_rows_name_by_file_path_is_ambiguous(spelled):
    """Two rows whose file_path names one file, however spelled, neither take it, whatever on_missing."""
    media = items()
    media[2]["file_path"] = spelled  # VIDEO_B's now names VIDEO_A's file
    members = ["images/train/cat/cat_01.jpg", "images/videos/a.mp4/output_000001.jpg", "images/bare.png"]
    for on_missing in ("raise", "null"):
        with pytest.raises(ImageNotFoundError, match=f"media_id '{VIDEO_A}'.*media_id '{VIDEO_B}' names too") as caught:
            resolve_image_paths(normalize(media), members, on_missing=on_missing)
        assert caught.value.media_id == VIDEO_A


def test_one_file_two_rows_name_is_nobody_s_even_where_a_later_step_settles_them():
    """The file neither row may have is given to no row by a later step either, and a row that a
    file of its own settles (by its media_id) is not refused for it."""
    media = items()
    media[2]["file_path"] = media[1]["file_path"]
    media[2]["file_name"] = "elsewhere.jpg"
    members = [
        "images/train/cat/cat_01.jpg",
        "images/videos/a.mp4/output_000001.jpg",
        f"images/{VIDEO_A}.jpg",
        f"images/{VIDEO_B}.jpg",
        "images/bare.png",
    ]
    assert resolve_image_paths(normalize(media), members).to_pylist()[1:3] == [
        f"images/{VIDEO_A}.jpg",
        f"images/{VIDEO_B}.jpg",
    ]


def test_a_name_two_files_carry_once_a_backslash_is_a_separator_is_ambiguous():
    """A folder on Linux may hold ``a.mp4\\output_000001.jpg`` beside ``a.mp4/output_000001.jpg``:
    both are ``images/videos/a.mp4/output_000001.jpg`` here, and no row is given either."""
    members = [
        "images/train/cat/cat_01.jpg",
        "images/videos/a.mp4/output_000001.jpg",
        "images/videos/a.mp4\\output_000001.jpg",
        "images/videos/b.mp4/output_000001.jpg",
        "images/bare.png",
    ]
    with pytest.raises(ImageNotFoundError, match="several files of the export") as caught:
        _resolve(members, on_missing="null")
    assert caught.value.media_id == VIDEO_A


def test_export_laid_out_by_file_name_never_gives_two_rows_one_image():
    members = ["images/cat_01.jpg", "images/output_000001.jpg", "images/bare.png"]
    with pytest.raises(ImageNotFoundError, match=r"output_000001\.jpg") as caught:
        _resolve(members, on_missing="null")
    assert caught.value.media_id in (VIDEO_A, VIDEO_B)


def test_ambiguous_name_settled_by_media_id():
    members = [
        "images/train/cat/cat_01.jpg",
        "images/videos/a.mp4/output_000001.jpg",
        "images/x/output_000001.jpg",
        "images/y/output_000001.jpg",
        f"images/{VIDEO_B}.jpg",
        "images/bare.png",
    ]
    assert _resolve(members)[2] == f"images/{VIDEO_B}.jpg"


def test_a_file_named_by_media_id_in_a_folder_settles_an_ambiguous_name():
    members = [
        "images/train/cat/cat_01.jpg",
        "images/videos/a.mp4/output_000001.jpg",
        "images/x/output_000001.jpg",
        "images/y/output_000001.jpg",
        f"images/videos/b.mp4/{VIDEO_B}.jpg",
        "images/bare.png",
    ]
    assert _resolve(members)[2] == f"images/videos/b.mp4/{VIDEO_B}.jpg"
    twice = [*members, f"images/elsewhere/{VIDEO_B}.jpeg"]
    with pytest.raises(ImageNotFoundError, match=VIDEO_B):  # two files named by one id settle nothing
        _resolve(twice, on_missing="null")
    top = [*twice, f"images/{VIDEO_B}.jpg"]  # in images/ itself: the image, a thumbnail folder no rival
    assert _resolve(top)[2] == f"images/{VIDEO_B}.jpg"


def test_an_ambiguous_name_whose_file_another_row_took_names_that_file():
    table = normalize([{"media_id": "a", "file_path": "ok.jpg"}, {"media_id": "b", "file_path": "sub/../ok.jpg"}])
    with pytest.raises(ImageNotFoundError, match=r"'b'.*shared by 2 row\(s\), matches 1 file\(s\): images/ok\.jpg"):
        resolve_image_paths(table, ["images/ok.jpg"])


def test_missing_image_raises_or_is_null():
    members = ["images/train/cat/cat_01.jpg", "images/videos/a.mp4/output_000001.jpg", "images/bare.png"]
    with pytest.raises(ImageNotFoundError) as caught:
        _resolve(members)
    assert caught.value.media_id == VIDEO_B
    assert VIDEO_B in str(caught.value)
    assert _resolve(members, on_missing="null") == [members[0], members[1], None, members[2]]
    assert _resolve([], on_missing="null") == [None] * 4
    with pytest.raises(ConfigurationError):
        _resolve(members, on_missing="skip")


def test_resolution_accepts_arrow_members_and_backslashes():
    members = pa.array(
        [
            "images\\train\\cat\\cat_01.jpg",
            "images/videos/a.mp4/output_000001.jpg",
            "images/videos/b.mp4/output_000001.jpg",
            "images/bare.png",
        ]
    )
    assert _resolve(members)[0] == "images\\train\\cat\\cat_01.jpg", "not the file as it is named"
    assert _resolve(pa.array(["images/train\\cat/cat_01.jpg", *members.to_pylist()[1:]]))[0] == (
        "images/train\\cat/cat_01.jpg"
    )


@pytest.mark.skipif(os.sep != "/", reason="a backslash is part of a file's name only where it separates no folders")
@pytest.mark.parametrize("lookup", ["exact paths", "all the rows"])
def test_a_file_named_with_a_backslash_is_found_and_read_by_its_own_name(tmp_path, lookup):
    """An export unpacked on Linux may hold a file literally named ``images/sub\\x.jpg``: the row
    whose file_path says ``sub\\x.jpg`` finds it (a backslash read as a folder separator), and then
    reads that file, not ``images/sub/x.jpg``. Every row found by its exact path, or a row found by
    its file name making the lookup take all the rows at once."""
    media = [
        {"media_id": f"m-{i}", "file_path": path, "file_name": path.rsplit("/", 1)[-1], "width": 8, "height": 6}
        for i, path in enumerate(["sub\\x.jpg", "y.jpg", "gone/z.jpg"])
    ]
    export = write_dataset(tmp_path, "backslash", media_items=media)
    assert (export / "images" / "sub\\x.jpg").is_file()
    if lookup == "all the rows":
        (export / "images" / "gone" / "z.jpg").rename(export / "images" / "z.jpg")
    ds = VisualLayerDataset.from_export(export, task=None, cache_dir=tmp_path / "cache")
    assert ds.image_path(0) == str(export / "images" / "sub\\x.jpg")
    assert [ds[i][0].shape for i in range(3)] == [ds[1][0].shape] * 3, "an image was not read"


def test_image_filename_beside_file_path_names_the_flat_image():
    import pyarrow as pa

    from vl_datasets.metadata.normalize import normalize

    # The docs' parquet layout: file_path is where the image lives in the source, image_filename
    # where it lies in the export; names that repeat were made unique in a way no rule could guess.
    raw = pa.table(
        {
            "media_id": ["a", "b", "c"],
            "file_path": ["videos/1/frame.jpg", "videos/2/frame.jpg", "cats/x.jpg"],
            "image_filename": ["frame.jpg", "frame_1.jpg", "x.jpg"],
        }
    )
    table = normalize(raw)
    assert table.column("file_path").to_pylist()[0] == "videos/1/frame.jpg", "file_path must stay as exported"
    members = ["images/frame.jpg", "images/frame_1.jpg", "images/x.jpg"]
    assert resolve_image_paths(table, members).to_pylist() == members, "image_filename should name each image"


def _table(**columns):
    names = columns["file_path"]
    base = {"media_id": [f"m{i}" for i in range(len(names))], "file_name": [p.rsplit("/", 1)[-1] for p in names]}
    return normalize(pa.table({**base, **columns}))


def test_an_image_filename_two_rows_give_is_neither_s_and_their_file_paths_decide():
    # Each row's own folder holds its image; the flat name both give is a file too (row m1's).
    table = _table(file_path=["cats/x.jpg", "x.jpg"], image_filename=["x.jpg", "x.jpg"])
    assert resolve_image_paths(table, ["images/cats/x.jpg", "images/x.jpg"]).to_pylist() == [
        "images/cats/x.jpg",
        "images/x.jpg",
    ]
    # Frames of two videos named alike, one file of that name: never one row's image silently.
    frames = _table(
        file_path=["v1/output_000001.jpg", "v2/output_000001.jpg"], image_filename=["output_000001.jpg"] * 2
    )
    with pytest.raises(ImageNotFoundError, match="ambiguous"):
        resolve_image_paths(frames, ["images/output_000001.jpg"], on_missing="null")


def test_a_frame_missing_from_its_video_is_not_a_frame_of_that_name_in_another():
    table = _table(file_path=["v1/output_000001.jpg", "v2/output_000001.jpg", "v3/output_000001.jpg"])
    own = ["images/v1/output_000001.jpg", "images/v2/output_000001.jpg"]
    # v3's frame is missing; the files of its name are the other rows' own: it has no image, which
    # is no ambiguity (that would refuse the whole export, whatever missing_images says).
    assert resolve_image_paths(table, own, on_missing="null").to_pylist() == [*own, None]
    with pytest.raises(ImageNotFoundError, match="No image in the export for media_id 'm2'"):
        resolve_image_paths(table, own)
    # One more file of that name, no row's own (another video's, a thumbnail): no more v3's than
    # the others are: v3 has no image, never one picked for it.
    more = [*own, "images/v9/output_000001.jpg"]
    assert resolve_image_paths(table, more, on_missing="null").to_pylist() == [*own, None]
