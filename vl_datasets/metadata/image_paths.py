"""Which file of an export is each row's image (contract §5), vectorized over the whole table.

An index built a slice at a time first tries the exact paths alone (``ExactPaths``): a row whose
``images/<image_filename>`` or ``images/<file_path>`` is a file has that image whatever the other
rows are, so when every row has one, no step needs all the rows at once.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigurationError, ImageNotFoundError
from .json_depth import text_bytes
from .normalize import basename
from .unique_ids import hash_strings

# What ``<media_id>.<ext>`` may end with (contract §5, step 4): the formats cameras, phones and the
# web save in, HEIC and AVIF among them, not any suffix (a sidecar <media_id>.json is no image).
IMAGE_EXTENSIONS = (
    "jpg", "jpeg", "jpe", "jfif", "png", "apng", "bmp", "gif", "webp", "tif", "tiff",
    "heic", "heif", "avif", "jp2", "j2k", "jxl", "qoi", "tga", "ppm", "pgm", "pbm", "pnm",
)  # fmt: skip


def resolve_image_paths(table: pa.Table, member_names: Iterable[str], *, on_missing: str = "raise") -> pa.Array:
    """Each row's image as a path inside the export (e.g. ``images/train/cat/x.jpg``, one of
    ``member_names`` as given, where a backslash is read as a folder separator), contract §5:

    0. ``images/<image_filename>``, where the export has that column beside ``file_path`` (the
       docs' parquet layout: every image in one flat folder, named by that column);
    1. ``images/<file_path>`` (then ``<file_path>`` itself if it already starts with ``images/``);
    2. ``images/<file_name>`` (then ``<file_name>`` if it starts with ``images/``);
    3. the one member whose base name is the file name's base name;
    4. ``images/<media_id>.<ext>`` for an image extension, then such a file alone in any folder under it.

    No step hands one file to two rows: an image_filename several rows give is left to the other
    steps, and a file another row has by its exact path settles no other (a row whose only
    candidates are such files has no image). A file several rows name by their file_path
    (``x/a.jpg``, ``x\\a.jpg``, ``./x/a.jpg``, ...), or a name several files carry once a backslash
    is a folder separator, is no row's: a row that named one and that no later step settles (with
    another file) is ambiguous. Step 3 takes a base name only where no other file
    of the export carries it, else the row has none there. A file name that several files no
    row has, or several rows, share, and that no other step settles, raises
    ``ImageNotFoundError`` naming the media_id and the candidates, whatever ``on_missing`` says (an
    ambiguous name is never resolved silently). A row with no image raises ``ImageNotFoundError``
    (``on_missing="raise"``) or gets null (``"null"``), so the caller can drop it. ``table`` is a
    normalized table; ``member_names`` are the export's files relative to its root (a ZIP's names,
    or paths under the extracted folder).
    """
    if on_missing not in ("raise", "null"):
        raise ConfigurationError(f"on_missing must be 'raise' or 'null', not {on_missing!r}.")
    names, members = _member_array(member_names)
    folded = members is not names  # a backslash was read as a folder separator
    every_member = members
    if not len(members):  # a metadata-only export: no row has an image, and no lookup can find one
        return _none_found(table, on_missing)
    media_id = table.column("media_id").combine_chunks()
    file_path = _member_form(table.column("file_path").combine_chunks())
    file_name = table.column("file_name").combine_chunks()
    flat = taken = None
    if "image_filename" in table.column_names:  # it names the image inside the export: it comes first
        flat = _exact(_member_in_images(table.column("image_filename").combine_chunks()), members)
        # A flat name several rows give is none of theirs (one file, or frames named alike): those
        # rows are left to their file_path and the later steps, which never share a file either.
        flat = pc.if_else(_repeated(flat, pc.drop_null(flat)), _NO_STRING, flat)
    at = pc.index_in(_in_images(file_path), value_set=members)  # step 1, as positions among members
    by_path = members.take(at)
    contested, claimed = _contested(at, by_path, flat, members, folded)
    if contested is not None:  # the rare export where two rows name one file: none of them has it
        flat = None if flat is None else pc.if_else(pc.is_in(flat, value_set=contested), _NO_STRING, flat)
        by_path = pc.if_else(pc.is_in(by_path, value_set=contested), _NO_STRING, by_path)
        members = members.filter(pc.invert(pc.is_in(members, value_set=contested)))
    resolved, ambiguous = _exact_steps(by_path, file_path, file_name, members)
    if flat is not None:
        # Steps 0 and 1 look in one folder: a row whose own flat image is missing must not take,
        # by its file_path, the image another row names (an ambiguity, as in steps 2-3).
        taken = pc.and_(pc.is_null(flat), pc.fill_null(pc.is_in(resolved, value_set=pc.drop_null(flat)), False))
        resolved = pc.coalesce(flat, pc.if_else(taken, _NO_STRING, resolved))
        ambiguous = pc.or_(ambiguous, taken)
    pending = pc.indices_nonzero(pc.is_null(resolved))
    if len(pending):  # steps 3 and 4 only for the rows the exact paths left: usually none
        # A member another row found by its exact path is that row's image, whatever its name.
        bases = basename(file_name.take(pending))
        shared = _repeated(bases, basename(every_member))  # by files other rows have, or no row may have, too
        members = members.filter(pc.invert(pc.is_in(members, value_set=pc.drop_null(resolved))))
        member_base = basename(members)
        by_base, base_ambiguous = _unique_match(bases, member_base, members)
        # The one file of that name no row has is no more this row's than the others of that name
        # (a frame missing from one video is not one of another video; a thumbnail is no original):
        # the row has no image there, which missing_images decides on, never an image picked.
        by_base = pc.if_else(shared, _NO_STRING, by_base)
        ids = media_id.take(pending)
        by_id, id_ambiguous = _unique_match(ids, _media_id_stems(members, member_base, nested=False), members)
        # In images/ itself first (a thumbnail folder beside it is no rival), then in any folder.
        nested, nested_ambiguous = _unique_match(ids, _media_id_stems(members, member_base, nested=True), members)
        id_ambiguous = pc.or_(id_ambiguous, pc.and_(pc.is_null(by_id), nested_ambiguous))
        by_id = pc.coalesce(by_id, nested)
        resolved = _scatter(resolved, pending, pc.coalesce(by_base, by_id))
        ambiguous = _scatter(ambiguous, pending, pc.or_(ambiguous.take(pending), pc.or_(base_ambiguous, id_ambiguous)))
    unresolved = pc.is_null(resolved)
    ambiguous = pc.and_(unresolved, ambiguous)
    if taken is not None and pc.any(pc.and_(unresolved, taken)).as_py():
        _raise_taken(table, pc.index(pc.and_(unresolved, taken), True).as_py())
    if claimed is not None and pc.any(pc.and_(unresolved, pc.is_valid(claimed))).as_py():
        _raise_contested(table, pc.index(pc.and_(unresolved, pc.is_valid(claimed)), True).as_py(), claimed)
    if pc.any(ambiguous).as_py():
        row = pc.index(ambiguous, True).as_py()
        # Every file of that name, those other rows took by their exact path too: the message's candidates.
        _raise_ambiguous(media_id[row].as_py(), file_name[row].as_py(), every_member, file_name)
    if on_missing == "raise" and pc.any(unresolved).as_py():
        row = pc.index(unresolved, True).as_py()
        raise _no_image(table, row, pc.sum(unresolved).as_py())
    # Each file as it is named (a folder on Linux may hold ``sub\\x.jpg``): no name several files
    # carry once folded is any row's, so the first file of a folded name is the one.
    return names.take(pc.index_in(resolved, value_set=every_member)) if folded else resolved


_NO_STRING = pa.nulls(1, pa.string())[0]  # pa.scalar(None, ...) would import pandas (0.2 s) at every start


class ExactPaths:
    """The export's files, and each row's among them by steps 0 and 1 of ``resolve_image_paths``
    alone (``images/<image_filename>``, then ``images/<file_path>``), a slice of rows at a time.

    Those steps look at a row's own values, and a row they settle keeps that image whatever the
    other rows hold (the later steps only settle the rows these leave, and only those can be
    ambiguous), unless they hand two rows one file (two file_paths spelled alike or otherwise,
    or step 1 the file another row names by step 0): when they settle every row of an export,
    each with a file of its own, the images are theirs, found in memory bounded by a slice. The
    files are looked up by 64-bit hashes of their names, sorted once (16 bytes a file), where a
    hash table per slice (``pc.is_in``) would hash every file again for each; a hash found is
    checked against the name itself.
    """

    def __init__(self, member_names: Iterable[str]) -> None:
        self.names, self.members = _member_array(member_names)  # as named, and as compared (``_member_array``)
        hashes = hash_strings(self.members)
        self._order = np.argsort(hashes)
        self._sorted = hashes[self._order]
        # The first of each run of equal hashes: the position a name of that hash is found at.
        runs = np.flatnonzero(self._sorted[1:] == self._sorted[:-1])
        self._doubled = self._order[runs] if len(runs) else None

    def found(self, table: pa.Table) -> np.ndarray:
        """Each row's image, as its position among ``members`` (-1 where neither step finds one)."""
        found = self._positions(_member_in_images(table.column("file_path").combine_chunks()))
        if "image_filename" in table.column_names:  # it names the image inside the export: it comes first
            flat = self._positions(_member_in_images(table.column("image_filename").combine_chunks()))
            found = np.where(flat >= 0, flat, found)
        return found

    def doubled(self, found: np.ndarray) -> bool:
        """Whether one of the positions ``found`` is a file whose name another file carries too (a
        folder on Linux may hold ``x\\a.jpg`` beside ``x/a.jpg``, both ``images/x/a.jpg`` here),
        or whose hash another name has: the lookup over all the rows tells those apart."""
        if self._doubled is None:
            return False
        return bool(np.isin(found, self._doubled).any())

    def _positions(self, candidates: pa.Array) -> np.ndarray:
        positions = np.full(len(candidates), -1, dtype=np.int64)
        rows = np.flatnonzero(pc.is_valid(candidates).to_numpy(zero_copy_only=False))
        if not len(rows) or not len(self._sorted):
            return positions
        wanted = candidates.take(pa.array(rows))
        hashes = hash_strings(wanted)
        at = np.minimum(np.searchsorted(self._sorted, hashes), len(self._sorted) - 1)
        hit = np.flatnonzero(self._sorted[at] == hashes)
        members = self._order[at[hit]]
        same = pc.equal(wanted.take(pa.array(hit)), self.members.take(pa.array(members)))
        same = pc.fill_null(same, False).to_numpy(zero_copy_only=False)
        positions[rows[hit[same]]] = members[same]
        return positions


