"""A local Visual Layer service implementing the export API contract over real HTTP.

It shares only the contract with the client, never its code, so each checks the other.
"""

from .datasets import write_dataset
from .http import RecordedRequest
from .service import LocalVisualLayer, serve

__all__ = ["LocalVisualLayer", "RecordedRequest", "serve", "write_dataset"]
