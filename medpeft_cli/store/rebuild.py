"""`medpeft store rebuild`: recreate the DuckDB table from run directories, accounting for every row.

Every run directory under each `--runs-dir` is read; a row of the existing database is

    refreshed   when its run directory was read (the directory's result.json is the truth),
    kept        when its run directory is not under the given runs dirs (stored elsewhere: another
                --runs-dir, another machine) or could not be read (the row is all that is left of it),
    dropped     only with `drop_missing`, when its run directory is under none of the given runs dirs;

rows of run directories the database lacked are `added`, and each run directory that could not be read
is listed with the reason. Nothing is dropped without being named. The new database is written beside
the old one and renamed over it (a failure half way leaves the old one as it was); a dry run writes
nothing. An existing file that is not a medpeft store is refused, never replaced. The file's other
tables (e.g. the published results of `medpeft reference import`) are copied over unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpeft_cli.errors import UserError
from medpeft_cli.jsonsafe import finite
from medpeft_cli.store.results import COLUMNS, TABLE, _check_row, _connect, _insert, _select_all, _table_columns
from medpeft_cli.store.rundir import RESULT_FILE


@dataclass
class RebuildPlan:
    """What a rebuild writes and why: every row of the old database and every run directory is in one list."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # run_key -> the row to write
    added: list[str] = field(default_factory=list)  # read from a run directory, not in the old database
    refreshed: list[str] = field(default_factory=list)  # in the old database, and read from its run directory
    kept: list[tuple[str, str]] = field(default_factory=list)  # (run_key, why): old row written as it was
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (run_key, why): old row not written
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (run directory, why)
    duplicates: list[tuple[str, Path]] = field(default_factory=list)  # (run_key, directory not used: the key was read earlier)
    other_tables: list[str] = field(default_factory=list)  # the old file's other tables, copied unchanged

    def lines(self) -> list[str]:
        """One line per problem: unreadable run directories, kept and dropped rows, duplicates."""
        out = [f"unreadable: {path}: {why}" for path, why in self.unreadable]
        out += [f"kept: {key}: {why}" for key, why in self.kept]
        out += [f"dropped: {key}: {why}" for key, why in self.dropped]
        out += [f"duplicate: {path}: run {key} was already read from another --runs-dir; this copy is not used" for key, path in self.duplicates]
        return out

    def summary(self) -> str:
        return (
            f"{len(self.rows)} runs ({len(self.added)} added, {len(self.refreshed)} refreshed from their run directories, "
            f"{len(self.kept)} kept as they were); {len(self.dropped)} dropped; {len(self.unreadable)} run directories unreadable"
            + (f"; tables copied unchanged: {', '.join(self.other_tables)}" if self.other_tables else "")
        )


def read_run_dir(run_dir: Path) -> dict[str, Any]:
    """The store row of one run directory (its result.json, the store's columns only); UserError saying why not."""
    path = run_dir / RESULT_FILE
    if not path.is_file():
        raise UserError(f"no {RESULT_FILE}")
    try:
        row = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {RESULT_FILE} ({exc})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{RESULT_FILE} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(row, dict):
        raise UserError(f"{RESULT_FILE} holds a {type(row).__name__}, not a result row")
    if row.get("run_key") != run_dir.name:
        raise UserError(f"{RESULT_FILE} names run {row.get('run_key')!r}, not this directory's name")
    return {k: finite(v) for k, v in row.items() if k in COLUMNS}


def _run_dirs(runs_dir: Path) -> list[Path]:
    """The run directories under runs_dir (temporary, partial and failure folders start with '.')."""
    if not runs_dir.is_dir():
        raise UserError(f"runs directory {runs_dir} does not exist; pass --runs-dir (repeat it for several)")
    return sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _old_rows(db_path: Path) -> dict[str, dict[str, Any]]:
    """The rows of the existing database (none when there is no file); a file that is not a medpeft store is refused."""
    if not db_path.exists():
        return {}
    try:
        with _connect(db_path, read_only=True, missing_table_ok=True) as con:
            present = _table_columns(con)
            if present is None:
                return {}
            cur = con.execute(_select_all(present))
            names = [d[0] for d in cur.description]
            return {row["run_key"]: row for row in (dict(zip(names, values)) for values in cur.fetchall())}
    except UserError as exc:
        raise UserError(f"{exc}; to recreate the store from the run directories alone, move {db_path} away first") from None


