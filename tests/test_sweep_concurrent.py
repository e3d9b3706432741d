"""Many array tasks finish at once: 32 processes write their run directory and append their row at
the same moment. No row may be lost or duplicated, the DuckDB file must stay readable, and
`medpeft store rebuild` must reproduce the same table from runs/."""

import multiprocessing as mp

import duckdb
import pytest

from medpeft_cli.store import append, write_run_dir

WRITERS = 32


def _row(key: str, writer: int) -> dict:
    return {"run_key": key, "status": "ok", "method": "lora", "seed": writer, "test_macro_f1": writer / 100, "finished_at": f"2026-01-01T00:00:{writer:02d}"}


def _finish_run(runs_dir, db, writer, barrier):
    """What the end of a run does: write runs/<key>/ atomically, then append the row."""
    key = f"task{writer:02d}"
    row = _row(key, writer)
    barrier.wait(600)  # every process appends at the same moment (the bound only guards against a hang)
    write_run_dir(runs_dir, key, lambda tmp: row)
    append(db, row)
    if writer % 8 == 0:
        append(db, row)  # a requeued task that appends again must not duplicate its row


def _table(db):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return sorted(con.execute("SELECT run_key, seed, test_macro_f1 FROM runs").fetchall())
    finally:
        con.close()


@pytest.mark.slow
def test_32_writers_at_once_then_rebuild(tmp_path, cli):
    runs_dir, db = tmp_path / "runs", tmp_path / "results" / "medpeft.duckdb"
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["medpeft_cli.store"])
    barrier = ctx.Barrier(WRITERS)
    workers = [ctx.Process(target=_finish_run, args=(runs_dir, db, w, barrier)) for w in range(WRITERS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(180)
    assert [w.exitcode for w in workers] == [0] * WRITERS

    table = _table(db)
    keys = [r[0] for r in table]
    assert len(keys) == len(set(keys)) == WRITERS
    assert table == sorted((f"task{w:02d}", w, w / 100) for w in range(WRITERS))
    con = duckdb.connect(str(db))  # the file is intact: it opens for writing and checkpoints
    con.execute("CHECKPOINT")
    con.close()

    rebuilt = tmp_path / "rebuilt.duckdb"
    res = cli("store", "rebuild", "--db", str(rebuilt), "--runs-dir", str(runs_dir))
    assert res.code == 0, res.stderr
    assert f"{WRITERS} runs" in res.stdout
    assert _table(rebuilt) == table