def _none_found(table: pa.Table, on_missing: str) -> pa.Array:
    if on_missing == "raise" and table.num_rows:
        raise _no_image(table, 0, len(table))
    return pa.nulls(table.num_rows, pa.string())


def _no_image(table: pa.Table, row: int, count: int) -> ImageNotFoundError:
    """The error for ``count`` rows without an image, naming the first, at ``row``."""
    media_id, file_path, file_name = (
        table.column(name)[row].as_py() for name in ("media_id", "file_path", "file_name")
    )
    return ImageNotFoundError(
        f"No image in the export for media_id {media_id!r} (file_path {file_path!r}, file_name {file_name!r}); "
        f"{count} row(s) have none. Export with include_images=true, or pass on_missing='null' to drop them.",
        media_id=media_id,
    )


def _member_array(member_names: Iterable[str]) -> tuple[pa.Array, pa.Array]:
    """The names as an array, and as the lookup compares them: each backslash a folder separator
    (the same array where no name has one: only then can two of a folder's names be one)."""
    if isinstance(member_names, pa.ChunkedArray):
        members = member_names.combine_chunks()
    elif isinstance(member_names, pa.Array):
        members = member_names
    else:
        members = pa.array(list(member_names), pa.string())
    names = members.cast(pa.string())
    names = pc.drop_null(names) if names.null_count else names
    if pc.any(pc.match_substring(names, "\\")).as_py():  # a copy of every name only where one needs it
        return names, pc.replace_substring(names, "\\", "/")
    return names, names


