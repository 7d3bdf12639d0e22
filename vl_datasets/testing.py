"""Test helpers for code that uses vl_datasets: a local Visual Layer service and sample datasets."""

from .server import LocalVisualLayer, RecordedRequest, write_dataset

__all__ = ["LocalVisualLayer", "RecordedRequest", "write_dataset"]
