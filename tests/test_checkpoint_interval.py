"""Routine checkpoints are rate-limited (train/resume.py CHECKPOINT_INTERVAL_S, $MEDPEFT_CHECKPOINT_INTERVAL_S):
a run of tiny epochs must not spend its time writing them, yet the run's first epoch, its last and a stop
always leave one (a run resumed from an older checkpoint equals the uninterrupted run:
tests/test_reliability.py)."""

from __future__ import annotations

import pytest
from helpers import db_rows

from medpeft_cli.train.resume import CHECKPOINT_INTERVAL_S, INTERVAL_ENV, Checkpointer

# test_vit at 32 px on 120 images (5 % of synthetic-lesions' training split) at batch 16: 6 short epochs.
TINY = ["--dataset", "synthetic-lesions", "--weights", "random", "--backbone", "test_vit", "--image-size", "32",
        "--data-fraction", "0.05", "--batch-size", "16", "--method", "lora", "-q", "--no-site", "--epochs", "6"]  # fmt: skip


def test_a_checkpoint_is_due_first_then_after_the_interval(tmp_path):
    now = [100.0]
    checkpointer = Checkpointer(tmp_path, "k", min_interval_s=30.0, clock=lambda: now[0])
    assert checkpointer.due()
    checkpointer.save({"epoch": 1})
    assert checkpointer.exists() and not checkpointer.due()
    now[0] += 29.9
    assert not checkpointer.due()
    now[0] += 0.1
    assert checkpointer.due()


def test_a_process_that_does_not_write_keeps_the_same_schedule(tmp_path):
    now = [0.0]
    checkpointer = Checkpointer(tmp_path, "k", write=False, min_interval_s=30.0, clock=lambda: now[0])
    checkpointer.save({"epoch": 1})
    assert not checkpointer.exists() and not checkpointer.due()


@pytest.fixture
def saved_epochs(monkeypatch):
    """The `epoch` field ("continue in epoch N") of every checkpoint the run writes."""
    epochs: list[int] = []
    original = Checkpointer.save

    def save(self, state):
        epochs.append(state["epoch"])
        original(self, state)

    monkeypatch.setattr(Checkpointer, "save", save)
    return epochs


@pytest.mark.slow
def test_tiny_epochs_write_the_first_and_the_last_checkpoint_only(cli, tmp_path, monkeypatch, saved_epochs):
    monkeypatch.setenv(INTERVAL_ENV, "1e9")
    res = cli("train", *TINY)
    assert res.code == 0, res.stderr
    assert saved_epochs == [2, 7]  # after epoch 1 (the first) and after epoch 6 (the last)
    assert len(db_rows(tmp_path / "results" / "medpeft.duckdb")) == 1


@pytest.mark.slow
def test_with_no_interval_every_epoch_writes_one(cli, monkeypatch, saved_epochs):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    assert cli("train", *TINY).code == 0
    assert saved_epochs == [2, 3, 4, 5, 6, 7]


def test_the_interval_comes_from_the_environment_and_a_bad_value_is_one_line(tmp_path, monkeypatch):
    from medpeft_cli.errors import UserError

    monkeypatch.delenv(INTERVAL_ENV)
    assert Checkpointer(tmp_path, "k").min_interval_s == CHECKPOINT_INTERVAL_S == 30.0
    monkeypatch.setenv(INTERVAL_ENV, "600")
    assert Checkpointer(tmp_path, "k").min_interval_s == 600.0
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        with pytest.raises(UserError, match=f"{INTERVAL_ENV}=.* is not a number of seconds >= 0") as info:
            Checkpointer(tmp_path, "k")
        assert "\n" not in str(info.value)
