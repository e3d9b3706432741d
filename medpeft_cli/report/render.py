"""Build the site: rows -> runs -> boards/views/tests -> Jinja pages, SVG charts and downloads.

Every template is autoescaped and undefined names are errors. All links are relative, so the site
opens from file:// as well as from any static host; --base-url only adds canonical links and a sitemap.
"""

from __future__ import annotations

import multiprocessing
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

import medpeft_cli.report.export as export
import medpeft_cli.report.fragments as fragments
import medpeft_cli.report.pages as pages
import medpeft_cli.report.published as published
import medpeft_cli.report.runfiles as runfiles
from medpeft_cli import __version__
from medpeft_cli.errors import UserError
from medpeft_cli.report.assets import static_dir, templates_dir
from medpeft_cli.report.boards import build_boards, cell_title
from medpeft_cli.report.catalog import Catalog
from medpeft_cli.report.formatting import (
    decimals,
    estimate,
    filter_value,
    fmt,
    pvalue,
    sort_value,
    span,
)
from medpeft_cli.report.keys import page_name, slug, unique_by_key
from medpeft_cli.report.overview import build_views
from medpeft_cli.report.release import copy_releases
from medpeft_cli.report.runpage import METRICS_LAYOUT, run_href, shard, shard_records
from medpeft_cli.report.runs import Run, make_run
from medpeft_cli.report.significance import analyse_boards
from medpeft_cli.report.sitedir import write_site

_BASE_URL = re.compile(r"https?://[^\s\"'<>\\]+")


