"""Shared fixtures: tiny models, a session-wide data cache, and a CLI runner that sees stderr and exit codes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Under pytest-xdist every core already runs a worker: one math thread each avoids oversubscription
# (measured here: a tiny run took 3.9 s with one thread, 18-34 s with two threads per worker).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
BREASTMNIST_DIR = REPO.parent / "shared" / "data" / "breastmnist"

# Small settings every end-to-end test uses: timm's 0.3M-parameter test_vit at 32 px.
TINY = ["--backbone", "test_vit", "--image-size", "32", "--epochs", "1", "--data-fraction", "0.2", "--batch-size", "64"]


@pytest.fixture(scope="session", autouse=True)
def _data_cache(tmp_path_factory):
    """One synthetic-lesions cache for the whole session; never the user's home cache."""
    path = tmp_path_factory.mktemp("medpeft-data")
    old = os.environ.get("MEDPEFT_DATA_DIR")
    os.environ["MEDPEFT_DATA_DIR"] = str(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the network
    yield path
    if old is None:
        os.environ.pop("MEDPEFT_DATA_DIR", None)
    else:
        os.environ["MEDPEFT_DATA_DIR"] = old


@pytest.fixture
def breastmnist_dir() -> Path:
    if not (BREASTMNIST_DIR / "breastmnist.npz").is_file():
        pytest.skip(f"BreastMNIST file not found at {BREASTMNIST_DIR} (../shared/data is absent in a user's clone)")
    return BREASTMNIST_DIR


class CliResult:
    def __init__(self, code: int, stdout: str, stderr: str):
        self.code, self.stdout, self.stderr = code, stdout, stderr


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    """Run `medpeft ARGS` in-process inside tmp_path; returns exit code, stdout and stderr."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str) -> CliResult:
        from medpeft_cli.cli import main

        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
