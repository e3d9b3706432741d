"""The static leaderboard site: result rows -> tables -> HTML (Jinja), with no torch anywhere.

    build_site(rows, out_dir)          rows as returned by `medpeft_cli.store.query`
    build_site_from_db(db_path, out)   the same, reading the DuckDB results store

The site opens from file:// (relative links, no scripts, no network): index.html with one table
per dataset/backbone, runs/<run_key>.html per run, static/style.css, results.json and results.csv.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from medpeft_cli.report.render import render_site

__all__ = ["build_site", "build_site_from_db"]


def build_site(
    rows: list[dict[str, Any]],
    out_dir: str | Path,
    title: str = "medpeft leaderboard",
    db_label: str | None = None,
    *,
    generated_at: datetime | None = None,
) -> Path:
    """Render the site for `rows` into `out_dir`; returns the path of index.html."""
    return render_site(rows, out_dir, title=title, db_label=db_label, generated_at=generated_at)


def build_site_from_db(db_path: str | Path, out_dir: str | Path, title: str = "medpeft leaderboard") -> Path:
    """Render the site for every row of the DuckDB results store at `db_path`."""
    from medpeft_cli.store.results import query

    return build_site(query(db_path), out_dir, title=title, db_label=str(db_path))
