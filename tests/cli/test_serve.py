"""``vl-datasets serve`` as a separate process, reached over HTTP like any Visual Layer."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import requests

from tests.helpers import REPO
from vl_datasets import Client


def test_serve_runs_the_service_until_interrupted(dataset_root, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vl_datasets",
            "serve",
            "--root",
            str(dataset_root),
            "--port",
            str(port),
            "--api-key",
            "k1",
            "--api-secret",
            "s" * 32,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://\S+", line).group(0)
        assert url == f"http://127.0.0.1:{port}"
        assert requests.get(f"{url}/api/v1/dataset/ds-ready", timeout=10).status_code == 401
        client = Client(url, api_key="k1", api_secret="s" * 32, progress=False, env={})
        task = client.wait_for_export("ds-ready", client.start_export("ds-ready").id)
        assert client.download_export(task, tmp_path / "x.zip").stat().st_size > 0
    finally:
        proc.send_signal(2)  # Ctrl-C
        proc.wait(timeout=30)
    assert proc.returncode == 0, f"serve did not exit cleanly on Ctrl-C: {proc.stderr.read()}"


def test_serve_refuses_half_credentials(dataset_root, capsys):
    from vl_datasets.cli import main

    assert main(["serve", "--root", str(dataset_root), "--api-key", "k1"]) == 2
    assert "--api-secret" in capsys.readouterr().err


def test_serve_takes_exactly_one_of_root_or_sample(capsys):
    from vl_datasets.cli import build_parser

    assert build_parser().parse_args(["serve", "--sample"]).sample is True
    for argv in (["serve"], ["serve", "--sample", "--root", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(argv)
        assert exit_info.value.code == 2, f"{argv} should be refused as a usage error"
    err = capsys.readouterr().err
    assert "one of the arguments --root --sample is required" in err
    assert "not allowed with" in err


def test_serve_root_is_the_folder_or_the_shipped_sample(dataset_root, tmp_path, monkeypatch):
    import vl_datasets.sample
    from vl_datasets.cli import build_parser
    from vl_datasets.cli.serve import serve_root

    assert serve_root(build_parser().parse_args(["serve", "--root", str(dataset_root)])) == dataset_root
    # The sample's data is package data built separately: point the constant at a stand-in.
    monkeypatch.setattr(vl_datasets.sample, "SAMPLE_ROOT", dataset_root)
    assert serve_root(build_parser().parse_args(["serve", "--sample"])) == dataset_root


def test_serve_names_a_missing_folder_before_starting(tmp_path, monkeypatch, capsys):
    import vl_datasets.sample
    from vl_datasets.cli import main

    assert main(["serve", "--root", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    monkeypatch.setattr(vl_datasets.sample, "SAMPLE_ROOT", tmp_path / "nope")
    assert main(["serve", "--sample"]) == 1
    assert "sample dataset is missing" in capsys.readouterr().err
