"""Test helpers for code that uses vl_datasets: a local Visual Layer service and sample datasets.

with LocalVisualLayer(root) as vl:          # root written with write_dataset(root, "ds")
    vl.faults.fail_next("dataset", 503)     # faults are switched on server side
    ...                                     # point a client at vl.url
    assert vl.count("dataset", status=503) == 1

write_metadata_dataset(root, "big", 1_000_000) writes a large metadata-only dataset, streaming.
"""

from .server import LocalVisualLayer, RecordedRequest, write_dataset, write_metadata_dataset

__all__ = ["LocalVisualLayer", "RecordedRequest", "write_dataset", "write_metadata_dataset"]