def _exact_steps(
    by_path: pa.Array, file_path: pa.Array, file_name: pa.Array, members: pa.Array
) -> tuple[pa.Array, pa.Array]:
    """Steps 1 and 2: ``images/<file_path>`` for every row (``by_path``, found among ``members``;
    ``file_path`` in their form), the other candidates only where it fails.

    Also says which rows are ambiguous: those whose step-2 file another row claims too (frames named
    ``output_000001.jpg`` in an export laid out by file name).
    """
    resolved = by_path
    no_conflict = pa.array(np.zeros(len(resolved), dtype=bool))
    pending = pc.indices_nonzero(pc.is_null(resolved))
    if not len(pending):
        return resolved, no_conflict
    path, name = file_path.take(pending), _member_form(file_name.take(pending))
    by_name = _in_images(name)
    candidates = [
        _as_root_path(path),
        pc.if_else(pc.fill_null(pc.equal(name, path), False), _NO_STRING, by_name),  # already tried
        _as_root_path(name),
    ]
    n = len(pending)
    tried = [c for c in candidates if c.null_count < n]
    if not tried:
        return resolved, no_conflict
    found = _exact(pa.concat_arrays(tried), members)  # one hash of the members for every step
    found = pc.coalesce(*(found.slice(i * n, n) for i in range(len(tried))))
    if found.null_count == n:
        return resolved, no_conflict
    shared = pc.and_(
        pc.is_valid(found),
        _repeated(
            found, pc.drop_null(pc.coalesce(resolved, _scatter(pa.nulls(len(resolved), pa.string()), pending, found)))
        ),
    )
    return (_scatter(resolved, pending, pc.if_else(shared, _NO_STRING, found)), _scatter(no_conflict, pending, shared))


