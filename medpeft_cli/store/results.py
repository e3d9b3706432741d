"""The DuckDB results table: schema, append, query (rebuild: store/rebuild.py, listing: store/listing.py).

DuckDB allows one process to hold a database file at a time (even read-only opens conflict), so
every operation opens, does one short transaction and closes, and retries while another process
holds the lock. The run directories (`runs/<run_key>/result.json`) are the source of truth: the
table can always be rebuilt from them, so a write that gives up loses nothing.

Reading (query, has_run, check_database) opens the file read-only and never creates or changes a table;
a file that is not a medpeft store (empty, SQLite, a DuckDB file without medpeft's `runs` table, or with
an unrelated table of that name) is one line, for readers and writers alike. Connections come from
medpeft_cli/duck.py (no extension is installed or loaded automatically).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from medpeft_cli import duck
from medpeft_cli.errors import UserError
from medpeft_cli.jsonsafe import finite
from medpeft_cli.store.rundir import check_writable_dir

TABLE = "runs"
DUCKDB_MAGIC = b"DUCK"  # bytes 8-11 of every DuckDB database file

# Column name -> DuckDB type. New columns may be appended by later protocol versions; existing
# databases gain them on open (ALTER TABLE ADD COLUMN), old rows read NULL there.
COLUMNS: dict[str, str] = {
    "run_key": "VARCHAR PRIMARY KEY",
    "protocol_version": "INTEGER",
    "status": "VARCHAR",
    "task": "VARCHAR",
    # what was run
    "dataset": "VARCHAR",
    "backbone": "VARCHAR",
    "weights": "VARCHAR",
    "method": "VARCHAR",
    "data_fraction": "DOUBLE",
    "seed": "INTEGER",
    "epochs": "INTEGER",
    "lr": "DOUBLE",
    "lr_source": "VARCHAR",  # given | method-default | tuned (medpeft tune, issue 7)
    "tuned_lr_trials": "INTEGER",  # finished Optuna trials the tuned lr was chosen from
    "tune_study": "VARCHAR",  # the Optuna study that gave the tuned lr
    "batch_size": "INTEGER",
    "image_size": "INTEGER",
    "precision": "VARCHAR",
    "spec_json": "VARCHAR",
    "speed_json": "VARCHAR",  # the speed-only options (not in the run key) this row was computed with (issue 10)
    # results (test metrics come from the epoch selected on validation macro-F1)
    "test_macro_f1": "DOUBLE",
    "test_accuracy": "DOUBLE",
    "test_balanced_accuracy": "DOUBLE",
    "test_auroc": "DOUBLE",
    "val_macro_f1": "DOUBLE",
    "best_epoch": "INTEGER",
    "num_classes": "INTEGER",
    "class_names_json": "VARCHAR",
    "per_class_f1_json": "VARCHAR",
    "metrics_json": "VARCHAR",
    # size and cost
    "train_images": "INTEGER",
    "trainable_params": "BIGINT",
    "head_params": "BIGINT",
    "method_params": "BIGINT",
    "total_params": "BIGINT",
    "trainable_pct": "DOUBLE",
    "backbone_params": "BIGINT",  # the backbone without its head (base of a percentage budget)
    "param_budget": "BIGINT",  # the method-parameter budget asked for (--param-budget); achieved: method_params
    "wall_time_s": "DOUBLE",
    "train_images_per_s": "DOUBLE",
    "peak_memory_mb": "DOUBLE",
    "memory_kind": "VARCHAR",
    # provenance
    "medpeft_version": "VARCHAR",
    "git_commit": "VARCHAR",
    "python_version": "VARCHAR",
    "torch_version": "VARCHAR",
    "timm_version": "VARCHAR",
    "peft_version": "VARCHAR",
    "accelerate_version": "VARCHAR",
    "device": "VARCHAR",
    "world_size": "INTEGER",
    "container_image": "VARCHAR",
    "dataset_checksum": "VARCHAR",
    "dataset_source": "VARCHAR",
    "weights_source": "VARCHAR",
    "backbone_checksum": "VARCHAR",
    "backbone_source": "VARCHAR",  # timm | transformers | custom: which kind of source --backbone named (issue 9)
    "started_at": "VARCHAR",
    "finished_at": "VARCHAR",
    "status_detail": "VARCHAR",  # why a run is not 'ok' (e.g. 'diverged': where the loss became NaN/Inf) (issue 8)
    # data regime, calibration and subgroups (issue 4)
    "shots": "INTEGER",
    "class_weighting": "VARCHAR",
    "split_checksum": "VARCHAR",
    "test_ece": "DOUBLE",
    "worst_group_f1": "DOUBLE",
    "worst_group": "VARCHAR",
    "group_gap": "DOUBLE",
    # text-to-image runs (issue 6): FID/KID mean and std over generation seeds, what they were measured with
    "test_fid": "DOUBLE",
    "test_fid_std": "DOUBLE",
    "test_kid": "DOUBLE",
    "test_kid_std": "DOUBLE",
    "fid_features": "VARCHAR",  # inception | dinov2 | <timm name>[@random|@file]
    "fid_samples": "INTEGER",  # images generated per seed (= real test images compared)
    "fid_seeds": "VARCHAR",  # JSON list of the generation seeds
    "train_loss": "DOUBLE",  # last epoch's mean training loss (noise-prediction MSE)
    "val_loss": "DOUBLE",  # validation loss with fixed noise after training
    "generate_images_per_s": "DOUBLE",
    "diffusers_version": "VARCHAR",
    "transformers_version": "VARCHAR",
    # run length and model selection (issue 15): optimizer steps run (epochs is the epochs run), the selected evaluation's step
    "train_steps": "INTEGER",
    "best_step": "INTEGER",
    # runs merged from a result bundle (issue 19, `medpeft bundle import`): the bundle file's sha256 and who sent it
    "bundle_sha256": "VARCHAR",
    "submitter": "VARCHAR",
}

# How long a writer waits for another process's lock before giving up (seconds).
LOCK_TIMEOUT_S = 120.0
# How long a writer waits for a file shorter than DuckDB's header to become a database (another writer
# creating it) before calling it an empty file (seconds).
CREATION_TIMEOUT_S = 10.0
HEADER_BYTES = 4096


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


def _being_created(db_path: Path) -> bool:
    """The file exists but is shorter than DuckDB's header, and what it holds so far could be the start
    of one (DuckDB writes its magic at byte 8 in its first write): another writer may be creating it
    now. A short file with other first bytes (a SQLite file, text) is not waited for."""
    try:
        with open(db_path, "rb") as fh:
            head = fh.read(HEADER_BYTES)
    except OSError:
        return False
    return len(head) < HEADER_BYTES and (len(head) < 12 or head[8:12] == DUCKDB_MAGIC)


def _wait_while_created(db_path: Path) -> None:
    """Training processes of one sweep read the store while another may be creating it: give a file
    shorter than DuckDB's header a moment to become a database (a file that stays short is then refused
    as empty)."""
    deadline = time.monotonic() + CREATION_TIMEOUT_S
    delay = 0.02
    while _being_created(db_path) and time.monotonic() < deadline:
        time.sleep(delay * (1 + random.random()))
        delay = min(delay * 2, 1.0)


def check_duckdb_file(db_path: Path, writing: bool = False) -> None:
    """One line when an existing --db file is not a DuckDB database: empty, SQLite, anything else. Read
    before DuckDB opens it (DuckDB would try to download an extension for a SQLite file). A writer lets
    DuckDB open a file shorter than its header: another writer may be creating it this very moment (the
    first rows of a sweep land at once), and DuckDB's own file lock orders the two."""
    try:
        with open(db_path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise UserError(f"cannot read results database {db_path}: {exc.strerror}; pass another --db") from None
    if writing and len(head) < 12:
        return
    if not head:
        what = "an empty file"
    elif head.startswith(b"SQLite format 3\x00"):
        what = "a SQLite database"
    elif head[8:12] != DUCKDB_MAGIC:
        what = "its first bytes are not DuckDB's"
    else:
        return
    raise UserError(f"{db_path} is not a readable DuckDB database ({what}), so not a medpeft results store; pass the --db that medpeft wrote, or move the file away")


def _open(db_path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, retried while another process holds the file's lock."""
    timeout_s = LOCK_TIMEOUT_S
    started = time.monotonic()
    deadline = started + timeout_s
    delay = 0.02
    while True:
        try:
            return duck.connect(db_path, read_only=read_only)
        except duckdb.IOException as exc:
            if not read_only and _being_created(db_path) and time.monotonic() < started + CREATION_TIMEOUT_S:
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 1.0)
                continue
            if not _is_lock_error(exc):
                raise UserError(f"cannot open results database {db_path}: {str(exc).splitlines()[0]}; check the path is a DuckDB file you can {'read' if read_only else 'write'}") from None
            if time.monotonic() >= deadline:
                raise UserError(
                    f"results database {db_path} stayed locked by another process for {timeout_s:.0f} s; "
                    "the run's files are safe in its run directory: run `medpeft store rebuild` when the other process ends"
                ) from None
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 1.0)
        except duckdb.Error as exc:
            raise UserError(f"{db_path} is not a readable DuckDB database ({str(exc).splitlines()[0]}); move it away or pass another --db") from None


