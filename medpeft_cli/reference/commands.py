"""`medpeft reference import|list`: published results beside the measured ones (docs/leaderboard.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medpeft_cli.console import out
from medpeft_cli.errors import UserError

app = typer.Typer(help="Published results (a paper's tables) shown beside the measured runs, never mixed into them.", no_args_is_help=True)

DbOption = Annotated[Path, typer.Option(help="DuckDB results file (the published values go into its own table).")]


def _known_names() -> tuple[dict[str, set[str]], set[str]]:
    """medpeft's method names per task and dataset names (reading them imports no torch)."""
    from medpeft_cli.data.registry import list_datasets
    from medpeft_cli.methods import method_catalog

    methods: dict[str, set[str]] = {}
    for m in method_catalog():
        methods.setdefault(m["task"], set()).add(m["name"])
    return methods, {d.name for d in list_datasets()}


@app.command("import")
def reference_import(
    files: Annotated[Optional[list[Path]], typer.Argument(help="CSV file(s) of published results (docs/leaderboard.md, \"Published results\").")] = None,
    source: Annotated[Optional[str], typer.Option(help="Where the numbers were published, e.g. \"Dutt et al. 2024\" (the label the site shows).")] = None,
    builtin: Annotated[Optional[str], typer.Option(help="Import a set shipped with medpeft instead of files: dutt2024 (the study's Tables 2-4).")] = None,
    db: DbOption = Path("results/medpeft.duckdb"),
) -> None:
    """Store published results; importing the same source again replaces its rows of the same tables."""
    from medpeft_cli.reference.importer import builtin_set, import_published

    if builtin is not None:
        if files:
            raise UserError("give CSV files or --builtin, not both")
        shipped_source, paths = builtin_set(builtin)
        source = source or shipped_source
    else:
        paths = list(files or [])
        if not paths:
            raise UserError("give a CSV file of published results (or --builtin dutt2024)")
        if not source:
            raise UserError("--source is required: name where the numbers were published, e.g. --source \"Dutt et al. 2024\"")
    methods, datasets = _known_names()
    report = import_published(db, paths, source, methods, datasets)
    outcome = report.outcome
    tables = ", ".join(f"{t}: {n}" for t, n in sorted(report.per_table.items()))
    out.print(f"imported {outcome.inserted} published values of {report.source!r} ({tables}) from {', '.join(f.path.name for f in report.files)} into {db}", markup=False)
    if outcome.unchanged:
        out.print(f"  replaced {outcome.replaced} earlier rows of the same tables: the values are unchanged", markup=False)
    elif outcome.replaced:
        out.print(f"  replaced {outcome.replaced} earlier rows of the same tables (values changed)", markup=False)
    unmapped = report.unmapped
    out.print(f"  {len(report.rows) - len(unmapped)} map to medpeft names; {len(unmapped)} do not (listed on the reproduction page)", markup=False)
    for row in unmapped:
        out.print(f"  unmapped: {row['file_name']} line {row['file_line']} ({row['ref_table']}, {row['backbone']}, {row['dataset']}, {row['method']}): {row['unmapped']}", markup=False)
    out.print("the site shows them after `medpeft report`", markup=False)


@app.command("list")
def reference_list(db: DbOption = Path("results/medpeft.duckdb")) -> None:
    """The published sources stored in the database, per table."""
    from collections import Counter

    from medpeft_cli.reference.store import load

    rows = load(db)
    if not rows:
        out.print(f"no published results in {db}; import some with `medpeft reference import`", markup=False)
        return
    counts = Counter((r["source"], r["ref_table"]) for r in rows)
    unmapped = Counter((r["source"], r["ref_table"]) for r in rows if r["unmapped"])
    for (src, table), n in sorted(counts.items()):
        imported = max(r["imported_at"] for r in rows if r["source"] == src and r["ref_table"] == table)
        out.print(f"{src} / {table}: {n} values ({unmapped[(src, table)]} unmapped), imported {imported}", markup=False)