def _contested(
    at: pa.Array, by_path: pa.Array, flat: pa.Array | None, members: pa.Array, folded: bool
) -> tuple[pa.Array, pa.Array] | tuple[None, None]:
    """The files no row may have, as no file is ever given to two rows: one that several rows name
    by their file_path (however spelled: ``x\\a.jpg``, ``./x/a.jpg`` and ``x//a.jpg`` all name
    ``images/x/a.jpg``), and, where a backslash was ``folded`` into a folder separator, a name
    several files carry (a folder on Linux may hold ``x\\a.jpg`` beside ``x/a.jpg``). With each
    row's file among them, by step 0 or 1 (null for the others); (None, None) when there is none,
    as usual. ``at``: each row's step-1 file as a position among ``members`` (``by_path`` its name).

    Rows with a flat image (step 0) claim nothing by their file_path: it is not theirs to take.
    """
    positions = pc.fill_null(at, -1).to_numpy(zero_copy_only=False)
    if flat is not None:
        positions = np.where(pc.is_valid(flat).to_numpy(zero_copy_only=False), -1, positions)
    # Counted by position, where counting the names would hash every row's again.
    twice = np.flatnonzero(np.bincount(positions[positions >= 0], minlength=len(members)) > 1)
    contested = members.take(pa.array(twice, pa.int64()))
    if folded:
        contested = pc.unique(pa.concat_arrays([contested, members.filter(_repeated(members, members))]))
    if not len(contested):
        return None, None
    claims = by_path if flat is None else pc.coalesce(flat, by_path)
    return contested, pc.if_else(pc.fill_null(pc.is_in(claims, value_set=contested), False), claims, _NO_STRING)


def _member_in_images(paths: pa.Array) -> pa.Array:
    """``images/<path>`` for each of ``paths``, in the form the export's files are named in."""
    return _in_images(_member_form(paths))


