"""The DuckDB store: append/skip/replace, rebuild from run directories, locks, damaged files."""

import multiprocessing as mp

import duckdb
import pytest

from medpeft_cli.errors import UserError
from medpeft_cli.store import append, has_run, query, rebuild, write_run_dir
from medpeft_cli.store import results as results_module


def row(key: str, f1: float = 0.5, **extra) -> dict:
    return {"run_key": key, "dataset": "d", "method": "m", "test_macro_f1": f1, "finished_at": "2026-01-01T00:00:00", **extra}


def test_append_skips_a_finished_key_and_replace_overwrites(tmp_path):
    db = tmp_path / "r.duckdb"
    assert append(db, row("a", 0.5)) is True
    assert append(db, row("a", 0.9)) is False
    assert [r["test_macro_f1"] for r in query(db)] == [0.5]
    assert append(db, row("a", 0.9), replace=True) is True
    assert [r["test_macro_f1"] for r in query(db)] == [0.9]
    assert has_run(db, "a") and not has_run(db, "b")


def test_unknown_column_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="does not know"):
        append(tmp_path / "r.duckdb", row("a", bogus=1))


def test_old_database_gains_new_columns(tmp_path):
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE runs (run_key VARCHAR PRIMARY KEY, dataset VARCHAR)")
    con.execute("INSERT INTO runs VALUES ('old', 'd')")
    con.close()
    append(db, row("new"))
    rows = {r["run_key"]: r for r in query(db)}
    assert rows["old"]["test_macro_f1"] is None and rows["new"]["test_macro_f1"] == 0.5


def test_rebuild_recreates_the_table_from_run_directories(tmp_path):
    runs, db = tmp_path / "runs", tmp_path / "r.duckdb"
    for key in ("k1", "k2", "k3"):
        write_run_dir(runs, key, lambda d, key=key: row(key))
    (runs / ".tmp-half-written").mkdir()  # an interrupted run: ignored
    append(db, row("k1"))
    db.unlink()
    assert rebuild(db, runs) == 3
    assert sorted(r["run_key"] for r in query(db)) == ["k1", "k2", "k3"]


def test_failed_run_directory_leaves_nothing(tmp_path):
    def explode(d):
        (d / "partial.txt").write_text("x")
        raise RuntimeError("died half way")

    with pytest.raises(RuntimeError):
        write_run_dir(tmp_path / "runs", "k", explode)
    assert list((tmp_path / "runs").iterdir()) == []


def test_not_a_duckdb_file_is_a_clear_error(tmp_path):
    db = tmp_path / "r.duckdb"
    db.write_text("this is not a database")
    with pytest.raises(UserError, match="not a readable DuckDB database|cannot open results database"):
        append(db, row("a"))


def _hold_lock(db, ready, release):
    con = duckdb.connect(str(db))
    ready.set()
    release.wait(600)  # a guard only: the test sets it once it has seen the lock refused
    con.close()


def test_locked_database_is_retried_then_reported(tmp_path, monkeypatch):
    db = tmp_path / "r.duckdb"
    append(db, row("first"))
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(db, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        monkeypatch.setattr(results_module, "LOCK_TIMEOUT_S", 0.5)
        with pytest.raises(UserError, match="stayed locked .*medpeft store rebuild"):
            results_module.append(db, row("second"))
    finally:
        release.set()
        holder.join(30)
    assert append(db, row("second")) is True  # once released, the retry succeeds

# Many processes appending at once (none lost, none duplicated): tests/test_sweep_concurrent.py.
