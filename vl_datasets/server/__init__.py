"""A local Visual Layer service implementing the export API contract over real HTTP.

It shares only the contract (docs/API contract) with the client, never its code, so each
checks the other. Modules, in the order a request travels:

    service    LocalVisualLayer: both origins in threads; foreground: serve() until a signal
    api        the API origin (dataset, snapshots, export start, export status, /cdn redirect)
    validation query and body parsing with FastAPI's rules and pydantic's 422 entries
    tokens     bearer-token checks (cloud mode)
    datasets   the dataset folders it serves; synthetic, synthetic_bulk: datasets to serve
    metadata_stream  metadata.json item by item; columnar: its columnar form; indexes: where
               that lives and its build in the background
    jobs       export tasks and their deterministic progress; selection: the rows of an export
    archive    the ZIPs, streamed; image_names: a Parquet export's image_filename
    signing    presigned URLs; storage: the S3-like download origin
    faults     failures switched on from Python; log: what was received
    handler    what both origins share at the HTTP level
"""

from .foreground import serve
from .log import RecordedRequest
from .service import LocalVisualLayer
from .synthetic import write_dataset
from .synthetic_bulk import write_metadata_dataset

__all__ = ["LocalVisualLayer", "RecordedRequest", "serve", "write_dataset", "write_metadata_dataset"]