def _in_images(paths: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise("images/", paths, "")


def _member_form(paths: pa.Array) -> pa.Array:
    """``paths`` as an unpacked export names its files (``archive.safe_member_path``, a folder's
    listing): a backslash is a folder separator, and empty and ``.`` segments are dropped, so that
    ``cat\\x.jpg``, ``cat//x.jpg`` and ``./cat/x.jpg`` all name ``cat/x.jpg``."""
    if not _may_need_member_form(paths):
        return paths
    paths = pc.replace_substring_regex(pc.replace_substring(paths, "\\", "/"), "/+", "/")
    return pc.replace_substring_regex(pc.replace_substring_regex(paths, r"(/\.)+/", "/"), r"^(\./)+", "")


def _may_need_member_form(paths: pa.Array) -> bool:
    """Whether some byte of ``paths`` is a backslash, or a slash after a slash or a dot (a pair
    may straddle two paths: then the patterns run for nothing). ~1 ms per 128K paths, where a
    substring search per pair cost 3 ms each, and Arrow's per path more."""
    texts = text_bytes(paths)
    if texts is None:
        return False
    data = texts[0]
    slashes = np.flatnonzero(data == ord("/"))
    after = slashes[slashes > 0] - 1
    return bool((data == ord("\\")).any() or np.isin(data[after], (ord("/"), ord("."))).any())


def _as_root_path(value: pa.Array) -> pa.Array:
    return pc.if_else(pc.fill_null(pc.starts_with(value, "images/"), False), value, _NO_STRING)


def _exact(candidates: pa.Array, members: pa.Array) -> pa.Array:
    return pc.if_else(pc.fill_null(pc.is_in(candidates, value_set=members), False), candidates, _NO_STRING)


def _unique_match(keys: pa.Array, member_keys: pa.Array, members: pa.Array) -> tuple[pa.Array, pa.Array]:
    """For each key: the member with that key when exactly one member and one row have it (else
    null), and whether the key is ambiguous: several members have it, or several rows share it."""
    wanted = pc.fill_null(pc.is_in(member_keys, value_set=pc.drop_null(keys)), False)
    member_keys, members = member_keys.filter(wanted), members.filter(wanted)
    first = members.take(pc.index_in(keys, member_keys))
    several = pc.and_(pc.is_valid(first), pc.or_(_repeated(keys, keys), _repeated(keys, member_keys)))
    return pc.if_else(several, _NO_STRING, first), several


def _repeated(keys: pa.Array, among: pa.Array) -> pa.Array:
    """Whether each key occurs more than once in ``among``."""
    counts = pc.value_counts(among)
    if not len(counts) or pc.max(counts.field("counts")).as_py() == 1:
        return pa.array(np.zeros(len(keys), dtype=bool))
    return pc.fill_null(pc.greater(counts.field("counts").take(pc.index_in(keys, counts.field("values"))), 1), False)


def _media_id_stems(members: pa.Array, member_base: pa.Array, *, nested: bool) -> pa.Array:
    """``<stem>`` of each member ``images/<stem>.<image extension>`` (with ``nested``, in any folder
    under ``images/``: the contract does not say where such a file sits); null for every other."""
    lower = pc.utf8_lower(member_base)
    is_image = pc.starts_with(members, "images/") if nested else pc.equal(members, _in_images(member_base))
    has_extension = pc.ends_with(lower, f".{IMAGE_EXTENSIONS[0]}")
    for ext in IMAGE_EXTENSIONS[1:]:
        has_extension = pc.or_(has_extension, pc.ends_with(lower, f".{ext}"))
    stems = pc.list_element(pc.split_pattern(member_base, ".", max_splits=1, reverse=True), 0)
    return pc.if_else(pc.and_(is_image, has_extension), stems, _NO_STRING)


def _scatter(target: pa.Array, positions: pa.Array, values: pa.Array) -> pa.Array:
    """``target`` with ``values`` written at ``positions``."""
    index = np.arange(len(target), dtype=np.int64)
    index[positions.to_numpy()] = len(target) + np.arange(len(positions), dtype=np.int64)
    return pa.concat_arrays([target, values.cast(target.type)]).take(pa.array(index))


_TAKEN_COLUMNS = ("media_id", "file_path", "image_filename")


def _raise_taken(table: pa.Table, row: int) -> None:
    media_id, file_path, image_filename = (table.column(c)[row].as_py() for c in _TAKEN_COLUMNS)
    named = pc.equal(table.column("image_filename"), file_path)
    other = table.column("media_id").filter(pc.fill_null(named, False))
    owner = f"media_id {other[0].as_py()!r}" if len(other) else "another row"
    raise ImageNotFoundError(
        f"The image of media_id {media_id!r} is ambiguous: its image_filename {image_filename!r} names no file, "
        f"and its file_path {file_path!r} names the image of {owner} (by its image_filename).",
        media_id=media_id,
    )


def _raise_contested(table: pa.Table, row: int, claimed: pa.Array) -> None:
    media_id, file_path = (table.column(c)[row].as_py() for c in ("media_id", "file_path"))
    file = claimed[row].as_py()
    others = table.column("media_id").filter(pc.fill_null(pc.equal(claimed, file), False))
    other = next((m for m in others.to_pylist() if m != media_id), None)
    if other is not None:
        rival = f"which media_id {other!r} names too ({len(others)} rows in all)"
    else:  # several files of that name, once a backslash is read as a folder separator
        rival = "a name several files of the export carry once a backslash is read as a folder separator"
    raise ImageNotFoundError(
        f"The image of media_id {media_id!r} (file_path {file_path!r}) is ambiguous: it names {file!r}, {rival}; "
        "no file is given to two rows.",
        media_id=media_id,
    )


def _raise_ambiguous(media_id: str, file_name: str | None, members: pa.Array, file_names: pa.Array) -> None:
    base = (file_name or "").replace("\\", "/").rsplit("/", 1)[-1]
    candidates = [
        m
        for m in members.to_pylist()
        if m.rsplit("/", 1)[-1] == base or m.rsplit("/", 1)[-1].split(".", 1)[0] == media_id
    ]
    shown = ", ".join(sorted(candidates)[:10]) + (" ..." if len(candidates) > 10 else "")
    sharing = pc.sum(pc.equal(basename(file_names), base)).as_py() or 0
    raise ImageNotFoundError(
        f"The image of media_id {media_id!r} is ambiguous: there is no images/<file_path>, and its file name "
        f"{base!r}, shared by {sharing} row(s), matches {len(candidates)} file(s): {shown}.",
        media_id=media_id,
    )
