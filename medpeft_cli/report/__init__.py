"""The static leaderboard site: result rows -> tables, statistics and SVG plots -> HTML (Jinja).
No torch anywhere in this package.

    build_site(rows, out_dir, methods=..., runs_dir=..., base_url=...)
    build_site_from_db(db_path, out_dir, ...)   the same, reading the DuckDB results store

The site opens from file:// (relative links, no network, a small local script for sorting and
filtering; every page reads the same without it):

    index.html                overview: one table per backbone/task/weights/protocol, methods x datasets
    datasets/<name>.html      data-volume and Pareto plots, per-class F1, all runs on the dataset
    methods/<name>.html       description, citation, capabilities, results across datasets
    methods.html              the capability matrix
    significance.html         Friedman + Nemenyi critical-difference diagrams, Wilcoxon vs full
    runs/<xx>.html#<run_key>  one run: spec, provenance, metrics, curves, confusion matrix, files
                              (records grouped by key hash; static/run.js draws them)
    downloads.html            results.csv / .json / .parquet and summary.csv
    reproduction/<source>.html  published results of one source against the measured cells
    releases/<name>/          copies of the immutable releases (`medpeft report --release NAME`)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from medpeft_cli.report.render import render_site

__all__ = ["build_site", "build_site_from_db"]

Methods = Iterable[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]] | None


def build_site(
    rows: list[dict[str, Any]],
    out_dir: str | Path,
    title: str = "medpeft leaderboard",
    db_label: str | None = None,
    *,
    generated_at: datetime | None = None,
    methods: Methods = None,
    runs_dir: str | Path | None = None,
    base_url: str | None = None,
    references: list[dict[str, Any]] | None = None,
) -> Path:
    """Render the site for `rows` into `out_dir`; returns the path of index.html.

    `methods`: method metadata (name, kind, families, cite, summary, default_lr), as the CLI reads
    it from the method registry; `runs_dir`: where run directories are (optional: confusion matrices,
    samples and files); `base_url`: where the site will be published (canonical links, sitemap);
    `references`: published results shown beside the measured cells and on reproduction pages
    (rows of the reference_results table, medpeft_cli/reference/).
    """
    return render_site(
        rows, out_dir, title=title, db_label=db_label, generated_at=generated_at, methods=methods, runs_dir=runs_dir,
        base_url=base_url, references=references,
    )  # fmt: skip


def build_site_from_db(
    db_path: str | Path,
    out_dir: str | Path,
    title: str = "medpeft leaderboard",
    *,
    methods: Methods = None,
    runs_dir: str | Path | None = None,
    base_url: str | None = None,
) -> Path:
    """Render the site for every row of the DuckDB results store at `db_path`, with the published results
    stored there and links to the releases under releases/ (report/publish.py)."""
    from medpeft_cli.report.publish import build_from_store

    return build_from_store(db_path, out_dir, title, methods=methods, runs_dir=runs_dir, base_url=base_url).index
