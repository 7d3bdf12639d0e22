"""What an original in object storage is (its ETag), learnt without a request of its own.

A prepared copy records its original's identity (``sources.WithIdentity``), so a replaced original
is prepared again. Asked one object at a time, that is a HEAD per image: twice the requests of the
GET itself, and on S3 twice the bill. Two ways around it:

- an image read to be prepared takes its identity from its own GET's response (``s3_get``,
  ``http_get``): an image never prepared costs that one request;
- ``prepare()`` compares the copies there are with their originals through listings of their
  folders (``ListedIdentities``): one request per 1,000 objects on S3 (``ListObjectsV2``), each
  folder listed once per process and job, so a replaced original is seen by the next ``prepare()``.

The identity is the same digest either way (``info_identity``), so a copy recorded from a HEAD,
a GET or a listing stands for the same original.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import xxhash

LISTED_PROTOCOLS = ("s3", "s3a", "gs", "gcs")  # listings that carry each object's ETag (or md5Hash)


def identity_of(*facts: object) -> int:
    """The identity digest of an original described by ``facts``: never 0, which means unknown."""
    return xxhash.xxh3_64_intdigest("\0".join(map(str, facts)).encode("utf-8", "surrogatepass")) or 1


def info_identity(info: Mapping[str, Any]) -> int:
    """The identity of an object described by fsspec's ``info`` or a listing entry: its ETag (or
    md5Hash), else its size and modification time."""
    lower = {str(name).lower(): value for name, value in info.items()}
    etag = lower.get("etag") or lower.get("md5hash")
    if etag:
        return identity_of(etag)
    dates = ("lastmodified", "mtime", "updated", "last_modified")
    modified = next((lower[name] for name in dates if name in lower), "")
    return identity_of(info.get("size"), modified)


# Reads of one object that keep what its response says of it, which ``cat_file`` drops: they follow
# s3fs's and fsspec's own ``_cat_file`` (the fsspec versions are pinned in pyproject.toml). A
# missing object raises ``FileNotFoundError``, as ``cat_file`` does. None for the identity: the
# response cannot tell it as a look-up would (a compressed answer has no size).


async def s3_get(fs: Any, url: str) -> tuple[bytes, int | None]:
    """An S3 object's bytes and identity (its ETag), from one GET."""
    bucket, key, version = fs.split_path(url)
    response = await fs._call_s3("get_object", Bucket=bucket, Key=key, **({"VersionId": version} if version else {}))
    try:
        data = await response["Body"].read()
    finally:
        response["Body"].close()
    return data, info_identity({"ETag": response["ETag"]}) if response.get("ETag") else None


async def http_get(fs: Any, url: str) -> tuple[bytes, int | None]:
    """An http(s) object's bytes and identity, from one GET: the fields fsspec's ``info`` takes
    from a HEAD (``_file_info``), taken from the GET's headers."""
    session = await fs.set_session()
    async with session.get(fs.encode_url(url), **fs.kwargs) as response:
        data = await response.read()
        fs._raise_not_found_for_status(response, url)
        headers = response.headers
    if headers.get("Content-Encoding", "identity") not in ("identity", "") or "Content-Length" not in headers:
        return data, None
    info: dict[str, Any] = {"size": int(headers["Content-Length"])}
    info.update(
        {name: headers[name] for name in ("ETag", "Content-MD5", "Digest", "Last-Modified") if headers.get(name)}
    )
    return data, info_identity(info)


GETS_WITH_IDENTITY = {"s3": s3_get, "s3a": s3_get, "http": http_get, "https": http_get}


class ListedIdentities:
    """Identities of images under a root, from one listing of each folder they are in.

    ``list_folder(folder)`` returns ``{name: identity}`` of the objects directly in ``folder`` (a
    path under the root, "" for the root itself). A name the listing lacks is gone: identity 0.
    Held for one job in one process: a later job lists again and sees replaced originals.
    """

    def __init__(self, list_folder: Callable[[str], dict[str, int]]) -> None:
        self._list_folder = list_folder
        self._folders: dict[str, dict[str, int]] = {}

    def identities(self, paths: Sequence[str]) -> list[int]:
        found = []
        for path in paths:
            folder, name = posixpath.split(path.replace("\\", "/").lstrip("/"))
            if folder not in self._folders:
                self._folders[folder] = self._list_folder(folder)
            found.append(self._folders[folder].get(name, 0))
        return found
