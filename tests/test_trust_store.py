"""Results you can trust, the store side (issue 18): `store rebuild` accounts for every row, reading
commands never write the database they read and refuse a file that is not a medpeft store, `medpeft
runs` lists the store without a DuckDB client, no JSON holds a bare NaN, files follow the umask, and a
failure record advises --resume only when there is a checkpoint to resume from."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sqlite3
import stat
from pathlib import Path

import duckdb
import pytest
from helpers import db_rows

from medpeft_cli import duck, jsonsafe
from medpeft_cli.errors import UserError
from medpeft_cli.store import append, query, rebuild_store, write_run_dir
from medpeft_cli.store.rundir import failure_recorded, write_json

DB = "results/medpeft.duckdb"


def row(key: str, f1: float | None = 0.5, **extra) -> dict:
    return {
        "run_key": key, "status": "ok", "task": "classification", "dataset": "d", "backbone": "b", "method": "lora",
        "data_fraction": 1.0, "seed": 0, "test_macro_f1": f1, "finished_at": f"2026-01-01T00:00:0{len(key) % 10}", **extra,
    }  # fmt: skip


def stored(runs: Path, key: str, **extra) -> dict:
    """A run directory and its database row, as `medpeft train` leaves them."""
    r = row(key, **extra)
    write_run_dir(runs, key, lambda d: r)
    append(DB, r)
    return r


def one_error_line(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.code == 2 and len(lines) == 1 and lines[0].startswith("medpeft: error: "), (res.code, res.stderr)
    return lines[0]


# ---- store rebuild ----------------------------------------------------------------------------------


def test_rebuild_lists_unreadable_run_dirs_and_keeps_rows_it_cannot_refresh(cli, tmp_path):
    stored(Path("runs"), "aaa1")
    stored(Path("runs"), "bbb2")
    stored(Path("elsewhere"), "ccc3")  # another --runs-dir
    Path("runs/bbb2/result.json").write_text("{damaged")
    Path("runs/stray").mkdir()  # a folder without result.json
    write_run_dir(Path("runs"), "ddd4", lambda d: row("ddd4"))  # a run whose database write gave up

    res = cli("store", "rebuild")
    assert res.code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert any(line.startswith("unreadable: runs/bbb2: result.json is not valid JSON") for line in lines)
    assert any(line.startswith("unreadable: runs/stray: no result.json") for line in lines)
    assert any(line.startswith("kept: bbb2: ") for line in lines) and any(line.startswith("kept: ccc3: ") and "not under runs" in line for line in lines)
    assert "4 runs (1 added, 1 refreshed from their run directories, 2 kept as they were); 0 dropped; 2 run directories unreadable" in lines[-1]
    assert sorted(r["run_key"] for r in db_rows(Path(DB))) == ["aaa1", "bbb2", "ccc3", "ddd4"]


def test_rebuild_reads_every_runs_dir_given(cli, tmp_path):
    stored(Path("runs"), "aaa1")
    stored(Path("other"), "bbb2", test_macro_f1=0.7)
    Path(DB).unlink()  # the database is lost: both runs dirs rebuild it
    res = cli("store", "rebuild", "--runs-dir", "runs", "--runs-dir", "other")
    assert res.code == 0 and "2 runs (2 added" in res.stdout, res.stdout + res.stderr
    assert {r["run_key"]: r["test_macro_f1"] for r in db_rows(Path(DB))} == {"aaa1": 0.5, "bbb2": 0.7}


def test_rebuild_dry_run_shows_the_difference_and_writes_nothing(cli, tmp_path):
    stored(Path("runs"), "aaa1")
    stored(Path("gone"), "bbb2")
    write_run_dir(Path("runs"), "ccc3", lambda d: row("ccc3"))
    before = Path(DB).read_bytes()
    res = cli("store", "rebuild", "--dry-run", "--drop-missing")
    assert res.code == 0, res.stderr
    assert "dropped: bbb2: no run directory bbb2 under runs (--drop-missing)" in res.stdout
    assert "would rebuild" in res.stdout and "2 runs (1 added, 1 refreshed" in res.stdout and "1 dropped" in res.stdout
    assert Path(DB).read_bytes() == before and sorted(p.name for p in Path("results").iterdir()) == ["medpeft.duckdb"]

    res = cli("store", "rebuild", "--drop-missing")
    assert res.code == 0 and "dropped: bbb2" in res.stdout
    assert sorted(r["run_key"] for r in db_rows(Path(DB))) == ["aaa1", "ccc3"]


def test_rebuild_never_replaces_a_file_that_is_not_a_medpeft_store(cli, tmp_path):
    stored(Path("runs"), "aaa1")
    con = duckdb.connect("foreign.duckdb")
    con.execute("CREATE TABLE runs (id INTEGER, name VARCHAR)")
    con.close()
    before = Path("foreign.duckdb").read_bytes()
    line = one_error_line(cli("store", "rebuild", "--db", "foreign.duckdb"))
    assert "not medpeft's" in line and "move foreign.duckdb away" in line
    assert Path("foreign.duckdb").read_bytes() == before


# ---- reading commands never write what they read -------------------------------------------------


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _no_table(path: Path) -> None:
    duckdb.connect(str(path)).close()


def _unrelated_table(path: Path) -> None:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE runs (id INTEGER, name VARCHAR)")
    con.execute("INSERT INTO runs VALUES (1, 'x')")
    con.close()


def _sqlite(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE runs (run_key TEXT)")
    con.commit()
    con.close()


@pytest.mark.parametrize(
    ("make", "expected"),
    [(_empty, "an empty file"), (_no_table, "no `runs` table"), (_unrelated_table, "not medpeft's (columns id, name)"), (_sqlite, "a SQLite database")],
    ids=["empty", "no-table", "unrelated-runs-table", "sqlite"],
)
@pytest.mark.parametrize("command", [["report", "--out", "site"], ["runs"], ["runs", "--json"]], ids=["report", "runs", "runs-json"])
def test_reading_commands_refuse_a_file_that_is_not_a_medpeft_store_and_leave_it_unchanged(cli, tmp_path, make, expected, command):
    path = tmp_path / "x.duckdb"
    make(path)
    before = path.read_bytes()
    line = one_error_line(cli(*command, "--db", path.name))
    assert expected in line and "x.duckdb" in line
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["x.duckdb"]  # no site, no .wal


def test_training_refuses_an_unrelated_runs_table_before_any_work(cli, tmp_path):
    _unrelated_table(tmp_path / "x.duckdb")
    before = (tmp_path / "x.duckdb").read_bytes()
    line = one_error_line(cli("train", "--dataset", "synthetic-lesions", "--backbone", "test_vit", "--weights", "random", "--image-size", "32", "--epochs", "1", "-q", "--db", "x.duckdb"))
    assert "not medpeft's" in line
    assert (tmp_path / "x.duckdb").read_bytes() == before and not (tmp_path / "runs").exists()


def test_report_reads_an_older_store_read_only(cli, tmp_path):
    con = duckdb.connect("old.duckdb")  # a store from before most columns existed
    con.execute("CREATE TABLE runs (run_key VARCHAR PRIMARY KEY, dataset VARCHAR, method VARCHAR, status VARCHAR)")
    con.execute("INSERT INTO runs VALUES ('k1', 'd', 'lora', 'ok')")
    con.close()
    before = Path("old.duckdb").read_bytes()
    assert [r["run_key"] for r in query("old.duckdb", "status = 'ok' AND test_fid IS NULL")] == ["k1"]  # a filter on a column it lacks
    res = cli("runs", "--db", "old.duckdb", "--csv")
    assert res.code == 0 and "k1,ok,classification,d,,lora" in res.stdout, res.stderr
    assert Path("old.duckdb").read_bytes() == before


def test_every_duckdb_connection_has_extension_autoloading_off():
    con = duck.connect()
    try:
        settings = con.execute(
            "SELECT current_setting('autoinstall_known_extensions'), current_setting('autoload_known_extensions')"
        ).fetchone()
    finally:
        con.close()
    assert settings == (False, False)


def test_no_module_opens_duckdb_around_the_shared_connect():
    """Every connection goes through medpeft_cli/duck.py, which turns extension auto-install/-load off."""
    root = Path(__file__).resolve().parents[1] / "medpeft_cli"
    direct = [str(p.relative_to(root)) for p in root.rglob("*.py") if "duckdb.connect(" in p.read_text(encoding="utf-8") and p.name != "duck.py"]
    assert direct == []


# ---- medpeft runs -----------------------------------------------------------------------------------


def test_runs_lists_filters_and_prints_json_and_csv(cli, tmp_path):
    append(DB, row("aaa1", 0.81234, method="lora", dataset="breastmnist"))
    append(DB, row("bbb2", None, method="bitfit", status="diverged", dataset="breastmnist", status_detail="nan"))
    append(DB, row("ccc3", 0.6, method="lora", dataset="pathmnist", shots=4))
    append(DB, row("ddd4", None, method="lora", dataset="synthetic-captions", task="t2i", test_fid=66.589))
    before = Path(DB).read_bytes()

    table = cli("runs")
    assert table.code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["run", "key", "status"] and len(lines) == 5
    assert "0.8123" in table.stdout and "66.589" in table.stdout and "4 shots" in table.stdout and "test FID" in table.stdout

    listed = json.loads(cli("runs", "--json", "--dataset", "breastmnist").stdout)
    assert [(r["run_key"], r["status"], r["value"]) for r in listed] == [("aaa1", "ok", 0.81234), ("bbb2", "diverged", None)]
    assert set(listed[0]) == {"run_key", "status", "task", "dataset", "backbone", "method", "data_fraction", "shots", "seed", "metric", "value", "finished_at"}

    rows = list(csv.DictReader(io.StringIO(cli("runs", "--csv", "--method", "lora", "--status", "ok", "--task", "classification").stdout)))
    assert [r["run_key"] for r in rows] == ["aaa1", "ccc3"] and rows[1]["shots"] == "4"
    assert [r["run_key"] for r in json.loads(cli("runs", "--json", "--key", "cc").stdout)] == ["ccc3"]
    assert cli("runs", "--method", "nope").stdout.strip() == "no stored run matches"
    assert Path(DB).read_bytes() == before  # read-only


def test_runs_without_a_database_is_one_line(cli, tmp_path):
    assert "no results database at results/medpeft.duckdb" in one_error_line(cli("runs"))
    assert not Path("results").exists()


# ---- no bare NaN in JSON; NULL in the database ------------------------------------------------------


def test_nan_metrics_are_null_in_json_files_and_the_database(tmp_path):
    r = row("nan1", 0.5, test_auroc=float("nan"), test_ece=float("inf"))

    def fill(d: Path) -> dict:
        write_json(d / "metrics.json", {"test": {"auroc": float("nan"), "per_class": [1.0, float("nan")]}})
        return r

    write_run_dir(tmp_path / "runs", "nan1", fill)
    append(tmp_path / "r.duckdb", r)
    for name in ("result.json", "metrics.json"):
        text = (tmp_path / "runs" / "nan1" / name).read_text()
        assert "NaN" not in text and "Infinity" not in text
        json.loads(text, parse_constant=lambda c: pytest.fail(f"{name} holds {c}"))
    assert json.loads((tmp_path / "runs" / "nan1" / "metrics.json").read_text())["test"] == {"auroc": None, "per_class": [1.0, None]}
    [stored_row] = query(tmp_path / "r.duckdb")
    assert stored_row["test_auroc"] is None and stored_row["test_ece"] is None and stored_row["test_macro_f1"] == 0.5


def test_jsonsafe_turns_every_non_finite_number_into_null():
    import numpy as np

    value = {"a": float("nan"), "b": [np.float32("nan"), np.float64(1.5), np.int64(3)], "c": (float("-inf"), True, "NaN")}
    text = jsonsafe.dumps(value)
    assert json.loads(text) == {"a": None, "b": [None, 1.5, 3], "c": [None, True, "NaN"]}
    assert not math.isnan(jsonsafe.finite(2.0))


# ---- run directory permissions, failure records -----------------------------------------------------


def test_run_directory_files_follow_the_umask(tmp_path):
    import torch
    from safetensors.torch import save_file

    old = os.umask(0o022)
    try:
        def fill(d: Path) -> dict:
            save_file({"w": torch.zeros(2)}, str(d / "trainable.safetensors"))  # safetensors writes 0600
            (d / "adapter").mkdir()
            save_file({"w": torch.zeros(2)}, str(d / "adapter" / "adapter_model.safetensors"))
            return row("perm1")

        final = write_run_dir(tmp_path / "runs", "perm1", fill)
    finally:
        os.umask(old)
    for path in [final / "trainable.safetensors", final / "adapter" / "adapter_model.safetensors", final / "result.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


@pytest.mark.parametrize("has_checkpoint", [False, True], ids=["no-checkpoint", "checkpoint"])
def test_failure_record_advises_resume_only_with_a_checkpoint(tmp_path, has_checkpoint):
    checkpoint = tmp_path / "runs" / ".partial" / "k1" / "checkpoint.pt"
    if has_checkpoint:
        checkpoint.parent.mkdir(parents=True)
        checkpoint.write_bytes(b"x")
    with pytest.raises(RuntimeError), failure_recorded(tmp_path / "runs", "k1", {"seed": 0}, checkpoint=checkpoint):
        raise RuntimeError("crash")
    status = json.loads((tmp_path / "runs" / ".failed" / "k1" / "status.json").read_text())
    if has_checkpoint:
        assert "--resume" in status["resume"] and status["checkpoint"] == str(checkpoint)
    else:
        assert "--resume" not in status["resume"].replace("without --resume", "") and status["checkpoint"] is None
        assert "no checkpoint was saved" in status["resume"]


def test_store_errors_are_user_errors_for_library_callers(tmp_path):
    (tmp_path / "x.duckdb").write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    with pytest.raises(UserError, match="a SQLite database"):
        query(tmp_path / "x.duckdb")
    with pytest.raises(UserError, match="a SQLite database"):
        rebuild_store(tmp_path / "x.duckdb", tmp_path)


def test_a_writer_waits_for_a_store_another_writer_is_creating(tmp_path):
    """The first rows of a sweep land at once: a file still shorter than DuckDB's header (another writer
    creating it) is waited for, not refused as empty."""
    import threading

    from medpeft_cli.store import append

    db = tmp_path / "results.duckdb"
    db.touch()  # what a concurrent writer leaves for a moment
    creator_done = threading.Event()

    def create_the_store():  # the other writer: DuckDB's file appears in place of the empty one
        other = tmp_path / "other.duckdb"
        append(other, {"run_key": "k0", "status": "ok", "method": "bn", "dataset": "d", "backbone": "b"})
        other.replace(db)
        creator_done.set()

    timer = threading.Timer(0.5, create_the_store)
    timer.start()
    append(db, {"run_key": "k1", "status": "ok", "method": "bn", "dataset": "d", "backbone": "b"})
    timer.join()
    assert creator_done.is_set()
    with duckdb.connect(str(db), read_only=True) as con:
        assert sorted(r[0] for r in con.execute("SELECT run_key FROM runs").fetchall()) == ["k0", "k1"]


@pytest.mark.parametrize(
    ("content", "waited_for"),
    [
        (b"", True),  # DuckDB has created the file and not yet written its header
        (b"\x00" * 8 + b"DUCK", True),  # the start of DuckDB's header
        (b"SQLite format 3\x00" + b"\x00" * 4000, False),  # short, but not DuckDB: refused at once
        (b"not a database\n", False),
        (b"\x00" * 8 + b"DUCK" + b"\x00" * 5000, False),  # a whole header: DuckDB opens (or refuses) it
    ],
)
def test_only_a_short_file_that_can_become_duckdb_is_waited_for(tmp_path, content, waited_for):
    from medpeft_cli.store.results import _being_created

    db = tmp_path / "results.duckdb"
    db.write_bytes(content)
    assert _being_created(db) is waited_for
