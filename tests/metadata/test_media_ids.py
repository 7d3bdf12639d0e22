"""MediaIds: a split's part behaves as the list of its ids, pickles small, and subset= takes it as it is."""

from __future__ import annotations

import hashlib
import operator
import pickle
import random
import uuid

import pyarrow as pa
import pytest

from vl_datasets import CacheMissError, ConfigurationError, CurationRules, MediaIds
from vl_datasets.metadata.item_list import list_settings

IDS = [f"m{i:03d}" for i in range(10)]


def test_it_reads_as_the_list_of_its_ids():
    ids = MediaIds(pa.chunked_array([IDS[:4], IDS[4:]]))
    assert len(ids) == 10 and list(ids) == IDS and ids.to_pylist() == IDS
    assert ids[0] == "m000" and ids[-1] == "m009" and ids[7] == IDS[7]
    assert ids[2:5] == IDS[2:5] and ids[::3] == IDS[::3] and ids[8:2] == []
    assert isinstance(ids[2:5], MediaIds)
    assert "m004" in ids and "m010" not in ids and 4 not in ids
    assert ids.index("m006") == 6 and ids.count("m001") == 1
    assert sorted(ids, reverse=True) == sorted(IDS, reverse=True)
    with pytest.raises(IndexError, match="out of range"):
        ids[10]
    assert "10 ids" in repr(ids) and "'m000'" in repr(ids)


def test_it_equals_a_list_or_tuple_of_the_same_ids_and_nothing_else():
    ids = MediaIds(IDS)
    assert (
        ids == IDS and operator.eq(IDS, ids) and ids == tuple(IDS) and ids == MediaIds(pa.array(IDS, pa.large_string()))
    )
    assert ids != IDS[:-1] and ids != [*IDS[:-1], "other"] and ids != MediaIds(IDS[::-1]) and ids != "m000"
    assert {"train": ids} == {"train": list(IDS)}
    with pytest.raises(TypeError):
        hash(ids)  # equal to a list, so no hash


def test_adding_gives_a_list_or_another_part_as_lists_do():
    first, second = MediaIds(IDS[:3]), MediaIds(IDS[3:])
    assert first + second == IDS and isinstance(first + second, MediaIds)
    assert operator.add(first, ["x"]) == [*IDS[:3], "x"] and operator.add(["x"], first) == ["x", *IDS[:3]]


def test_it_refuses_what_is_not_a_string_id():
    with pytest.raises(ConfigurationError, match="null"):
        MediaIds(pa.array(["a", None]))
    with pytest.raises(ConfigurationError, match="strings"):
        MediaIds(pa.array([1, 2]))
    with pytest.raises(ConfigurationError, match="strings only"):
        MediaIds(["a", 2])
    with pytest.raises(ConfigurationError, match="collection of strings"):
        MediaIds("abc")


def test_it_pickles_as_its_arrow_bytes_or_as_the_path_of_its_file(tmp_path):
    many = MediaIds([str(uuid.UUID(int=random.Random(i).getrandbits(128))) for i in range(100_000)])
    blob = pickle.dumps(many)
    assert pickle.loads(blob) == many
    # A list of these ids pickles in 3.9 MB (39 bytes an id); compressed Arrow bytes take about half.
    assert len(blob) < 0.75 * len(pickle.dumps(list(many)))
    assert pickle.loads(pickle.dumps(many[10:20])) == list(many)[10:20]
    many.write(tmp_path / "part.arrow")
    mapped = MediaIds.read(tmp_path / "part.arrow")
    assert mapped == many and len(pickle.dumps(mapped)) < 1024
    assert pickle.loads(pickle.dumps(mapped)) == many
    (tmp_path / "part.arrow").unlink()
    with pytest.raises(CacheMissError, match=r"part\.arrow"):
        pickle.loads(pickle.dumps(mapped))


def test_its_set_digest_names_the_set_of_its_ids_whatever_their_order_and_repeats():
    ids = ["b", "a", "é", "b", "ab", "z"]
    digest = MediaIds(ids).set_digest()
    assert MediaIds(sorted(set(ids))).set_digest() == digest
    assert MediaIds(pa.chunked_array([pa.array(ids[3:]), pa.array(ids[:3])])).set_digest() == digest
    assert MediaIds([*ids, "c"]).set_digest() != digest
    assert MediaIds(ids[1:]).set_digest() == digest  # "b" is there twice
    assert MediaIds(ids[2:]).set_digest() != digest
    assert MediaIds([]).set_digest() == hashlib.sha256(b"").hexdigest()


def test_subset_takes_it_as_it_is_and_names_the_same_list_as_the_ids_in_a_list():
    part = MediaIds(IDS[::-1])
    rules = CurationRules(subset=part, min_uniqueness=0.3)
    assert rules.subset is part
    as_list = CurationRules(subset=IDS[::-1], min_uniqueness=0.3)
    assert rules == as_list
    settings = {"task": None, "classes": None, "invalid_labels": "raise", "missing_images": "raise", "own_root": False}
    assert list_settings(rules, **settings) == list_settings(as_list, **settings)
