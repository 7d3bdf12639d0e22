"""``vl-datasets serve`` as a separate process, reached over HTTP like any Visual Layer."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import requests

from tests.server.helpers import finished, start_full, start_selective
from tests.server.process import ServeProcess
from vl_datasets import Client, errors


@pytest.mark.parametrize("sigint_at_start", ["default", "ignored"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_serve_stops_cleanly_and_exits_0_on_sigterm_sigint_and_a_closed_terminal(
    dataset_root, tmp_path, sig, sigint_at_start
):
    # "ignored": how a shell starts a background job. The handlers must replace that disposition.
    work = tmp_path / "tmp"
    work.mkdir()
    with ServeProcess("--root", str(dataset_root), sigint=sigint_at_start, tmpdir=work) as serve:
        task = finished(serve, start_full(serve, include_images="true"))
        assert task["status"] == "COMPLETED", task
        assert any(work.iterdir()), "the export left nothing in the service's work folder"
        code = serve.stop(sig)
    assert code == 0, f"serve exited {code} on {sig.name} (SIGINT {sigint_at_start} at start): {serve.stderr}"
    assert f"stopped ({sig.name})" in serve.stderr
    assert "Traceback" not in serve.stderr
    assert list(work.iterdir()) == [], "serve left its exports behind: it did not stop cleanly"


def test_serve_started_under_nohup_outlives_its_terminal(dataset_root, tmp_path):
    work = tmp_path / "tmp"
    work.mkdir()
    with ServeProcess("--root", str(dataset_root), sighup="ignored", tmpdir=work) as serve:
        serve.proc.send_signal(signal.SIGHUP)
        # Still serving after the hangup: a whole export, started after it, completes.
        task = finished(serve, start_full(serve, include_images="true"))
        assert task["status"] == "COMPLETED", task
        assert serve.proc.poll() is None, serve.child.text("stderr")
        code = serve.stop(signal.SIGTERM)
    assert code == 0, serve.stderr
    assert list(work.iterdir()) == [], "serve left its exports behind: it did not stop cleanly"


def test_serve_reads_its_secret_from_the_environment_and_ps_never_shows_it(dataset_root, tmp_path):
    secret = "env-secret-0123456789abcdef0123456789"
    with ServeProcess("--root", str(dataset_root), "--api-key", "k1", env={"VL_API_SECRET": secret}) as serve:
        command_line = Path(f"/proc/{serve.proc.pid}/cmdline").read_bytes()
        assert b"k1" in command_line, command_line  # the right process
        assert secret.encode() not in command_line
        assert requests.get(f"{serve.url}/api/v1/dataset/ds-ready", timeout=10).status_code == 401
        client = Client(serve.url, api_key="k1", api_secret=secret, progress=False, env={}, sleep=lambda s: None)
        task = client.wait_for_export("ds-ready", client.start_export("ds-ready").id)
        assert client.download_export(task, tmp_path / "x.zip").stat().st_size > 0
        assert serve.stop() == 0, serve.stderr
    assert "token auth" in serve.banner
    assert secret not in serve.banner + serve.stderr


def _serve_args(*argv: str):
    from vl_datasets.cli import build_parser

    return build_parser().parse_args(["serve", "--sample", *argv])


def test_serve_secret_sources(tmp_path, capsys):
    from vl_datasets.cli.serve import api_secret

    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file \n")  # the final newline goes; the space is the secret's
    assert api_secret(_serve_args("--api-key", "k", "--api-secret-file", str(secret_file)), {}) == "from-a-file "
    assert api_secret(_serve_args("--api-key", "k"), {"VL_API_SECRET": "from-env"}) == "from-env"
    # The flag wins over the environment, which a client in the same shell may be reading.
    assert api_secret(_serve_args("--api-key", "k", "--api-secret", "flag"), {"VL_API_SECRET": "env"}) == "flag"
    assert "--api-secret shows the secret" in capsys.readouterr().err
    # Without --api-key the service is on-prem, whatever the environment holds.
    assert api_secret(_serve_args(), {"VL_API_SECRET": "from-env"}) is None


@pytest.mark.parametrize(
    "argv,environ,message",
    [
        (["--api-key", "k"], {}, "set VL_API_SECRET"),
        (["--api-key", "k"], {"VL_API_SECRET": ""}, "set VL_API_SECRET"),
        (["--api-secret", "s"], {}, "need --api-key"),
        (["--api-secret-file", "f"], {}, "need --api-key"),
        (["--api-key", "k", "--api-secret-file", "{missing}"], {}, "cannot be read"),
        (["--api-key", "k", "--api-secret-file", "{empty}"], {"VL_API_SECRET": "unused"}, "found none in"),
    ],
)
def test_serve_secret_errors_name_the_source_never_a_value(tmp_path, argv, environ, message):
    from vl_datasets.cli.serve import api_secret

    (tmp_path / "empty").write_text("\n")
    argv = [a.format(missing=tmp_path / "missing", empty=tmp_path / "empty") for a in argv]
    with pytest.raises(errors.ConfigurationError, match=message) as caught:
        api_secret(_serve_args(*argv), environ)
    assert "unused" not in str(caught.value)


def test_serve_takes_the_secret_from_one_place_only(capsys):
    from vl_datasets.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(
            ["serve", "--sample", "--api-key", "k", "--api-secret", "s", "--api-secret-file", "x"]
        )
    assert exit_info.value.code == 2, "a secret given twice should be a usage error"
    assert "not allowed with" in capsys.readouterr().err


def test_serve_refuses_half_credentials(dataset_root, capsys, monkeypatch):
    from vl_datasets.cli import main

    monkeypatch.delenv("VL_API_SECRET", raising=False)
    assert main(["serve", "--root", str(dataset_root), "--api-key", "k1"]) == 2
    assert "VL_API_SECRET" in capsys.readouterr().err


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


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--port", "99999"], "'99999' is not a port from 0 to 65535"),
        (["--storage-port", "-1"], "'-1' is not a port"),
        (["--max-body-bytes", "0"], "'0' is not a whole number of 1 or more"),
        (["--max-images-per-export", "-3"], "'-3' is not a whole number"),
    ],
)
def test_serve_refuses_a_bad_port_or_limit_as_a_usage_error(capsys, argv, says):
    """Not a bind() traceback once the service starts."""
    from vl_datasets.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["serve", "--sample", *argv])
    assert exit_info.value.code == 2
    assert says in capsys.readouterr().err


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


def test_serve_rejects_exports_over_its_limits_as_the_platform_does(dataset_root):
    from vl_datasets.cli import serve as serve_cli
    from vl_datasets.server import handler, jobs

    assert (
        serve_cli.DEFAULT_MAX_IMAGES_PER_EXPORT,
        serve_cli.DEFAULT_MAX_ENTITIES_PER_EXPORT,
        serve_cli.MAX_BODY_BYTES,
    ) == (
        jobs.DEFAULT_MAX_IMAGES_PER_EXPORT,
        jobs.DEFAULT_MAX_ENTITIES_PER_EXPORT,
        handler.MAX_BODY_BYTES,
    ), "serve's defaults drifted from the service's"
    with ServeProcess(
        "--root", str(dataset_root), "--max-images-per-export", "3", "--max-entities-per-export", "5",
        "--max-body-bytes", "64",
    ) as serve:  # fmt: skip
        with_images = finished(serve, start_full(serve, include_images="true"))
        without = finished(serve, start_full(serve, include_images="false"))
        too_many_ids = start_selective(serve, {"media_ids": [f"media-{i:04d}" for i in range(5)]})
        assert serve.stop() == 0, serve.stderr
    assert with_images["status"] == "REJECTED"
    assert "8 images exceeds threshold of 3" in with_images["result_message"]
    assert without["status"] == "REJECTED"
    assert "8 entities exceeds threshold of 5" in without["result_message"]
    assert too_many_ids.status_code == 413 and "over 64 bytes" in too_many_ids.json()["detail"]


@pytest.mark.parametrize("api_key", [None, "k1"], ids=["on-prem", "token-auth"])
def test_serve_banner_gives_the_lines_a_client_shell_needs_never_the_secret(dataset_root, capsys, api_key):
    import threading

    from vl_datasets.server import serve

    secret = "banner-secret-0123456789abcdef0123456789" if api_key else None
    stopped = threading.Event()
    stopped.set()  # the banner is printed, then the service stops at once
    serve(dataset_root, port=0, api_key=api_key, api_secret=secret, stop=stopped)
    first, *rest = capsys.readouterr().out.splitlines()
    url = re.search(r"service at (http://\S+) ", first).group(1)
    assert f"  export VL_API_URL={url}" in rest
    key_lines = [line for line in rest if "VL_API_KEY" in line]
    if api_key is None:
        assert key_lines == []
    else:
        assert len(key_lines) == 1 and key_lines[0].startswith("  export VL_API_KEY=k1 ")
        assert "VL_API_SECRET" in key_lines[0]
        assert secret not in first + "\n".join(rest)


def test_serve_refuses_a_port_in_use_and_an_index_dir_that_is_a_file(tmp_path, capsys):
    """Not an 'Address already in use' traceback, nor a service whose every export answers 500."""
    import socket

    from vl_datasets.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--sample", "--port", str(port)]) == 2
        assert f"--port {port}: the port is in use on 127.0.0.1" in capsys.readouterr().err
    a_file = tmp_path / "index"
    a_file.write_text("")
    assert main(["serve", "--sample", "--port", "0", "--index-dir", str(a_file)]) == 2
    assert f"--index-dir {a_file} is not a folder" in capsys.readouterr().err