def plan_rebuild(db_path: Path, runs_dirs: list[Path], drop_missing: bool = False) -> RebuildPlan:
    """Read every run directory and the existing database; decide each row's fate (nothing is written)."""
    plan = RebuildPlan()
    old = _old_rows(Path(db_path))
    plan.other_tables = other_tables(Path(db_path))
    damaged: dict[str, str] = {}  # run_key -> why its run directory could not be read
    for runs_dir in dict.fromkeys(Path(d) for d in runs_dirs):  # a runs dir given twice is read once
        for run_dir in _run_dirs(runs_dir):
            try:
                row = read_run_dir(run_dir)
            except UserError as exc:
                plan.unreadable.append((run_dir, str(exc)))
                damaged.setdefault(run_dir.name, f"its run directory {run_dir} is unreadable (listed above); the stored row is kept as it was")
                continue
            if row["run_key"] in plan.rows:
                plan.duplicates.append((row["run_key"], run_dir))
                continue
            plan.rows[row["run_key"]] = row
            (plan.refreshed if row["run_key"] in old else plan.added).append(row["run_key"])
    given = ", ".join(str(d) for d in runs_dirs)
    for key, row in old.items():
        if key in plan.rows:
            continue
        if key in damaged:
            plan.kept.append((key, damaged[key]))
        elif drop_missing:
            plan.dropped.append((key, f"no run directory {key} under {given} (--drop-missing)"))
            continue
        else:
            plan.kept.append((key, f"its run directory is not under {given} (stored elsewhere); pass that --runs-dir too, or --drop-missing to drop it"))
        plan.rows[key] = {k: v for k, v in row.items() if k in COLUMNS}
    return plan


def rebuild(db_path: str | Path, runs_dirs: str | Path | list[str | Path], drop_missing: bool = False) -> int:
    """`rebuild_store` for callers that want the number of rows written only."""
    return len(rebuild_store(db_path, runs_dirs, drop_missing=drop_missing).rows)


def rebuild_store(db_path: str | Path, runs_dirs: str | Path | list[str | Path], dry_run: bool = False, drop_missing: bool = False) -> RebuildPlan:
    """Recreate the table from the run directories under `runs_dirs` and the old rows they do not cover
    (see the module docstring); with `dry_run` only the plan is returned."""
    db_path = Path(db_path)
    dirs = [Path(d) for d in ([runs_dirs] if isinstance(runs_dirs, (str, Path)) else runs_dirs)]
    plan = plan_rebuild(db_path, dirs, drop_missing)
    if dry_run:
        return plan
    tmp = db_path.with_name(db_path.name + ".rebuild-tmp")
    tmp.unlink(missing_ok=True)
    Path(str(tmp) + ".wal").unlink(missing_ok=True)
    try:
        with _connect(tmp) as con:
            con.execute("BEGIN TRANSACTION")
            for row in plan.rows.values():
                _check_row(row)
                _insert(con, row)
            _copy_other_tables(con, db_path, plan.other_tables)
            con.execute("COMMIT")
            count = con.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
        if count != len(plan.rows):  # a guard: every planned row must be in the new file
            raise UserError(f"the rebuilt database holds {count} rows, not {len(plan.rows)}; {db_path} was left as it was")
        tmp.replace(db_path)
    finally:
        tmp.unlink(missing_ok=True)
        Path(str(tmp) + ".wal").unlink(missing_ok=True)
    Path(str(db_path) + ".wal").unlink(missing_ok=True)  # the old file's log, if any, belongs to the replaced file
    return plan


def other_tables(db_path: Path) -> list[str]:
    """The tables of an existing store besides the runs table (none when there is no file)."""
    if not db_path.exists():
        return []
    with _connect(db_path, read_only=True, missing_table_ok=True) as con:
        found = con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' ORDER BY table_name").fetchall()
    return [name for (name,) in found if name != TABLE]


def _copy_other_tables(con, db_path: Path, names: list[str]) -> None:
    if not names:
        return
    con.execute("ATTACH ? AS old (READ_ONLY)", [str(db_path)])
    for name in names:
        quoted = '"' + name.replace('"', '""') + '"'
        con.execute(f"CREATE TABLE {quoted} AS SELECT * FROM old.{quoted}")
    con.execute("DETACH old")
