"""Every DuckDB connection medpeft opens goes through `connect`: DuckDB never installs or loads an
extension on its own (by default it downloads one when it meets, say, a SQLite file), so medpeft makes
no network attempt, offline or not. Parquet is built into DuckDB's Python package and needs none.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb

NO_AUTO_EXTENSIONS = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


def connect(database: str | Path = ":memory:", read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection (in memory by default) with extension auto-install and auto-load off."""
    import duckdb  # imported on first use: commands that never open a database start faster

    return duckdb.connect(str(database), read_only=read_only, config=dict(NO_AUTO_EXTENSIONS))
