"""The examples run as a user runs them: a fresh process, no credentials, no network."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import torch

from tests.waits import Child, run_child

REPO = Path(__file__).resolve().parents[1]


def _clean_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VL_API_", "VL_DATASETS_"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["XDG_CACHE_HOME"] = str(tmp_path / "user-cache")
    # The sample's service keeps its exports in a temporary folder, removed as it stops: a run
    # killed on purpose leaves it here, with the test's files, not in the machine's /tmp.
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env["TMPDIR"] = str(tmp_path / "tmp")
    return env


def _run(tmp_path: Path, script: str, *args: str) -> str:
    result = run_child([sys.executable, str(REPO / "examples" / script), *args], env=_clean_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_export_example_runs_offline_on_the_local_service(tmp_path):
    out = _run(tmp_path, "export_dataset.py")
    assert "serving the sample dataset on a local Visual Layer service" in out
    assert "2017 items, 2017 images" in out
    assert "metadata.parquet" in out
    assert "removed by dedupe" in out
    assert "first batch: images (8, 3, 64, 64) torch.uint8" in out
    assert not (tmp_path / "user-cache").exists()  # a local demo leaves the user's cache alone


def _row(out: str, name: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.startswith(name))
    return line[len(name) :].split()


def test_main_command_trains_a_curated_model_at_least_as_accurate(tmp_path):
    """The README's main command, shortened by --epochs only: export, split, curate, train, compare."""
    out = _run(tmp_path, "train_classifier.py", "--epochs", "24", "--report")
    assert "leakage-safe split" in out
    for rule in ("min_uniqueness=0.05", "drop_issues", "dedupe"):
        assert int(_row(out, f"removed by {rule}")[1].replace(",", "")) > 0, f"{rule} removed nothing"
    plain, curated = (float(v.rstrip("%")) for v in _row(out, "test accuracy"))
    assert curated >= plain > 50
    n_plain, n_curated = (int(v.replace(",", "")) for v in _row(out, "items trained on"))
    assert n_curated < n_plain
    assert {p.name for p in (tmp_path / "runs").iterdir()} == {"curated.pt", "uncurated.pt", "report.html"}

    evaluation = _run(tmp_path, "evaluate.py", "runs/curated.pt")
    _check_evaluation_outputs(tmp_path / "runs")
    accuracy = float(re.search(r"^accuracy ([\d.]+)%", evaluation, re.M).group(1))
    assert abs(accuracy - curated) < 0.05  # the same model on the same cleaned test split
    assert re.search(r"^9 +\d+ +[\d.]+%$", evaluation, re.M), "evaluate.py printed no per-class row"
    assert "most confused (true -> predicted)" in evaluation
    assert re.search(r"leakage check: 0 of \d+ evaluated items", evaluation), "no clean leakage check printed"
    random_leaks = int(re.search(r"random split of the same sizes would leak (\d+)", evaluation).group(1))
    assert random_leaks > 0


def _check_evaluation_outputs(runs: Path) -> None:
    """evaluate.py's files on the sample: the label-error list finds the test split's flipped
    labels, and the injected blurred copies (never trained on: curation drops blur) score below
    the other items whose label is right. Measured with --epochs 24: precision 0.94, recall 0.97
    on the test split's 87 flips; blurred copies 77% against 98%."""
    import pyarrow.csv

    from vl_datasets.sample import SAMPLE_DATASET_ID, SAMPLE_ROOT

    folder = SAMPLE_ROOT / SAMPLE_DATASET_ID
    defects = json.loads((folder / "defects.json").read_text())
    labels = {
        item["media_id"]: next(
            m["properties"]["category_name"] for m in item["metadata_items"] if m["type"] == "image_label"
        )
        for item in json.loads((folder / "metadata.json").read_text())["media_items"]
    }
    predictions = pyarrow.csv.read_csv(runs / "curated.predictions.csv").to_pylist()
    scored = {row["media_id"] for row in predictions}
    flipped = set(defects["flipped_label"]) & scored
    suspected = set((runs / "curated.label_errors.txt").read_text().split())
    assert suspected <= scored
    assert len(suspected & flipped) >= 0.85 * len(flipped), f"{len(suspected & flipped)} of {len(flipped)} flips found"
    assert len(suspected & flipped) >= 0.8 * len(suspected), f"{len(suspected - flipped)} of {len(suspected)} wrong"
    right = {row["media_id"]: str(row["prediction"]) == labels[row["media_id"]] for row in predictions}
    blurred = [right[m] for m in defects["blurred"] if m in right]
    rest = [ok for m, ok in right.items() if m not in defects["blurred"] and m not in flipped]
    assert len(blurred) >= 10
    assert sum(blurred) / len(blurred) < sum(rest) / len(rest) - 0.1, "blurred copies should score below the rest"
    page = (runs / "curated.evaluation.html").read_text()
    assert "<h2>Suspected label errors:" in page and "<h2>Per issue type and confidence</h2>" in page


