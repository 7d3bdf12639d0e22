"""The error families a caller catches as groups, and errors that keep their fields across pickling."""

from __future__ import annotations

import pickle

import pytest

from vl_datasets import errors
from vl_datasets.errors import SchemaError


def test_error_families_group_the_leaves():
    families = {
        errors.APIError: [errors.AuthenticationError, errors.APITimeoutError, errors.ResponseValidationError],
        errors.ExportError: [errors.ExportFailedError, errors.InsufficientDiskSpaceError],
        errors.CacheError: [errors.CacheMissError, errors.CorruptArchiveError, errors.LockTimeoutError],
        errors.DataError: [errors.SchemaError, errors.ImageDecodeError, errors.CurationError],
    }
    for family, leaves in families.items():
        for leaf in leaves:
            assert issubclass(leaf, family), f"{leaf.__name__} is not caught by {family.__name__}"
    # Each leaf keeps its keyword fields across pickling, as DataLoader workers need.
    error = errors.ImageDecodeError("bad", media_id="m1", path="/x.jpg")
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), str(again), again.media_id, again.path) == (errors.ImageDecodeError, "bad", "m1", "/x.jpg")
    with pytest.raises(TypeError):
        errors.ImageDecodeError("bad", media=1)  # keywords are explicit: a misspelt one is refused


def test_schema_error_pickles_with_its_field():
    import pickle

    error = pickle.loads(pickle.dumps(SchemaError("boom", field="media_id")))
    assert (str(error), error.field) == ("boom", "media_id")
