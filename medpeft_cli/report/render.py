"""Jinja rendering: page contexts -> HTML files of the static site (autoescaped, relative links)."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from medpeft_cli import __version__
from medpeft_cli.report import export
from medpeft_cli.report.aggregate import build_tables
from medpeft_cli.report.assets import static_dir, templates_dir
from medpeft_cli.report.context import index_context, run_context
from medpeft_cli.report.formatting import fmt, mean_std, span
from medpeft_cli.report.keys import page_name, unique_by_key
from medpeft_cli.report.sitedir import write_site


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
    env.filters.update(fmt=fmt, span=span, mean_std=mean_std)
    return env


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _render_into(tmp: Path, rows: list[dict[str, Any]], env: Environment, common: dict[str, Any]) -> None:
    shutil.copytree(static_dir(), tmp / "static")
    runs_dir = tmp / "runs"
    runs_dir.mkdir()
    ctx = index_context(rows, build_tables(rows))
    _write(tmp / "index.html", env.get_template("index.html.j2").render(**common, **ctx, root=""))
    run_template = env.get_template("run.html.j2")
    for row in rows:
        name = page_name(row.get("run_key"))
        if name is None:
            continue
        path = runs_dir / name
        if path.resolve().parent != runs_dir.resolve():  # page_name already forbids this; belt and braces
            continue
        _write(path, run_template.render(**common, **run_context(row), root="../"))
    export.write_json(rows, tmp / "results.json")
    export.write_csv(rows, tmp / "results.csv")


def render_site(
    rows: list[dict[str, Any]],
    out_dir: str | Path,
    title: str,
    db_label: str | None = None,
    generated_at: datetime | None = None,
) -> Path:
    """Write the whole site into `out_dir` (replaced in one step); returns the path of index.html."""
    rows = unique_by_key(list(rows))
    env = make_env()
    when = (generated_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    common = {
        "title": title,
        "db_label": db_label,
        "generated_at": when.strftime("%Y-%m-%d %H:%M UTC"),
        "medpeft_version": __version__,
    }
    site = write_site(out_dir, lambda tmp: _render_into(tmp, rows, env, common))
    return site / "index.html"
