"""Ctrl-C (issue 18, part B): one line on stderr and exit code 130; the line promises a resume only when
the run's checkpoint is on disk, and then the promised command does continue the run.

The interrupt arrives right before a given optimizer step (a torch step pre-hook), so it lands at the
same point on every machine: no sleeps, no races.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import at_optimizer_step, db_rows, run_cli_signalled_at_step

from medpeft_cli.errors import Interrupted, RunInterrupted

# 480 training images (20 % of synthetic-lesions) in batches of 64: epoch 1 is optimizer steps 1-8.
ARGS = ["train", "--dataset", "synthetic-lesions", "--weights", "random", "--backbone", "test_vit", "--method", "lora",
        "--image-size", "32", "--epochs", "2", "--data-fraction", "0.2", "--batch-size", "64", "-q", "--no-site"]  # fmt: skip
IN_EPOCH_2, IN_EPOCH_1 = 10, 3


def ctrl_c():
    raise KeyboardInterrupt


def checkpoints(root: Path) -> list[Path]:
    return sorted((root / "runs" / ".partial").glob("*/checkpoint.pt"))


@pytest.mark.slow
def test_ctrl_c_after_a_checkpoint_names_it_and_resume_continues(cli, request, tmp_path):
    remove = at_optimizer_step(request, IN_EPOCH_2, ctrl_c)
    res = cli(*ARGS)
    remove()
    assert res.code == 130, res.stderr
    [checkpoint] = checkpoints(tmp_path)  # the end of epoch 1
    assert res.stderr.splitlines() == [
        f"medpeft: interrupted; the run's last checkpoint is {Path('runs/.partial') / checkpoint.parent.name / 'checkpoint.pt'}: "
        "rerun the same command with --resume to continue from it"
    ]
    assert db_rows("results/medpeft.duckdb") == [] and not (tmp_path / "runs" / ".failed").exists()  # not a crash

    resumed = cli(*ARGS, "--resume")  # what the line says to do
    assert resumed.code == 0, resumed.stderr
    [row] = db_rows("results/medpeft.duckdb")
    assert row["run_key"] == checkpoint.parent.name and row["epochs"] == 2 and checkpoints(tmp_path) == []


@pytest.mark.slow
def test_ctrl_c_before_any_checkpoint_promises_no_resume(cli, request, tmp_path):
    at_optimizer_step(request, IN_EPOCH_1, ctrl_c)
    res = cli(*ARGS)
    assert res.code == 130
    assert res.stderr.splitlines() == [
        "medpeft: interrupted; no checkpoint of the run is on disk, so nothing of it was kept (rerun the same command to start it again)"
    ]
    assert checkpoints(tmp_path) == [] and db_rows("results/medpeft.duckdb") == []


@pytest.mark.slow
def test_a_real_sigint_ends_the_process_with_130_and_one_line(tmp_path):
    res = run_cli_signalled_at_step(ARGS, IN_EPOCH_2, tmp_path, "SIGINT")  # as a terminal's Ctrl-C would
    assert res.returncode == 130, res.stderr
    [line] = res.stderr.splitlines()
    assert line.startswith("medpeft: interrupted; the run's last checkpoint is runs/.partial/") and line.endswith("--resume to continue from it")
    assert len(checkpoints(tmp_path)) == 1


def test_commands_that_resume_by_default_say_so(tmp_path):
    from medpeft_cli.sweep.local import resume_hint

    saved = tmp_path / "checkpoint.pt"
    saved.write_bytes(b"x")
    with pytest.raises(RunInterrupted) as caught, resume_hint("checkpoint saved: rerun", "rerun the same command"):
        raise RunInterrupted(saved)
    assert Interrupted.of(caught.value).line() == f"medpeft: interrupted; the run's last checkpoint is {saved}: rerun the same command to continue from it"
    saved.unlink()  # a throw-away run (a tuning trial) removed it: no promise
    assert "no checkpoint of the run is on disk" in Interrupted.of(caught.value).line()
    assert Interrupted.of(KeyboardInterrupt()).exit_code == 130