def make_env(template_dir: Path | None = None) -> Environment:
    """The Jinja environment: autoescape on for every template, undefined names are errors."""
    env = Environment(
        loader=FileSystemLoader(str(template_dir or templates_dir())),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(fmt=fmt, span=span, estimate=estimate, decimals=decimals, pvalue=pvalue, fv=filter_value, sv=sort_value)
    env.globals.update(
        run_href=run_href, method_href=pages.method_href, dataset_href=pages.dataset_href, cell_title=cell_title,
        estimate_cell=fragments.estimate_cell, overview_row=fragments.overview_row, fields=fragments.fields,
        history_table=fragments.history_table, key_values=fragments.key_values, per_class_table=fragments.per_class_table,
        run_rows=fragments.run_rows, chart_svg=fragments.chart_svg, cd_svg=fragments.cd_svg,
    )  # fmt: skip
    return env


@cache
def _site_env() -> Environment:
    """The site's environment, kept for the process: its templates are compiled once, not per build."""
    return make_env()


def check_base_url(base_url: str | None) -> str | None:
    """'https://host/path/' (with one trailing slash), or None."""
    if base_url is None or base_url == "":
        return None
    if not _BASE_URL.fullmatch(base_url):
        raise UserError(f"--base-url {base_url!r} is not an http(s) URL; pass e.g. https://you.github.io/medpeft/")
    return base_url.rstrip("/") + "/"


def _write(path: Path, text: str) -> None:
    with open(path, "wb") as fh:  # binary: skips the text layer, which costs per file on a large site
        fh.write(text.encode("utf-8"))


DOWNLOADS = (
    ("results.csv", "every row, comma-separated, with a header"),
    ("results.json", "every row as a JSON list of objects (NaN written as null)"),
    ("results.parquet", "every row as Parquet, with the store's column types"),
    ("summary.csv", "the aggregated cells of every overview table: n, mean, sd, 95 % CI, rank per method, dataset, fraction and metric"),
)


# A site with at least this many runs is built by two processes (below, the fork costs more than it saves).
PARALLEL_MIN_RUNS = 2000
_JOB: tuple[SiteBuilder, Path] | None = None  # what the forked process works on (inherited, never pickled)


def _second_process() -> dict[str, float]:
    builder, tmp = _JOB  # type: ignore[misc]
    builder.timings = {}
    builder.row_files(tmp)
    builder.run_pages(tmp)
    return {f"{phase} (second process)": t for phase, t in builder.timings.items()}


class SiteBuilder:
    """Renders one site into a (temporary) folder.

    Two independent halves: what needs only the runs (the run shards and the row downloads) and what
    needs the aggregation (boards, views, tests -> summary pages and summary.csv). On a large site a
    forked second process writes the first half while this one aggregates and writes the second.
    """

    def __init__(self, runs: list[Run], catalog: Catalog, env: Environment, common: dict[str, Any], runs_dir: Path | None, rows: list[dict[str, Any]],
                 references: list[dict[str, Any]] | None = None, releases: list[dict[str, Any]] | None = None):  # fmt: skip
        self.runs, self.catalog, self.env, self.common, self.runs_dir, self.rows = runs, catalog, env, common, runs_dir, rows
        self.references, self.releases = references or [], releases or []  # published results (report/published.py), releases to link
        self.data: pages.SiteData | None = None
        self.pages: list[str] = []
        self.timings: dict[str, float] = {}  # seconds per phase, for benchmarks/site_build.py

    def page(self, tmp: Path, rel: str, template: str, context: dict[str, Any]) -> None:
        root = "../" * rel.count("/")
        html = self.env.get_template(template).render(**self.common, **context, root=root, page=rel)
        _write(tmp / rel, html)
        self.pages.append(rel)

    def build(self, tmp: Path) -> None:
        start = time.perf_counter()
        shutil.copytree(static_dir(), tmp / "static")
        for folder in ("runs", "datasets", "methods", "reproduction"):
            (tmp / folder).mkdir()
        copy_releases(self.releases, tmp)
        if len(self.runs) >= PARALLEL_MIN_RUNS and "fork" in multiprocessing.get_all_start_methods():
            global _JOB
            _JOB = (self, tmp)
            try:
                with multiprocessing.get_context("fork").Pool(1) as pool:
                    other = pool.apply_async(_second_process)
                    self.summary(tmp)
                    self.timings.update(other.get())
            finally:
                _JOB = None
        else:
            self.row_files(tmp)
            self.run_pages(tmp)
            self.summary(tmp)
        self.pages += [f"runs/{name}.html" for name in sorted({shard(run.key) for run in self.runs if page_name(run.key)})]
        self.download_page(tmp)
        if self.common["base_url"]:
            self.sitemap(tmp)
        self.timings["all pages and files"] = time.perf_counter() - start

    def _lap(self, phase: str, start: float) -> float:
        now = time.perf_counter()
        self.timings[phase] = self.timings.get(phase, 0.0) + now - start
        return now

    def summary(self, tmp: Path) -> None:
        """Aggregate, then write the summary pages and summary.csv."""
        start = time.perf_counter()
        boards = build_boards(self.runs)
        views = build_views(boards, self.catalog)
        data = self.data = pages.SiteData(self.runs, boards, views, analyse_boards(views), self.catalog)
        comparisons = published.compare(self.references, boards)
        sources = published.source_summaries(comparisons)
        start = self._lap("aggregation and statistics", start)
        extra = {"published_cells": published.cell_marks(comparisons), "sources": sources, "releases": self.releases}
        self.page(tmp, "index.html", "index.html.j2", {**pages.index_context(data), **extra})
        for summary in sources:
            self.page(tmp, summary["href"], "reproduction.html.j2", published.page_context(summary))
        self.page(tmp, "methods.html", "methods.html.j2", pages.methods_context(data))
        self.page(tmp, "significance.html", "significance.html.j2", pages.significance_context(data))
        for dataset in data.datasets:
            self.page(tmp, f"datasets/{slug(dataset)}.html", "dataset.html.j2", pages.dataset_context(data, dataset))
        for method in data.methods:
            self.page(tmp, f"methods/{slug(method)}.html", "method.html.j2", pages.method_context(data, method))
        export.write_summary([v for views in data.views.values() for v in views], tmp / "summary.csv")
        self._lap("summary pages", start)

    def run_pages(self, tmp: Path) -> None:
        """runs/<shard>.html with the records of its runs, and the run directories' small files."""
        start = time.perf_counter()
        template = self.env.get_template("runs.html.j2")
        # Run records carry no build time, so an unchanged shard is the same file in every build.
        options = {**self.common, "generated_at": None, "metrics_layout": METRICS_LAYOUT, "root": "../"}
        for name, records in shard_records(self.runs, self.runs_dir).items():
            rel = f"runs/{name}.html"
            _write(tmp / rel, template.render({**options, "shard": name, "records": records, "page": rel}))
            for record in records:
                if record["found"] is not None:
                    runfiles.publish(record["found"], tmp / "runs" / record["key"])
        self._lap("run pages", start)

    def row_files(self, tmp: Path) -> None:
        """results.json / .csv / .parquet."""
        start = time.perf_counter()
        export.write_json([run.json for run in self.runs], tmp / "results.json")
        export.write_tables(tmp / "results.json", export.columns(self.rows), tmp / "results.parquet", tmp / "results.csv", self.rows)
        self._lap("download files", start)

    def download_page(self, tmp: Path) -> None:
        files = [{"name": n, "about": about, "size": (tmp / n).stat().st_size} for n, about in DOWNLOADS]
        self.page(tmp, "downloads.html", "downloads.html.j2", pages.downloads_context(self.data, files, export.columns(self.rows)))  # type: ignore[arg-type]

    def sitemap(self, tmp: Path) -> None:
        from xml.sax.saxutils import escape

        base = self.common["base_url"]
        urls = "".join(f"<url><loc>{escape(base + p)}</loc></url>\n" for p in self.pages)
        _write(tmp / "sitemap.xml", f'<?xml version="1.0" encoding="UTF-8"?>\n<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n{urls}</urlset>\n')


def render_site(
    rows: list[dict[str, Any]],
    out_dir: str | Path,
    title: str,
    db_label: str | None = None,
    generated_at: datetime | None = None,
    methods: Iterable[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]] | None = None,
    runs_dir: str | Path | None = None,
    base_url: str | None = None,
    timings: dict[str, float] | None = None,
    references: list[dict[str, Any]] | None = None,
    releases: list[dict[str, Any]] | None = None,
    release: dict[str, Any] | None = None,
) -> Path:
    """Write the whole site into `out_dir` (replaced in one step); returns the path of index.html.

    `timings`, when given, receives the seconds spent per phase. `references`: published results to show
    beside the measured cells (report/published.py); `releases`: releases to copy in and link
    (report/release.py); `release`: this site is that release (name, created_at: a banner says so).
    """
    start = time.perf_counter()
    rows = unique_by_key(list(rows))
    catalog = Catalog(methods)
    base_url = check_base_url(base_url)
    runs = [make_run(r, catalog) for r in rows]
    parsed = time.perf_counter()
    when = (generated_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    common = {
        "title": title,
        "db_label": db_label,
        "generated_at": when.strftime("%Y-%m-%d %H:%M UTC"),
        "medpeft_version": __version__,
        "base_url": base_url,
        "release": release,
    }
    builder = SiteBuilder(runs, catalog, _site_env(), common, Path(runs_dir) if runs_dir is not None else None, rows, references, releases)
    site = write_site(out_dir, builder.build)
    if timings is not None:
        timings.update({"reading rows": parsed - start, **builder.timings, "total": time.perf_counter() - start})
    return site / "index.html"
