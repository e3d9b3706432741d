"""`medpeft bundle create|verify|import`: result bundles (docs/submitting.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medpeft_cli.console import out
from medpeft_cli.errors import UserError

app = typer.Typer(help="Result bundles: pack runs with checksums, verify them, merge verified runs into a store.", no_args_is_help=True)

BundleArg = Annotated[Path, typer.Argument(help="A bundle written by `medpeft bundle create` (.tar.gz).")]
DbOption = Annotated[Path, typer.Option(help="DuckDB results file.")]
RunsOption = Annotated[Path, typer.Option(help="Directory of run directories.")]


def _runs(n: int) -> str:
    return f"{n} run{'' if n == 1 else 's'}"


@app.command("create")
def bundle_create(
    out_path: Annotated[Path, typer.Option("--out", help="The bundle to write (X.tar.gz; never overwritten).")],
    where: Annotated[Optional[str], typer.Option(help="SQL filter of the runs table, e.g. \"dataset = 'busi' AND method IN ('lora', 'full')\" [default: every run].")] = None,
    db: DbOption = Path("results/medpeft.duckdb"),
    runs_dir: RunsOption = Path("runs"),
    with_weights: Annotated[bool, typer.Option("--with-weights", help="Include the trained weights (adapter/, *.safetensors): lets others re-score the runs with `medpeft eval`.")] = False,
    submitter: Annotated[Optional[str], typer.Option(help="Who is submitting (recorded in the manifest; the importer may override it).")] = None,
) -> None:
    """Pack the selected finished runs with their run directories and a manifest of sha256 checksums."""
    from medpeft_cli.bundle.create import create_bundle

    created = create_bundle(db, runs_dir, out_path, where=where, with_weights=with_weights, submitter=submitter)
    for line in created.left_out:
        out.print(f"left out {line}", markup=False)
    weights = "with weights" if with_weights else "without weights"
    out.print(f"bundle {created.path}: {_runs(len(created.runs))}, {created.files} files ({weights}), {created.size / 1e6:.2f} MB", markup=False)
    out.print(f"sha256 {created.sha256}", markup=False)
    out.print(f"check it with: medpeft bundle verify {created.path}", markup=False)


@app.command("verify")
def bundle_verify(bundle: BundleArg) -> None:
    """Check checksums, recompute every run key from its spec and every test metric from its predictions."""
    from medpeft_cli.bundle.verify import verify_bundle

    result = verify_bundle(bundle)
    for line in result.lines():
        out.print(line, markup=False)
    if not result.ok:
        raise UserError(f"{bundle} failed verification ({len(result.failed)} of {len(result.runs)} runs): {result.first_failure()}")
    out.print(f"verified {_runs(len(result.runs))} of {bundle} (sha256 {result.contents.sha256})", markup=False)


@app.command("import")
def bundle_import(
    bundle: BundleArg,
    db: DbOption = Path("results/medpeft.duckdb"),
    runs_dir: RunsOption = Path("runs"),
    submitter: Annotated[Optional[str], typer.Option(help="Who sent the bundle (recorded on every imported row) [default: the manifest's submitter].")] = None,
) -> None:
    """Merge a verified bundle's runs into a store: new runs added, identical ones skipped, conflicts refused."""
    from medpeft_cli.bundle.merge import BundleRefused, import_bundle

    try:
        merged = import_bundle(bundle, db, runs_dir, submitter)
    except BundleRefused as exc:
        for line in exc.lines:
            out.print(line, markup=False)
        raise
    for key in merged.imported:
        out.print(f"imported {key}", markup=False)
    for key in merged.rows_only:
        out.print(f"row added {key}: its run directory was already in {runs_dir}", markup=False)
    for key in merged.skipped:
        out.print(f"skipped  {key}: the same run is already stored", markup=False)
    out.print(
        f"{_runs(len(merged.imported) + len(merged.rows_only))} imported, {len(merged.skipped)} already stored; "
        f"bundle sha256 {merged.sha256}, submitter {merged.submitter!r}, into {db}",
        markup=False,
    )
