"""The published-results table `reference_results`, in the same DuckDB file as the measured runs.

Published values live only here: never in `runs`, so they never enter a mean, rank or test of the
site. Each row keeps the values as printed (backbone, dataset, method, metric, value, ±) beside
medpeft's names for them (reference/mapping.py), or the reason it has none (`unmapped`).

Re-importing is idempotent: an import replaces every stored row of the same source and the same
paper tables (e.g. "Dutt et al. 2024" / Table 2) in one transaction, so importing a corrected file
again never leaves stale or duplicated values; rows of the source's other tables stay.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpeft_cli.store.results import _connect

TABLE = "reference_results"

COLUMNS: dict[str, str] = {
    "source": "VARCHAR",  # e.g. "Dutt et al. 2024"
    "ref_table": "VARCHAR",  # the paper's table, e.g. "Table 2"
    "task": "VARCHAR",  # classification | t2i (from the metric); NULL when unmapped
    "backbone": "VARCHAR",  # as printed
    "dataset": "VARCHAR",
    "method": "VARCHAR",
    "metric": "VARCHAR",
    "setting": "VARCHAR",  # the training data as printed: '' | data_fraction=0.1 | train_images=55K
    "value": "DOUBLE",
    "value_text": "VARCHAR",  # the value as printed
    "plus_minus": "VARCHAR",  # the ± as printed (its scale and meaning are the paper's)
    # medpeft's names (mapping.py); NULL where unmapped
    "medpeft_dataset": "VARCHAR",
    "medpeft_method": "VARCHAR",
    "medpeft_metric": "VARCHAR",
    "data_fraction": "DOUBLE",
    "backbone_arch": "VARCHAR",
    "backbone_pretraining": "VARCHAR",
    "backbone_pattern": "VARCHAR",
    "backbone_weights": "VARCHAR",
    "unmapped": "VARCHAR",  # why the row has no medpeft counterpart (listed on the reproduction page)
    # where it came from
    "file_name": "VARCHAR",
    "file_line": "INTEGER",
    "file_sha256": "VARCHAR",
    "imported_at": "VARCHAR",
}

_CONTENT = [c for c in COLUMNS if c not in ("imported_at", "file_name", "file_sha256", "file_line")]


@dataclass(frozen=True)
class ImportOutcome:
    inserted: int
    replaced: int  # earlier rows of the same source and tables that the import replaced
    unchanged: bool  # the earlier rows held exactly these values


def _ensure(con) -> None:
    cols = ", ".join(f'"{n}" {t}' for n, t in COLUMNS.items())
    con.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ({cols})")
    present = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE table_name = ?", [TABLE]).fetchall()}
    for name, sql_type in COLUMNS.items():
        if name not in present:
            con.execute(f'ALTER TABLE {TABLE} ADD COLUMN "{name}" {sql_type}')


def _has_table(con) -> bool:
    return con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ? AND table_schema = 'main'", [TABLE]).fetchone()[0] > 0


def _content(rows: list[dict[str, Any]]) -> list[tuple]:
    return sorted((tuple(r.get(c) for c in _CONTENT) for r in rows), key=repr)


def replace_source(db_path: Path, source: str, rows: list[dict[str, Any]]) -> ImportOutcome:
    """Store `rows` (dicts of COLUMNS) of `source`, replacing that source's rows of the same tables."""
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    rows = [{**r, "source": source, "imported_at": now} for r in rows]
    tables = sorted({r["ref_table"] for r in rows})
    marks = ", ".join("?" for _ in tables)
    with _connect(Path(db_path)) as con:
        _ensure(con)
        con.execute("BEGIN TRANSACTION")
        cur = con.execute(f"SELECT * FROM {TABLE} WHERE source = ? AND ref_table IN ({marks})", [source, *tables])
        names = [d[0] for d in cur.description]
        old = [dict(zip(names, v)) for v in cur.fetchall()]
        con.execute(f"DELETE FROM {TABLE} WHERE source = ? AND ref_table IN ({marks})", [source, *tables])
        quoted = ", ".join(f'"{n}"' for n in COLUMNS)
        con.executemany(
            f"INSERT INTO {TABLE} ({quoted}) VALUES ({', '.join('?' for _ in COLUMNS)})", [[r.get(n) for n in COLUMNS] for r in rows]
        )
        con.execute("COMMIT")
    return ImportOutcome(len(rows), len(old), bool(old) and _content(old) == _content(rows))


def load(db_path: Path) -> list[dict[str, Any]]:
    """Every published row of the database, in import order; [] when there is no database or no table."""
    db_path = Path(db_path)
    if not db_path.is_file():
        return []
    with _connect(db_path, read_only=True, missing_table_ok=True) as con:
        if not _has_table(con):
            return []
        cur = con.execute(f"SELECT * FROM {TABLE} ORDER BY source, ref_table, file_name, file_line")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, v)) for v in cur.fetchall()]
