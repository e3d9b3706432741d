"""Build the site: rows -> runs -> boards/views/tests -> Jinja pages, SVG charts and downloads.

Every template is autoescaped and undefined names are errors. All links are relative, so the site
opens from file:// as well as from any static host; --base-url only adds canonical links and a sitemap.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from medpeft_cli import __version__
from medpeft_cli.errors import UserError
from medpeft_cli.report import export, fragments, pages, reuse, runfiles
from medpeft_cli.report.assets import static_dir, templates_dir
from medpeft_cli.report.boards import build_boards
from medpeft_cli.report.catalog import Catalog
from medpeft_cli.report.formatting import decimals, estimate, filter_value, fmt, pvalue, sort_value, span
from medpeft_cli.report.keys import page_name, slug, unique_by_key
from medpeft_cli.report.overview import build_views
from medpeft_cli.report.runpage import run_context, run_href
from medpeft_cli.report.runs import make_run
from medpeft_cli.report.significance import analyse_boards
from medpeft_cli.report.sitedir import MARKER, write_site

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
        run_href=run_href, method_href=pages.method_href, dataset_href=pages.dataset_href, cell_title=pages.cell_title,
        estimate_cell=fragments.estimate_cell, overview_row=fragments.overview_row, fields=fragments.fields,
        history_table=fragments.history_table, key_values=fragments.key_values, per_class_table=fragments.per_class_table,
        run_rows=fragments.run_rows, chart_svg=fragments.chart_svg, cd_svg=fragments.cd_svg,
    )  # fmt: skip
    return env


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


# Run pages are rendered in forked worker processes when a site has at least this many runs
# (a few hundred per process are needed before the fork pays off).
PARALLEL_MIN_RUNS = 2000
MAX_WORKERS = 8
_JOB: tuple[SiteBuilder, Path] | None = None  # what forked workers render (inherited, never pickled)


def worker_count(n_runs: int, requested: int | None) -> int:
    """Processes for the run pages: `requested` when given, else one per CPU (up to MAX_WORKERS) on a
    large site where fork is available (Linux), else 1."""
    if requested is not None:
        return max(1, requested) if "fork" in multiprocessing.get_all_start_methods() else 1
    if n_runs < PARALLEL_MIN_RUNS or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1), MAX_WORKERS))


def _render_runs_job(start: int, stop: int) -> tuple[dict[str, str], int]:
    builder, tmp = _JOB  # type: ignore[misc]
    return builder.render_runs(tmp, start, stop)


class SiteBuilder:
    """Renders one site into a (temporary) folder."""

    def __init__(
        self, data: pages.SiteData, env: Environment, common: dict[str, Any], runs_dir: Path | None, rows: list[dict[str, Any]],
        workers: int | None = None,
    ):  # fmt: skip
        self.data, self.env, self.common, self.runs_dir, self.rows, self.workers = data, env, common, runs_dir, rows, workers
        self.pages: list[str] = []
        self.timings: dict[str, float] = {}  # seconds per phase, for benchmarks/site_build.py
        self.previous: Path | None = None  # the site being replaced, whose unchanged run pages are reused
        self.manifest: dict[str, str] = {}  # its run pages' fingerprints
        self.reused = 0  # run pages carried over from the previous build

    def page(self, tmp: Path, rel: str, template: str, context: dict[str, Any]) -> None:
        root = "../" * rel.count("/")
        html = self.env.get_template(template).render(**self.common, **context, root=root, page=rel)
        _write(tmp / rel, html)
        self.pages.append(rel)

    def build(self, tmp: Path) -> None:
        data = self.data
        start = time.perf_counter()
        shutil.copytree(static_dir(), tmp / "static")
        for folder in ("runs", "datasets", "methods"):
            (tmp / folder).mkdir()
        self.page(tmp, "index.html", "index.html.j2", pages.index_context(data))
        self.page(tmp, "methods.html", "methods.html.j2", pages.methods_context(data))
        self.page(tmp, "significance.html", "significance.html.j2", pages.significance_context(data))
        for dataset in data.datasets:
            self.page(tmp, f"datasets/{slug(dataset)}.html", "dataset.html.j2", pages.dataset_context(data, dataset))
        for method in data.methods:
            self.page(tmp, f"methods/{slug(method)}.html", "method.html.j2", pages.method_context(data, method))
        start = self._lap("summary pages", start)
        self.run_pages(tmp)
        start = self._lap("run pages", start)
        self.downloads(tmp)
        if self.common["base_url"]:
            self.sitemap(tmp)
        self._lap("downloads", start)

    def _lap(self, phase: str, start: float) -> float:
        now = time.perf_counter()
        self.timings[phase] = now - start
        return now

    def run_pages(self, tmp: Path) -> None:
        """runs/<run_key>.html for every run with a safe key; in several processes on a large site."""
        runs = self.data.runs
        self.pages.extend(f"runs/{name}" for name in map(page_name, (r.key for r in runs)) if name)
        workers = worker_count(len(runs) - len(self.manifest), self.workers)
        if workers == 1:
            marks, self.reused = self.render_runs(tmp, 0, len(runs))
        else:
            global _JOB
            step = -(-len(runs) // workers)
            _JOB = (self, tmp)
            try:
                with multiprocessing.get_context("fork").Pool(workers) as pool:
                    parts = pool.starmap(_render_runs_job, [(i, min(i + step, len(runs))) for i in range(0, len(runs), step)])
            finally:
                _JOB = None
            marks = {name: mark for part, _ in parts for name, mark in part.items()}
            self.reused = sum(n for _, n in parts)
        reuse.write_manifest(tmp, marks)

    def render_runs(self, tmp: Path, start: int, stop: int) -> tuple[dict[str, str], int]:
        """Render (or carry over from the previous build, when unchanged) the pages of runs[start:stop];
        returns their fingerprints and how many were carried over."""
        marks: dict[str, str] = {}
        reused = 0
        template = self.env.get_template("run.html.j2")
        runs_dir = tmp / "runs"
        # Run pages carry no build time, so that an unchanged run's page is the same file in every build.
        options = {**self.common, "generated_at": None}
        digest = reuse.options_digest(options)
        old_runs, new_runs = str(self.previous / "runs") if self.previous else "", str(runs_dir)
        for run in self.data.runs[start:stop]:
            name = page_name(run.key)
            if name is None:
                continue
            # page_name allows no separators and no leading dot: the page is always inside runs/
            mark = marks[name] = reuse.fingerprint(digest, run.row, reuse.files_signature(self.runs_dir, run.key))
            if self.manifest.get(name) == mark and reuse.reuse(old_runs, new_runs, run.key, name):
                reused += 1
                continue
            context, files = run_context(run, self.runs_dir)
            _write(runs_dir / name, template.render({**options, **context, "root": "../", "page": f"runs/{name}"}))
            if files is not None:
                runfiles.publish(files, runs_dir / run.key)
        return marks, reused

    def downloads(self, tmp: Path) -> None:
        export.write_json(self.rows, tmp / "results.json")
        export.write_csv(self.rows, tmp / "results.csv")
        names = export.columns(self.rows)
        export.write_parquet(tmp / "results.json", names, tmp / "results.parquet")
        export.write_summary([v for views in self.data.views.values() for v in views], tmp / "summary.csv")
        files = [{"name": n, "about": about, "size": (tmp / n).stat().st_size} for n, about in DOWNLOADS]
        self.page(tmp, "downloads.html", "downloads.html.j2", pages.downloads_context(self.data, files, names))

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
    workers: int | None = None,
    timings: dict[str, float] | None = None,
) -> Path:
    """Write the whole site into `out_dir` (replaced in one step); returns the path of index.html.

    `timings`, when given, receives the seconds spent per phase.
    """
    start = time.perf_counter()
    rows = unique_by_key(list(rows))
    catalog = Catalog(methods)
    base_url = check_base_url(base_url)
    runs = [make_run(r, catalog) for r in rows]
    boards = build_boards(runs)
    views = build_views(boards, catalog)
    data = pages.SiteData(runs, boards, views, analyse_boards(views), catalog)
    aggregated = time.perf_counter()
    when = (generated_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    common = {
        "title": title,
        "db_label": db_label,
        "generated_at": when.strftime("%Y-%m-%d %H:%M UTC"),
        "medpeft_version": __version__,
        "base_url": base_url,
    }
    builder = SiteBuilder(data, make_env(), common, Path(runs_dir) if runs_dir is not None else None, rows, workers)
    previous = Path(out_dir).resolve()
    if (previous / MARKER).is_file() and (previous / "runs").is_dir():
        builder.previous, builder.manifest = previous, reuse.read_manifest(previous)
    site = write_site(out_dir, builder.build)
    if timings is not None:
        timings.update({"aggregation and statistics": aggregated - start, **builder.timings, "total": time.perf_counter() - start})
        timings["run pages reused"] = builder.reused
    return site / "index.html"
