"""The `medpeft` command line. Each command builds a spec and calls one module.

Heavy libraries (torch, timm, peft, accelerate) are imported inside the commands that need them,
so `medpeft --help` stays instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from medpeft_cli.config import build_spec
from medpeft_cli.errors import UserError

app = typer.Typer(
    name="medpeft",
    help="Benchmark parameter-efficient fine-tuning (PEFT) methods on medical images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
store_app = typer.Typer(help="Maintain the DuckDB results store.", no_args_is_help=True)
app.add_typer(store_app, name="store")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

DEFAULT_DB = Path("results/medpeft.duckdb")
DEFAULT_RUNS = Path("runs")


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML run config; flags and --set override it.")] = None,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="Override any config key: --set method.rank=4 --set train.lr=3e-4")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset name from datasets.yaml (`medpeft datasets`).")] = None,
    backbone: Annotated[Optional[str], typer.Option(help="timm model name, e.g. vit_tiny_patch16_224, resnet50.")] = None,
    weights: Annotated[Optional[str], typer.Option(help="'random', 'pretrained' (hub/cache) or a .safetensors/.pth file.")] = None,
    method: Annotated[Optional[str], typer.Option(help="PEFT method (`medpeft methods`).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of initialisation, data order and data subset.")] = None,
    data_fraction: Annotated[Optional[float], typer.Option(help="Fraction of the training split in (0, 1] (stratified, nested).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input resolution in pixels.")] = None,
    epochs: Annotated[Optional[int], typer.Option()] = None,
    batch_size: Annotated[Optional[int], typer.Option()] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (default: the method's).")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto | fp32 | bf16 | fp16 (auto: bf16/fp16 on GPU, fp32 on CPU).")] = None,
    runs_dir: Annotated[Optional[Path], typer.Option(help="Where run directories go [default: runs].")] = None,
    db: Annotated[Optional[Path], typer.Option(help="DuckDB results file [default: results/medpeft.duckdb].")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset files/cache [default: $MEDPEFT_DATA_DIR or ~/.cache/medpeft/data].")] = None,
    site: Annotated[Optional[Path], typer.Option(help="Rebuild the leaderboard site here after the run.")] = Path("site"),
    no_site: Annotated[bool, typer.Option("--no-site", help="Do not rebuild the site.")] = False,
    force: Annotated[bool, typer.Option(help="Rerun even if this run key is already finished (replaces it).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Train one run (dataset x backbone x method x fraction x seed) and append its result row.

    With no options: the embedded synthetic-lesions dataset, a random-init ViT-Tiny at 64 px and LoRA,
    offline, in a few minutes on a laptop CPU.
    """
    flags = {
        "dataset": dataset, "backbone": backbone, "weights": weights, "method": method, "seed": seed,
        "data_fraction": data_fraction, "image_size": image_size, "train.epochs": epochs,
        "train.batch_size": batch_size, "train.lr": lr, "train.precision": precision,
        "output.runs_dir": runs_dir, "output.db": db, "output.data_dir": data_dir,
    }  # fmt: skip
    spec = build_spec(config, flags, overrides)

    from medpeft_cli.train.progress import EpochProgress
    from medpeft_cli.train.runner import train as run_training

    if not quiet:
        err.print(f"training {spec.method.name} on {spec.dataset} with {spec.backbone} ({spec.weights} weights), seed {spec.seed}")
    outcome = run_training(spec, force=force, progress=EpochProgress(err, quiet=quiet))
    if not outcome.row:  # a non-main process of a multi-process launch
        return
    row = outcome.row
    if outcome.status == "skipped":
        out.print(f"run {outcome.run_key} is already finished (pass --force to rerun); stored result:")
    _print_run_summary(row)
    out.print(f"row:   {spec.output.db} (run_key {outcome.run_key})")
    out.print(f"files: {outcome.run_dir}")
    if not no_site and site is not None:
        from medpeft_cli.report import build_site_from_db

        index = build_site_from_db(spec.output.db, site)
        out.print(f"site:  {index}")


