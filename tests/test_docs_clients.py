"""The clients Visual Layer's docs publish, played in spirit against the local service.

Users copy these into their CI and point them at ``vl-datasets serve``: each must run unchanged but
for the base URL and the dataset id. Written here from the docs' descriptions, not copied:

- a shell script that exports with curl, reads the JSON with grep and cut, and downloads the
  ``download_uri`` with ``curl -L`` (the "Full Automation Script" of "Exporting a Dataset via curl");
- the on-prem Python exporter of the "Export via api" notebook, which joins the relative
  ``download_uri`` to the base URL;
- the pandas snippets that sort ``metadata.parquet`` by ``uniqueness_score`` and copy
  ``exported_dataset/images/{image_filename}`` into one flat folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import jwt
import pandas as pd
import pytest
import requests

from tests.helpers import REPO
from tests.server.process import ServeProcess
from tests.waits import cpu_of, run_child, wait_until
from vl_datasets.sample import SAMPLE_ROOT
from vl_datasets.testing import LocalVisualLayer, write_dataset

CURL_SCRIPT = REPO / "tests" / "docs_clients" / "export_with_curl.sh"
SAMPLE_ID = "sample-digits"


def _sample_media_ids() -> list[str]:
    items = json.loads((SAMPLE_ROOT / SAMPLE_ID / "metadata.json").read_text(encoding="utf-8"))["media_items"]
    return [m["media_id"] for m in items]


def _run_curl_script(url: str, out: Path, **env: str) -> subprocess.CompletedProcess:
    for tool in ("bash", "curl", "grep", "cut"):
        assert shutil.which(tool), f"the docs' shell client needs {tool} on PATH"
    environment = {"PATH": os.environ["PATH"], "VL_BASE_URL": url, "VL_DATASET_ID": SAMPLE_ID}
    environment.update(OUT=str(out), POLL_S="0.1", **env)
    # Bounded by progress: the script prints each poll's status, and curl uses CPU as it downloads.
    return run_child(["bash", str(CURL_SCRIPT)], env=environment)


def _assert_complete_sample_zip(path: Path) -> None:
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None, "a member of the downloaded ZIP fails its CRC"
        names = zf.namelist()
        table = pd.read_parquet(zf.open("metadata.parquet"))
    images = {n for n in names if n.startswith("images/")}
    assert sorted(table["media_id"]) == sorted(_sample_media_ids()), "the ZIP's metadata is not the whole sample"
    assert images == {f"images/{name}" for name in table["image_filename"]}, "an image is missing from the ZIP"


@pytest.mark.parametrize("style,path", [("relative", "/cdn/"), ("absolute", "/exports/")])
def test_curl_grep_cut_script_exports_from_vl_datasets_serve(tmp_path, style, path):
    with ServeProcess("--sample", "--download-uri", style) as serve:
        result = _run_curl_script(serve.url, tmp_path / "export.zip")
        assert serve.stop() == 0, serve.stderr
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Status: COMPLETED" in result.stdout
    downloading = next(line for line in result.stdout.splitlines() if line.startswith("Downloading "))
    assert path in downloading, f"expected a {style} download URI: {downloading}"
    _assert_complete_sample_zip(tmp_path / "export.zip")


def test_curl_script_with_a_bearer_token_against_the_cloud_style_service(tmp_path):
    key, secret = "docs-key", "docs-secret-0123456789abcdef0123456789"
    now = int(time.time())
    claims = {"sub": key, "iat": now, "exp": now + 600, "iss": "sdk"}
    token = jwt.encode(claims, secret, algorithm="HS256", headers={"kid": key})
    with ServeProcess(
        "--sample", "--download-uri", "absolute", "--api-key", key, env={"VL_API_SECRET": secret}
    ) as serve:
        refused = _run_curl_script(serve.url, tmp_path / "refused.zip")
        result = _run_curl_script(serve.url, tmp_path / "export.zip", VL_TOKEN=token)
        assert serve.stop() == 0, serve.stderr
    assert refused.returncode != 0, "an export without a token should fail"
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    _assert_complete_sample_zip(tmp_path / "export.zip")


class NotebookExporter:
    """The notebook's on-prem exporter, in spirit: plain requests, an Accept header, no token."""

    def __init__(self, base_url: str, check_interval_s: float = 0.05) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Accept": "application/json, text/plain, */*"}
        self.check_interval_s = check_interval_s

    def initiate_export(self, dataset_id: str, file_name: str, export_format: str = "json", include_images=False):
        params = {"file_name": file_name, "export_format": export_format, "include_images": str(include_images).lower()}
        url = f"{self.base_url}/api/v1/dataset/{dataset_id}/export_context_async"
        response = requests.get(url, headers=self.headers, params=params, timeout=30)
        response.raise_for_status()
        return response.json()

    def wait_for_export(self, dataset_id: str, task_id: str) -> dict:
        # The docs' loop gives up after a total; here the service runs in this process, so the wait
        # is bounded by its progress instead (this process's CPU time), as every wait in the tests is.
        status: dict = {}

        def completed() -> bool:
            nonlocal status
            url = f"{self.base_url}/api/v1/dataset/{dataset_id}/export_status"
            response = requests.get(url, headers=self.headers, params={"export_task_id": task_id}, timeout=30)
            response.raise_for_status()
            status = response.json()
            if status["status"] == "FAILED":
                raise AssertionError(f"Export failed: {status.get('result_message')}")
            return status["status"] == "COMPLETED"

        wait_until(
            completed, f"export {task_id} to complete", progress=cpu_of(os.getpid()), poll_s=self.check_interval_s
        )
        return status

    def download_export(self, download_uri: str, output_path: Path) -> None:
        # The notebook concatenates: it expects the on-prem relative /cdn/... path.
        with requests.get(f"{self.base_url}{download_uri}", headers=self.headers, stream=True, timeout=30) as response:
            response.raise_for_status()
            with open(output_path, "wb") as out:
                for chunk in response.iter_content(chunk_size=8192):
                    out.write(chunk)


def _export_and_unzip(service, dataset_id: str, folder: Path, **options) -> Path:
    exporter = NotebookExporter(service.url)
    task = exporter.initiate_export(dataset_id, "export.zip", **options)
    final = exporter.wait_for_export(dataset_id, task["id"])
    exporter.download_export(final["download_uri"], folder / "export.zip")
    with zipfile.ZipFile(folder / "export.zip") as zf:
        zf.extractall(folder / "exported_dataset")
    return folder / "exported_dataset"


def test_notebook_python_exporter_runs_unchanged(tmp_path):
    with LocalVisualLayer(SAMPLE_ROOT, export_polls=1) as service:
        exported = _export_and_unzip(service, SAMPLE_ID, tmp_path)
    payload = json.loads((exported / "metadata.json").read_text(encoding="utf-8"))
    assert [m["media_id"] for m in payload["media_items"]] == _sample_media_ids()
    assert not (exported / "images").exists(), "include_images=false still sent images"


def _copy_most_unique(exported: Path, out: Path, n: int | None) -> pd.DataFrame:
    """The docs' pandas snippet, in spirit: most unique first, images copied into one flat folder."""
    df = pd.read_parquet(exported / "metadata.parquet")
    top = df.sort_values("uniqueness_score", ascending=False)
    top = top if n is None else top.head(n)
    out.mkdir()
    for image_filename in top["image_filename"]:
        shutil.copy(exported / "images" / image_filename, out / image_filename)
    return top


def test_pandas_snippet_sorts_by_uniqueness_and_copies_images_by_image_filename(tmp_path):
    with LocalVisualLayer(SAMPLE_ROOT, export_polls=0) as service:
        exported = _export_and_unzip(service, SAMPLE_ID, tmp_path, export_format="parquet", include_images=True)
    top = _copy_most_unique(exported, tmp_path / "most_unique", 100)
    assert sorted(p.name for p in (tmp_path / "most_unique").iterdir()) == sorted(top["image_filename"])
    scores = list(top["uniqueness_score"])
    assert scores == sorted(scores, reverse=True)
    for row in top.head(5).itertuples():  # each copy is that row's own image
        source = SAMPLE_ROOT / SAMPLE_ID / "images" / row.file_path
        assert (tmp_path / "most_unique" / row.image_filename).read_bytes() == source.read_bytes(), row.media_id


def test_pandas_snippet_loses_no_image_where_file_names_repeat(tmp_path):
    # Frames of two videos share their file names; copied into one folder, none may overwrite another.
    items = [
        {
            "media_id": f"{v}{f}-0000-4000-8000-000000000000",
            "media_type": "video_frame",
            "file_name": f"output_00000{f}.jpg",
            "file_path": f"videos/clip{v}.mp4/output_00000{f}.jpg",
            "height": 8,
            "width": 8,
            "uniqueness_score": 0.1 * (2 * v + f + 1),
            "metadata_items": [],
        }
        for v in range(2)
        for f in range(2)
    ]
    folder = write_dataset(tmp_path / "datasets", "frames", media_items=items)
    with LocalVisualLayer(tmp_path / "datasets", export_polls=0) as service:
        exported = _export_and_unzip(service, "frames", tmp_path, export_format="parquet", include_images=True)
    copied = _copy_most_unique(exported, tmp_path / "flat", None)
    assert len(list((tmp_path / "flat").iterdir())) == len(items), "two images were copied onto one name"
    for row in copied.itertuples():
        assert (tmp_path / "flat" / row.image_filename).read_bytes() == (folder / "images" / row.file_path).read_bytes()