def test_main_command_uses_the_platform_when_credentials_are_set(tmp_path):
    """VL_API_URL/KEY/SECRET and --dataset-id: the same script, signed requests, no local sample service."""
    from vl_datasets.sample import SAMPLE_ROOT
    from vl_datasets.testing import LocalVisualLayer

    key, secret = "key-main", "secret-main-0123456789abcdef0123456789"
    with LocalVisualLayer(SAMPLE_ROOT, api_key=key, api_secret=secret, export_polls=0) as platform:
        env = _clean_env(tmp_path) | {"VL_API_URL": platform.url, "VL_API_KEY": key, "VL_API_SECRET": secret}
        result = run_child(
            [
                sys.executable,
                str(REPO / "examples" / "train_classifier.py"),
                "--dataset-id",
                "sample-digits",
                "--epochs",
                "1",
                "--image-size",
                "16",
                "--cache-dir",
                str(tmp_path / "cache"),
            ],
            env=env,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        assert "No credentials set" not in result.stdout
        assert "test accuracy" in result.stdout
        api = [r for r in platform.requests if r.path.startswith("/api/v1/dataset/")]
        assert api, "the script made no API call to the platform"
        assert all(r.status < 400 for r in api), [  # every API call carried a valid signed token
            (r.path, r.status) for r in api if r.status >= 400
        ]
        assert all((r.header("Authorization") or "").startswith("Bearer ") for r in api), [
            (r.path, r.status) for r in api if not r.header("Authorization")
        ]
        assert secret not in result.stdout + result.stderr


def test_main_command_in_the_shell_serve_set_up_says_what_took_it_off_the_sample(tmp_path):
    """`export VL_API_URL=...`, as serve's banner says, then the README's command: it exited with
    "--dataset-id is required" and no word of why it had left the sample."""
    env = _clean_env(tmp_path) | {"VL_API_URL": "http://127.0.0.1:2080"}
    result = run_child([sys.executable, str(REPO / "examples" / "train_classifier.py")], env=env, cwd=tmp_path)
    assert result.returncode != 0
    assert "--dataset-id is required" in result.stderr
    assert "VL_API_URL set" in result.stderr and "unset it to run on the embedded sample" in result.stderr


def test_resume_picks_up_a_killed_run_and_trains_the_same_models(tmp_path):
    """--resume: SIGKILL the run part-way through the second model, run it again; the first model
    comes from its checkpoint, the second goes on from its last one, and both come out as an
    uninterrupted run's, to the printed digit."""
    args = ["--epochs", "1", "--checkpoint-every", "5"]
    reference = tmp_path / "reference"
    reference.mkdir()
    uninterrupted = _run(reference, "train_classifier.py", *args)
    command = [sys.executable, str(REPO / "examples" / "train_classifier.py"), *args, "--resume"]
    checkpoint = tmp_path / "runs" / "curated.resume.pt"
    with Child(command, env=_clean_env(tmp_path), cwd=tmp_path) as killed:
        # written at the curated model's 5th step, part-way through its epoch
        killed.until(checkpoint.exists, "a checkpoint of the curated model to kill the run at")
        killed.process.send_signal(signal.SIGKILL)
        killed.wait("the run's end after SIGKILL")
    cut = torch.load(checkpoint)
    assert cut["loader"]["position"] < cut["loader"]["dataset"]["items"], "the kill came after the epoch's end"
    resumed = _run(tmp_path, "train_classifier.py", *args, "--resume")
    assert f"curated: resumed from {Path('runs') / 'curated.resume.pt'} at epoch 0, step {cut['step']}" in resumed
    assert "uncurated: resumed from" in resumed, "the finished first model was not taken from its checkpoint"
    assert _row(resumed, "test accuracy") == _row(uninterrupted, "test accuracy")


def test_resume_checkpoints_on_sigterm_and_the_rerun_ends_as_an_uninterrupted_run(tmp_path):
    """--resume as a scheduler stops it: SIGTERM once training has begun. The run checkpoints at the
    next step boundary and exits 143; the rerun resumes from that checkpoint, not from an older
    periodic one, and trains the models an uninterrupted run trains."""
    args = ["--epochs", "2", "--checkpoint-every", "5"]
    reference = tmp_path / "reference"
    reference.mkdir()
    uninterrupted = _run(reference, "train_classifier.py", *args)
    command = [sys.executable, str(REPO / "examples" / "train_classifier.py"), *args, "--resume"]
    with Child(command, env=_clean_env(tmp_path), cwd=tmp_path) as stopped:
        # the first periodic checkpoint is saved
        stopped.until(lambda: "uncurated: step 5," in stopped.text(), "the run's step 5 of the uncurated model")
        stopped.process.send_signal(signal.SIGTERM)
        code = stopped.wait("the run's exit after SIGTERM")
        output = stopped.text() + stopped.text("stderr")
    assert code == 143, output[-3000:]
    said = re.search(r"^(\w+): SIGTERM: checkpointed at epoch (\d+), step (\d+) in (\S+)$", output, re.M)
    assert said, "the stopped run did not say where it checkpointed:\n" + output[-3000:]
    name, epoch, step, path = said.groups()
    assert int(step) >= 5 and Path(path) == Path("runs") / f"{name}.resume.pt"
    resumed = _run(tmp_path, "train_classifier.py", *args, "--resume")
    assert f"{name}: resumed from {path} at epoch {epoch}, step {step}" in resumed
    assert _row(resumed, "test accuracy") == _row(uninterrupted, "test accuracy")
