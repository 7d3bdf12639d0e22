"""Hand-made exports whose every slice can be counted by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vl_datasets.testing import write_dataset


def item(
    media_id: str,
    label: str | None,
    *,
    uniqueness: float | None = 0.5,
    cluster: str | None = None,
    issues: tuple[dict[str, Any], ...] = (),
    objects: tuple[tuple[str, list[float]], ...] = (),
) -> dict[str, Any]:
    """One media item of a JSON export, with a 16x16 image at ``<media_id>.jpg``."""
    entries: list[dict[str, Any]] = []
    if label is not None:
        entries.append({"type": "image_label", "properties": {"category_name": label, "source": "User"}})
    entries += [{"type": "issue", "properties": dict(issue)} for issue in issues]
    entries += [
        {"type": "object_label", "properties": {"category_name": name, "bbox": box, "source": "User"}}
        for name, box in objects
    ]
    return {
        "media_id": media_id,
        "media_type": "image",
        "file_name": f"{media_id}.jpg",
        "file_path": f"{media_id}.jpg",
        "height": 16,
        "width": 16,
        "uniqueness_score": uniqueness,
        "cluster_id": cluster,
        "metadata_items": entries,
    }


def duplicate(group: str, confidence: float = 0.99) -> tuple[dict[str, Any], ...]:
    """A duplicates issue at two thresholds, as real exports carry one per threshold."""
    return tuple(
        {"issue_type": "duplicates", "confidence": confidence, "duplicate_group_id": group, "duplicate_threshold": t}
        for t in (0.96, 0.98)
    )


def mislabel(confidence: float, suggested: str) -> dict[str, Any]:
    return {"issue_type": "mislabels", "confidence": confidence, "issues_description": suggested}


def write_export(root: Path, items: list[dict[str, Any]], name: str = "hand") -> Path:
    return write_dataset(root, name, media_items=items)