def _print_run_summary(row: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{row['method']} on {row['dataset']} / {row['backbone']} (seed {row['seed']})", title_justify="left")
    for column in ("test macro-F1", "accuracy", "balanced acc.", "AUROC", "best epoch", "trainable params"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{row['test_macro_f1']:.4f}", f"{row['test_accuracy']:.4f}", f"{row['test_balanced_accuracy']:.4f}",
        f"{row['test_auroc']:.4f}", str(row["best_epoch"]), f"{row['trainable_params']:,} ({row['trainable_pct']:.2f} %)",
    )
    out.print(table)


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A run directory, e.g. runs/<run_key>.")],
    split: Annotated[str, typer.Option(help="train | val | test")] = "test",
    dataset: Annotated[Optional[str], typer.Option(help="Score on another dataset with the same classes.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset files/cache directory.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Re-score a saved run from its saved weights."""
    from medpeft_cli.train.evaluate import evaluate_run

    result = evaluate_run(run_dir, split=split, dataset=dataset, data_dir=data_dir)
    metrics = result["metrics"]
    if as_json:
        out.print_json(json.dumps({k: v for k, v in result.items() if k != "stored"} | {"matches_stored": _matches(result)}))
        return
    from rich.table import Table

    table = Table(title=f"run {result['run_key']} on {result['dataset']} / {split}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("stored", justify="right")
    stored = result["stored"]
    for name in ("macro_f1", "accuracy", "balanced_accuracy", "auroc"):
        table.add_row(name, f"{metrics[name]:.4f}", f"{stored['test_' + name]:.4f}" if stored else "")
    out.print(table)
    if stored:
        out.print("matches the stored test metrics" if _matches(result) else "[bold red]differs from the stored test metrics[/]")


def _matches(result: dict) -> bool | None:
    stored = result["stored"]
    if not stored:
        return None
    return all(abs(result["metrics"][k] - stored["test_" + k]) < 1e-6 for k in ("macro_f1", "accuracy", "balanced_accuracy"))


@app.command()
def report(
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory of the static site.")] = Path("site"),
    db: Annotated[Path, typer.Option(help="DuckDB results file.")] = DEFAULT_DB,
    title: Annotated[str, typer.Option(help="Site title.")] = "medpeft leaderboard",
) -> None:
    """Render the static leaderboard site from the results store (opens from file://)."""
    from medpeft_cli.report import build_site_from_db

    index = build_site_from_db(db, out_dir, title=title)
    out.print(f"site: {index}")


@app.command()
def methods(
    details: Annotated[bool, typer.Option("--details", help="Also show each method's description and options.")] = False,
) -> None:
    """List the PEFT methods (read from the method registry)."""
    from rich.table import Table

    from medpeft_cli.methods import FAMILIES, list_methods

    table = Table(title="methods", title_justify="left")
    for column in ("name", "kind", *FAMILIES, "default lr", "reference"):
        table.add_column(column)
    for info in list_methods():
        marks = ["yes" if f in info.families else "-" for f in FAMILIES]
        table.add_row(info.name, info.kind, *marks, f"{info.default_lr:g}", info.cite)
    out.print(table)
    if details:
        for info in list_methods():
            options = ", ".join(f"{n}={f.default!r}" if f.default_factory is None else f"{n}={f.default_factory()!r}" for n, f in info.options.model_fields.items())
            out.print(f"[bold]{info.name}[/]: {info.summary}\n  options: {options or 'none'}\n  cite: {info.cite}")


datasets_app = typer.Typer(help="Datasets in the registry (datasets.yaml).", invoke_without_command=True)
app.add_typer(datasets_app, name="datasets")


@datasets_app.callback()
def datasets(ctx: typer.Context) -> None:
    """List the datasets (run `medpeft datasets info NAME` for one)."""
    if ctx.invoked_subcommand is None:
        datasets_list()


@datasets_app.command("list")
def datasets_list() -> None:
    """List the datasets in the registry."""
    from rich.table import Table

    from medpeft_cli.data import list_datasets

    table = Table(title="datasets", title_justify="left")
    for column in ("name", "kind", "modality", "classes", "license"):
        table.add_column(column)
    for entry in list_datasets():
        table.add_row(entry.name, entry.kind, entry.modality, str(len(entry.classes)), entry.license)
    out.print(table)


@datasets_app.command("info")
def datasets_info(name: Annotated[str, typer.Argument(help="Dataset name.")]) -> None:
    """Show one dataset's registry entry (source, licence, classes, how to obtain it)."""
    from medpeft_cli.data import get_dataset_entry

    entry = get_dataset_entry(name)
    data = entry.model_dump(mode="json") if hasattr(entry, "model_dump") else vars(entry)
    for key, value in data.items():
        out.print(f"[bold]{key}[/]: {value}")


@store_app.command("rebuild")
def store_rebuild(
    db: Annotated[Path, typer.Option(help="DuckDB results file to (re)create.")] = DEFAULT_DB,
    runs_dir: Annotated[Path, typer.Option(help="Directory of run directories.")] = DEFAULT_RUNS,
) -> None:
    """Recreate the results database from the run directories (nothing in runs/ is changed)."""
    from medpeft_cli.store import rebuild

    count = rebuild(db, runs_dir)
    out.print(f"rebuilt {db} from {runs_dir}: {count} runs")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    try:
        app(args=argv, prog_name="medpeft")
    except UserError as exc:
        print(f"medpeft: error: {exc}", file=sys.stderr)
        sys.exit(UserError.exit_code)
    except KeyboardInterrupt:
        print("medpeft: interrupted; nothing was stored for the unfinished run", file=sys.stderr)
        sys.exit(130)
