"""Pack one share of a shared store: its images' pixels, from the node's prepared store, into shards.

The pixels are those the node-local store holds (``prepared``), read back through its checks (a
copy that fails its checksum is never packed), in the order of their keys, so the same images
always make the same shards and the same index. Each shard is written to a scratch file in the
node's prepared store (``PACKING``; a killed packer's is removed by the next one on the node) and
published whole before the next one starts, so a share never holds more than one shard on the local
disk; the share's index goes up after its shards, its share file after its index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from .prepared import PreparedStore
from .scratch_files import scratch_file
from .shard_format import SHARD_RECORD, index_name, shard_name, share_file
from .shared_location import SharedLocation, npy_bytes

PACKING = "packing"  # in the node's prepared store: the shards being filled, one per packer


@dataclass
class PackedShare:
    """What a share holds, as its shares/<share>.json says."""

    shards: list[dict[str, Any]] = field(default_factory=list)  # {"name": from the store's root, "bytes", "xxh3"}
    images: int = 0
    failed: list[str] = field(default_factory=list)  # the paths whose preparation failed
    bytes: int = 0
    build: str | None = None  # the build that made the share again, in its files' names; None: the first

    def as_json(self) -> dict[str, Any]:
        return {"shards": self.shards, "images": self.images, "failed": self.failed}


def pack_share(
    store: PreparedStore,
    share: str,
    images: list[tuple[tuple[int, int], str]],
    *,
    identity: Callable[[str], int],
    location: SharedLocation,
    shard_bytes: int,
    build: str | None = None,
) -> PackedShare:
    """Publish ``share``: ``images`` ((key, path) pairs, sorted by key) from ``store``, each the copy
    of its original as ``identity`` gives it (0: any copy), packed into shards of ~``shard_bytes``.
    ``build``: the build making a published share again, which names its new files (``shard_format``)."""
    packed, records = PackedShare(build=build), []
    with scratch_file(store.path / PACKING, ".pixels") as scratch:
        shard = _Shard(scratch)
        try:
            for key, path in images:
                found = store.get_with_source(path, source=identity(path))
                if found is None:  # its preparation failed: the shares say which, a reader prepares it itself
                    packed.failed.append(path)
                    continue
                pixels, source = found
                if shard.size and shard.size + pixels.nbytes > shard_bytes:
                    _publish(shard, share, packed, location)
                offset, digest = shard.append(pixels)
                records.append((*key, len(packed.shards), pixels.shape[0], pixels.shape[1], offset, source, digest))
                packed.images += 1
            if shard.size:
                _publish(shard, share, packed, location)
        finally:
            shard.close()
    location.write_bytes(index_name(share, build), npy_bytes(np.array(records, SHARD_RECORD)))
    location.write_json(share_file(share, build), packed.as_json())
    return packed


class _Shard:
    """The shard being filled, in a local file: its size and the xxh3 of its bytes so far."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._file = path.open("wb")
        self._digest = xxhash.xxh3_64()

    def append(self, pixels: np.ndarray) -> tuple[int, int]:
        """Add ``pixels``: (where they start, their own xxh3-64)."""
        data, offset = pixels.data.cast("B"), self.size
        self._file.write(data)
        self._digest.update(data)
        self.size += len(data)
        return offset, xxhash.xxh3_64_intdigest(data)

    def close(self) -> None:
        self._file.close()

    def publish(self, upload: Callable[[Path], None]) -> dict[str, Any]:
        """Upload what it holds (``upload`` of its local file), then start the next shard in the same
        file: its size and xxh3-64 (hex)."""
        self._file.close()
        upload(self.path)
        done = {"bytes": self.size, "xxh3": self._digest.hexdigest()}
        self.size, self._digest, self._file = 0, xxhash.xxh3_64(), self.path.open("wb")
        return done


def _publish(shard: _Shard, share: str, packed: PackedShare, location: SharedLocation) -> None:
    name = shard_name(share, len(packed.shards), packed.build)
    facts = shard.publish(lambda local: location.upload(local, name))
    packed.shards.append({"name": name, **facts})
    packed.bytes += facts["bytes"]