@contextmanager
def _connect(db_path: Path, read_only: bool = False, missing_table_ok: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the database, retrying while it is locked. Writing: create it and the table if needed (an
    older medpeft table gains the new columns). `read_only`: never create or change anything, and refuse
    a file that holds no medpeft table (unless `missing_table_ok`)."""
    db_path = Path(db_path)
    if read_only and not db_path.is_file():
        raise UserError(f"no results database at {db_path}; run `medpeft train` first or pass --db")
    if not read_only:
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the results directory {db_path.parent}: {exc.strerror}; choose a writable --db path") from None
    if db_path.exists():
        check_duckdb_file(db_path, writing=not read_only)
    con = _open(db_path, read_only)
    try:
        present = _table_columns(con)
        if present is not None and not _is_medpeft_table(present):
            shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
            raise UserError(f"{db_path} holds a table `{TABLE}` that is not medpeft's (columns {shown}); pass the --db that medpeft wrote, or another path")
        if read_only and present is None and not missing_table_ok:
            raise UserError(f"{db_path} holds no medpeft results (no `{TABLE}` table); pass the --db that `medpeft train` wrote, or run `medpeft store rebuild`")
        if not read_only:
            _ensure_schema(con, present)
        yield con
    finally:
        con.close()


def _table_columns(con: duckdb.DuckDBPyConnection) -> list[str] | None:
    """The columns of the results table in file order, or None when the database has no such table."""
    names = [r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? AND table_schema = 'main' ORDER BY ordinal_position", [TABLE]
    ).fetchall()]  # fmt: skip
    return names or None


def _is_medpeft_table(columns: list[str]) -> bool:
    """A table keyed by run_key whose columns are mostly medpeft's (an older or newer store too)."""
    return "run_key" in columns and 2 * len(set(columns) & set(COLUMNS)) >= len(columns)


def _ensure_schema(con: duckdb.DuckDBPyConnection, present: list[str] | None) -> None:
    if present is None:
        cols = ", ".join(f'"{name}" {sql_type}' for name, sql_type in COLUMNS.items())
        con.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ({cols})")
        return
    for name, sql_type in COLUMNS.items():
        if name not in present:
            con.execute(f'ALTER TABLE {TABLE} ADD COLUMN "{name}" {sql_type.replace(" PRIMARY KEY", "")}')


def _select_all(present: list[str]) -> str:
    """SELECT of every column, those an older store lacks as typed NULLs (so filters on them work)."""
    missing = [f'CAST(NULL AS {COLUMNS[n].replace(" PRIMARY KEY", "")}) AS "{n}"' for n in COLUMNS if n not in present]
    return f"SELECT * FROM (SELECT *{''.join(', ' + m for m in missing)} FROM {TABLE})"


def _check_row(row: dict[str, Any]) -> None:
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"result row has columns the store does not know: {sorted(unknown)}")
    if not row.get("run_key"):
        raise ValueError("result row has no run_key")


def _insert(con: duckdb.DuckDBPyConnection, row: dict[str, Any]) -> bool:
    names = list(row)
    placeholders = ", ".join("?" for _ in names)
    quoted = ", ".join(f'"{n}"' for n in names)
    cur = con.execute(
        f"INSERT INTO {TABLE} ({quoted}) VALUES ({placeholders}) ON CONFLICT (run_key) DO NOTHING RETURNING run_key",
        [row[n] for n in names],
    )
    return cur.fetchone() is not None


def append(db_path: str | Path, row: dict[str, Any], replace: bool = False) -> bool:
    """Insert one finished run. Returns False when the run_key is already present (and not replaced).
    NaN/inf metrics are stored as NULL (as in result.json)."""
    _check_row(row)
    row = {k: finite(v) for k, v in row.items()}
    with _connect(Path(db_path)) as con:
        con.execute("BEGIN TRANSACTION")
        if replace:
            con.execute(f"DELETE FROM {TABLE} WHERE run_key = ?", [row["run_key"]])
        inserted = _insert(con, row)
        con.execute("COMMIT")
    return inserted


def check_database(db_path: str | Path) -> None:
    """Fail before a run trains if its row could not be stored: a file that is not a medpeft DuckDB
    store, one locked beyond the retry budget, or a directory that cannot be created. Creates and
    changes nothing."""
    db_path = Path(db_path)
    if db_path.exists():
        if db_path.is_dir():
            raise UserError(f"{db_path} is a directory; pass --db the path of a DuckDB file")
        _wait_while_created(db_path)
        with _connect(db_path, read_only=True, missing_table_ok=True):
            pass
    else:
        check_writable_dir(db_path.parent, "--db")


def has_run(db_path: str | Path, run_key: str) -> bool:
    if not Path(db_path).exists():
        return False
    _wait_while_created(Path(db_path))
    with _connect(Path(db_path), read_only=True, missing_table_ok=True) as con:
        if _table_columns(con) is None:
            return False
        return con.execute(f"SELECT count(*) FROM {TABLE} WHERE run_key = ?", [run_key]).fetchone()[0] > 0


def query(db_path: str | Path, where: str = "", params: list[Any] | None = None) -> list[dict[str, Any]]:
    """All rows (optionally filtered by a SQL `where` clause with `?` params) as dicts with every column
    of COLUMNS, oldest first. Opens the file read-only: reading never creates or changes a table."""
    with _connect(Path(db_path), read_only=True) as con:
        sql = _select_all(_table_columns(con) or []) + (f" WHERE {where}" if where else "") + " ORDER BY finished_at, run_key"
        cur = con.execute(sql, params or [])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, values)) for values in cur.fetchall()]
