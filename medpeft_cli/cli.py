"""The `medpeft` command line. Each command builds a spec and calls one module.

Heavy libraries (torch, timm, peft, accelerate) are imported inside the commands that need them,
so `medpeft --help` stays instant.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from medpeft_cli.config import build_spec
from medpeft_cli.console import err, new_table, out
from medpeft_cli.entry import Group
from medpeft_cli.errors import UserError
from medpeft_cli.helptext import with_default

app = typer.Typer(
    name="medpeft",
    help="Benchmark parameter-efficient fine-tuning (PEFT) methods on medical images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=Group,  # Ctrl-C: one line and exit 130 (entry.py)
    rich_markup_mode=None,  # help text as written: rich markup would eat "[default: ...]" and "[@random|@FILE]"
)
store_app = typer.Typer(help="Maintain the DuckDB results store.", no_args_is_help=True)
app.add_typer(store_app, name="store")


def _print_version(value: bool) -> None:
    if value:
        from medpeft_cli.version import version_lines

        for line in version_lines():
            out.print(line, markup=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version, help="Print the versions of medpeft (with its git commit), Python, torch, timm, peft and accelerate, and exit.")] = False,
) -> None:
    """Benchmark parameter-efficient fine-tuning (PEFT) methods on medical images."""


DEFAULT_DB = Path("results/medpeft.duckdb")
DEFAULT_RUNS = Path("runs")


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML run config; flags and --set override it.")] = None,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="Override any config key: --set method.rank=4 --set train.lr=3e-4")] = None,
    task: Annotated[Optional[str], typer.Option(help=with_default("classification (timm backbone) | t2i (Stable Diffusion U-Net, FID/KID).", "task"))] = None,
    fid_features: Annotated[Optional[str], typer.Option(help=with_default("t2i: FID/KID features: inception | dinov2 | <timm name>[@random|@FILE].", "t2i.fid_features"))] = None,
    fid_samples: Annotated[Optional[int], typer.Option(help=with_default("t2i: images generated per seed from held-out prompts.", "t2i.fid_samples"))] = None,
    dataset: Annotated[Optional[str], typer.Option(help=with_default("Dataset name from datasets.yaml (`medpeft datasets`).", "dataset"))] = None,
    backbone: Annotated[Optional[str], typer.Option(help=with_default("builtin (cifar_resnet20 ... cifar_resnet110), timm name (vit_tiny_patch16_224, hf-hub:org/name), transformers:<hub id or folder>, or path/to/file.py:factory | package.module:factory (docs/backbones.md).", "backbone"))] = None,
    weights: Annotated[Optional[str], typer.Option(help=with_default("'random', 'pretrained' (the source's own weights: packaged, hub/cache) or a weights file (safetensors or torch checkpoint, any extension).", "weights"))] = None,
    weights_prefix: Annotated[Optional[str], typer.Option(help=with_default("Take only the weights file's keys under this prefix, removing it (e.g. backbone.).", "weights_prefix", none="a module./model./backbone./encoder. prefix all keys share is removed"))] = None,
    weights_key: Annotated[Optional[str], typer.Option(help=with_default("Key path of the state dict in the weights file, e.g. model_ema or teacher.", "weights_key", none="state_dict, model, ... holding tensors"))] = None,
    head: Annotated[Optional[str], typer.Option(help=with_default("Name of the classifier Linear to replace.", "head", none="the Linear whose output is the model's output"))] = None,
    method: Annotated[Optional[str], typer.Option(help=with_default("PEFT method (`medpeft methods`).", "method"))] = None,
    param_budget: Annotated[Optional[str], typer.Option(help=with_default("Method parameters (head excluded): '0.5%' of the backbone or a count (150k); sets the method's size knob.", "param_budget", none="the method's own size options"))] = None,
    seed: Annotated[Optional[int], typer.Option(help=with_default("Seed of initialisation, data order and data subset.", "seed"))] = None,
    data_fraction: Annotated[Optional[float], typer.Option(help=with_default("Fraction of the training split in (0, 1] (stratified, nested).", "data_fraction"))] = None,
    shots: Annotated[Optional[int], typer.Option(help=with_default("k training images per class instead of a fraction (nested in k).", "shots", none="off (the data fraction)"))] = None,
    class_weighting: Annotated[Optional[str], typer.Option(help=with_default("Class imbalance: none | loss (weighted cross-entropy) | sampler (balanced batches).", "train.class_weighting"))] = None,
    data_resolution: Annotated[Optional[int], typer.Option(help=with_default("Resolution of the dataset files (MedMNIST 28/64/128/224, prepared data).", "data_resolution", none="the registry's"))] = None,
    image_size: Annotated[Optional[int], typer.Option(help=with_default("Input resolution in pixels.", "image_size"))] = None,
    epochs: Annotated[Optional[int], typer.Option(help=with_default("Epochs of training.", "train.epochs"))] = None,
    steps: Annotated[Optional[int], typer.Option(help=with_default("Train this many optimizer steps instead of epochs (the same at any data fraction; the last epoch is cut).", "train.steps", none="off (epochs)"))] = None,
    eval_every_steps: Annotated[Optional[int], typer.Option(help=with_default("Evaluate on validation every N optimizer steps and at the end.", "train.eval_every_steps", none="after every epoch"))] = None,
    evals_per_run: Annotated[Optional[int], typer.Option(help=with_default("K validation evaluations spread evenly over the run, the last at its end.", "train.evals_per_run", none="after every epoch"))] = None,
    select_on: Annotated[Optional[str], typer.Option(help=with_default("Weights scored on test: val_macro_f1 (best evaluation) | val_loss (lowest) | last (no selection).", "train.select_on"))] = None,
    augment: Annotated[Optional[str], typer.Option(help=with_default("Training augmentation on the device: none | flip (horizontal) | crop-flip (4-px padded random crop + flip).", "train.augment"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=with_default("Training images per optimizer step (per process).", "train.batch_size"))] = None,
    lr: Annotated[Optional[float], typer.Option(help=with_default("Learning rate.", "train.lr", none="the method's (`medpeft methods`)"))] = None,
    precision: Annotated[Optional[str], typer.Option(help=with_default("auto | fp32 | bf16 | fp16 (auto: bf16/fp16 on GPU, fp32 on CPU).", "train.precision"))] = None,
    compile_model: Annotated[bool, typer.Option("--compile", help=with_default("torch.compile the model (speed only; not part of the run key). Pays a compilation of minutes first.", "train.compile"))] = False,
    runs_dir: Annotated[Optional[Path], typer.Option(help=with_default("Where run directories go.", "output.runs_dir"))] = None,
    db: Annotated[Optional[Path], typer.Option(help=with_default("DuckDB results file.", "output.db"))] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help=with_default("Dataset files/cache.", "output.data_dir", none="$MEDPEFT_DATA_DIR or ~/.cache/medpeft/data"))] = None,
    site: Annotated[Optional[Path], typer.Option(help="Rebuild the leaderboard site here after the run.")] = Path("site"),
    no_site: Annotated[bool, typer.Option("--no-site", help="Do not rebuild the site.")] = False,
    force: Annotated[bool, typer.Option(help="Rerun even if this run key is already finished (replaces it); starts over an interrupted run.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run of this key from its last checkpoint (runs/.partial/<key>/); starts fresh when there is none.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    num_processes: Annotated[int, typer.Option("--num-processes", help="Data-parallel processes through Accelerate (GPUs; gloo on CPU). Same results semantics.")] = 1,
) -> None:
    """Train one run (dataset x backbone x method x fraction x seed) and append its result row.

    With no options: the packaged pretrained CIFAR ResNet-20 tuned with BN tuning on the packaged real
    BreastMNIST (breast ultrasound, 28 px upsampled to 32), offline, in about a minute on 2 CPU cores.
    """
    flags = {
        "task": task, "t2i.fid_features": fid_features, "t2i.fid_samples": fid_samples,
        "dataset": dataset, "backbone": backbone, "weights": weights, "weights_prefix": weights_prefix, "weights_key": weights_key, "head": head, "method": method, "seed": seed, "param_budget": param_budget,
        "data_fraction": data_fraction, "shots": shots, "train.class_weighting": class_weighting,
        "data_resolution": data_resolution, "image_size": image_size, "train.epochs": epochs, "train.steps": steps,
        "train.eval_every_steps": eval_every_steps, "train.evals_per_run": evals_per_run, "train.select_on": select_on, "train.augment": augment,
        "train.batch_size": batch_size, "train.lr": lr, "train.precision": precision, "train.compile": True if compile_model else None,
        "output.runs_dir": runs_dir, "output.db": db, "output.data_dir": data_dir,
    }  # fmt: skip
    spec = build_spec(config, flags, overrides)
    if num_processes != 1:
        from medpeft_cli.sweep.launch import relaunch_train

        raise typer.Exit(relaunch_train(spec, num_processes, force=force, quiet=quiet, site=None if no_site else site))

    from medpeft_cli.errors import RunDiverged
    from medpeft_cli.run import train as run_training
    from medpeft_cli.train.progress import EpochProgress

    # Shown with the first progress line, so a spec refused while loading ends in its one error line only.
    banner = f"training {spec.method.name} on {spec.dataset} with {spec.backbone} ({spec.weights} weights), seed {spec.seed}"
    progress = EpochProgress(err, quiet=quiet, banner=banner if os.environ.get("RANK", "0") == "0" else None)  # once per launch
    try:
        outcome = run_training(spec, force=force, progress=progress, resume=resume)
    except RunDiverged as exc:  # stored with status 'diverged': shown like any stored run, then exit code 3
        _show_outcome(exc.outcome, spec.output, None if no_site else site)
        raise
    _show_outcome(outcome, spec.output, None if no_site else site)


def _show_outcome(outcome, output, site: Path | None) -> None:
    """The stored run's summary, where its row and files are (`output`: the spec's OutputOptions), and the rebuilt site."""
    if not outcome.row:  # a non-main process of a multi-process launch
        return
    if outcome.status == "skipped":
        out.print(f"run {outcome.run_key} is already finished (pass --force to rerun); stored result:")
    _print_run_summary(outcome.row)
    out.print(f"row:   {output.db} (run_key {outcome.run_key})", markup=False)
    out.print(f"files: {outcome.run_dir}", markup=False)
    if site is not None:
        from medpeft_cli.report import build_site_from_db

        index = build_site_from_db(output.db, site, methods=_method_catalog(), runs_dir=output.runs_dir)
        out.print(f"site:  {index}", markup=False)


def _print_run_summary(row: dict) -> None:
    if row.get("status") != "ok":
        out.print(f"{row['method']} on {row['dataset']} / {row['backbone']} (seed {row['seed']}): [bold red]{row.get('status')}[/]: {row.get('status_detail') or ''}")
        out.print("stored with no metrics (the site shows the status); lower the learning rate and rerun with --force")
        return
    if row.get("task") == "t2i":
        _print_t2i_summary(row)
        return
    columns = ("macro-F1", "accuracy", "bal. acc.", "AUROC", "best epoch")
    table = new_table(*columns, title=f"{row['method']} on {row['dataset']} / {row['backbone']} (seed {row['seed']}), test split", right=columns)
    steps = f" (step {row['best_step']} of {row['train_steps']})" if _step_schedule(row) else ""
    table.add_row(
        _metric(row["test_macro_f1"]), _metric(row["test_accuracy"]), _metric(row["test_balanced_accuracy"]),
        _metric(row["test_auroc"]), f"{row['best_epoch']} of {row['epochs']}{steps}",
    )
    out.print(table)
    if row.get("method_params") is not None:
        budget = f" (budget {row['param_budget']:,})" if row.get("param_budget") is not None else ""
        out.print(f"params: method {row['method_params']:,}{budget} + head {row['head_params']:,} of {row['total_params']:,} total")


def _step_schedule(row: dict) -> bool:
    """Whether the run's length or evaluations were given in optimizer steps (then the summary names the step)."""
    if row.get("best_step") is None or not row.get("train_steps"):
        return False
    train = json.loads(row.get("spec_json") or "{}").get("train", {})
    return any(train.get(name) is not None for name in ("steps", "eval_every_steps", "evals_per_run"))


def _print_t2i_summary(row: dict) -> None:
    columns = ("FID", "KID", "features", "images x seeds", "val loss", "trainable params")
    table = new_table(*columns, title=f"{row['method']} on {row['dataset']} / {row['backbone']} (seed {row['seed']}, t2i)", right=columns)
    seeds = json.loads(row.get("fid_seeds") or "[]")
    table.add_row(
        _pm(row["test_fid"], row.get("test_fid_std"), 3), _pm(row["test_kid"], row.get("test_kid_std"), 5), str(row["fid_features"]),
        f"{row['fid_samples']} x {len(seeds)}", "-" if row.get("val_loss") is None else f"{row['val_loss']:.4f}",
        f"{row['trainable_params']:,} ({row['trainable_pct']:.2f} %)",
    )
    out.print(table)
    out.print(f"train: {row['train_images_per_s']:.1f} img/s; generate: {row.get('generate_images_per_s') or 0:.1f} img/s; weights: {row['weights_source']}")


def _pm(mean: float, std: float | None, digits: int) -> str:
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A run directory, e.g. runs/<run_key>.")],
    split: Annotated[str, typer.Option(help="train | val | test")] = "test",
    dataset: Annotated[Optional[str], typer.Option(help="Score on another dataset with the same classes.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset files/cache directory.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    fid_features: Annotated[Optional[str], typer.Option(help="t2i runs: score in these features instead (inception | dinov2 | <timm name>[@random|@FILE]).")] = None,
    fid_samples: Annotated[Optional[int], typer.Option(help="t2i runs: images per seed instead of the run's.")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="t2i runs: comma-separated generation seeds instead of the run's, e.g. 0,1,2,3.")] = None,
    samples: Annotated[Optional[Path], typer.Option(help="t2i runs: also write a PNG grid of generated samples here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    weights: Annotated[Optional[Path], typer.Option(help="Where the run's weights file is now, if it moved (checked by its sha256).")] = None,
) -> None:
    """Re-score a saved run from its saved weights (t2i runs: generate from the test prompts again, FID/KID)."""
    from medpeft_cli.train.evaluate import evaluate_run

    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()] if seeds else None
    except ValueError:
        raise UserError(f"--seeds {seeds!r} is not a comma-separated list of integers, e.g. 0,1,2,3") from None
    t2i = {"fid_features": fid_features, "fid_samples": fid_samples, "fid_seeds": seed_list, "samples_out": samples,
           "log": (lambda line: None) if quiet else (lambda line: err.print(line, highlight=False))}
    result = evaluate_run(run_dir, split=split, dataset=dataset, data_dir=data_dir, t2i=t2i, weights=weights)
    if result.get("task") == "t2i":
        _print_t2i_eval(result, as_json)
        return
    if any(v is not None for v in (fid_features, fid_samples, seeds, samples)):
        raise UserError("--fid-features, --fid-samples, --seeds and --samples apply to text-to-image runs only")
    metrics = result["metrics"]
    if as_json:
        from medpeft_cli import jsonsafe

        out.print_json(jsonsafe.dumps(result | {"matches_stored": _matches(result)}))
        return
    table = new_table("metric", "value", "stored", title=f"run {result['run_key']} on {result['dataset']} / {split}", right=("value", "stored"))
    stored = result["stored"]
    for name in ("macro_f1", "accuracy", "balanced_accuracy", "auroc"):
        table.add_row(name, _metric(metrics[name]), _metric(stored.get(name)) if stored else "")
    out.print(table)
    if stored:
        out.print(f"matches the stored {split} metrics" if _matches(result) else f"[bold red]differs from the stored {split} metrics[/]")
    else:
        out.print(f"stored: {result['stored_note']}")


def _metric(value) -> str:
    """A metric to 4 decimals; '-' when undefined (None or NaN, e.g. AUROC with a class absent)."""
    return "-" if value is None or value != value else f"{value:.4f}"


def _print_t2i_eval(result: dict, as_json: bool) -> None:
    m, stored = result["metrics"], result["stored"]
    matches = None if not stored else all(
        abs(m[k] - stored["test_" + k]) <= 1e-6 * max(1.0, abs(stored["test_" + k])) for k in ("fid", "kid")
    )
    if as_json:
        from medpeft_cli import jsonsafe

        out.print_json(jsonsafe.dumps({k: v for k, v in result.items() if k != "stored"} | {"matches_stored": matches}))
        return
    out.print(f"run {result['run_key']} on {result['dataset']} test prompts: {m['samples']} images x seeds {m['seeds']}, features {m['features']}")
    table = new_table("metric", "value", "stored", right=("value", "stored"))
    for name, digits in (("fid", 3), ("fid_std", 3), ("kid", 5), ("kid_std", 5)):
        value = m[name]
        table.add_row(name, "-" if value is None else f"{value:.{digits}f}",
                      "" if not stored or stored.get("test_" + name) is None else f"{stored['test_' + name]:.{digits}f}")
    out.print(table)
    if result.get("samples"):
        out.print(f"samples: {result['samples']}")
    if stored:
        out.print("matches the stored test metrics" if matches else "[bold red]differs from the stored test metrics[/]")
    else:
        out.print("other settings than the stored run's: not compared (results are not stored)")


def _matches(result: dict) -> bool | None:
    stored = result["stored"]
    if not stored:
        return None
    return all(
        (stored.get(k) is None and result["metrics"][k] is None) or (stored.get(k) is not None and abs(result["metrics"][k] - stored[k]) < 1e-6)
        for k in ("macro_f1", "accuracy", "balanced_accuracy")
    )


@app.command()
def report(
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory of the static site (replaced on every build).")] = Path("site"),
    db: Annotated[Path, typer.Option(help="DuckDB results file.")] = DEFAULT_DB,
    title: Annotated[str, typer.Option(help="Site title.")] = "medpeft leaderboard",
    base_url: Annotated[Optional[str], typer.Option(help="Where the site will be published, e.g. https://you.github.io/medpeft/ (canonical links, sitemap.xml); links stay relative.")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Run directories: confusion matrices, samples and small files are published from here when present.")] = DEFAULT_RUNS,
    release: Annotated[Optional[str], typer.Option(help="Also write an immutable copy of the site and its data as releases/NAME/ (refused if it exists).")] = None,
    releases_dir: Annotated[Path, typer.Option(help="Where releases are written and found (the site links every one).")] = Path("releases"),
) -> None:
    """Render the static leaderboard site from the results store (opens from file://, no network)."""
    from medpeft_cli.report.publish import build_from_store

    built = build_from_store(db, out_dir, title, methods=_method_catalog(), runs_dir=runs_dir, base_url=base_url, release=release, releases_dir=releases_dir)
    published = f", {built.references} published values" if built.references else ""
    out.print(f"site: {built.index} ({built.runs} runs{published})")
    if built.release is not None:
        out.print(f"release: {built.release} (immutable; checksums in {built.release / 'SHA256SUMS'})")


def _method_catalog() -> list[dict]:
    """The method registry as plain data for the site (reading it imports no torch)."""
    from medpeft_cli.methods import method_catalog

    return method_catalog()


@app.command()
def methods(
    details: Annotated[bool, typer.Option("--details", help="Each method's description, options, size knob, merge support and citation.")] = False,
    matrix: Annotated[bool, typer.Option("--matrix", help="Only the method x backbone-family capability matrix.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The capability matrix as JSON (for the site and scripts).")] = False,
    backbone: Annotated[Optional[str], typer.Option("--backbone", metavar="SPEC", help="What applies to this backbone (any --backbone of train): detected family, and each method's parameters or why it does not apply.")] = None,
    count: Annotated[Optional[str], typer.Option("--count", metavar="BACKBONE", help="Like --backbone, listing only the methods that apply.")] = None,
    num_classes: Annotated[int, typer.Option(help="Classes of the head for --backbone/--count.")] = 3,
    image_size: Annotated[int, typer.Option(help="Input size for --backbone/--count (ViT position embeddings depend on it).")] = 224,
    task: Annotated[str, typer.Option(help="classification | t2i (methods for the Stable Diffusion U-Net).")] = "classification",
    head: Annotated[Optional[str], typer.Option(help="For --backbone/--count: the classifier Linear to replace, as train's --head.")] = None,
) -> None:
    """List the PEFT methods (read from the method registry)."""
    from medpeft_cli.methods import FAMILIES, FAMILY_DESCRIPTIONS, capability_matrix, list_methods
    from medpeft_cli.methods.registry import TASKS

    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose {' or '.join(TASKS)}")
    if task == "t2i":
        _print_t2i_methods(details)
        return
    if as_json:
        out.print_json(json.dumps({"families": FAMILY_DESCRIPTIONS, "methods": capability_matrix()}))
        return
    if backbone or count:
        _print_parameter_table(backbone or count, image_size, num_classes, every_method=bool(backbone), head=head)
        return
    columns = ("method", *FAMILIES) if matrix else ("name", "kind", *FAMILIES, "size knob", "merge", "default lr", "reference")
    table = new_table(*columns, title="capability matrix (method x backbone family)" if matrix else "methods")
    for info in list_methods("classification"):
        marks = ["yes" if f in info.families else "-" for f in FAMILIES]
        if matrix:
            table.add_row(info.name, *marks)
        else:
            table.add_row(info.name, info.kind, *marks, info.knob or "-", "yes" if info.merge else "-", f"{info.default_lr:g}", info.cite.split(":")[0])
    out.print(table)
    out.print("families: " + "; ".join(f"{f} = {d}" for f, d in FAMILY_DESCRIPTIONS.items()))
    if details:
        for info in list_methods("classification"):
            options = ", ".join(f"{n}={f.default!r}" if f.default_factory is None else f"{n}={f.default_factory()!r}" for n, f in info.options.model_fields.items())
            saved = "peft adapter (PeftModel.from_pretrained)" if info.peft_owned else "trainable.safetensors"
            out.print(
                f"[bold]{info.name}[/] ({info.kind}; {', '.join(f for f in FAMILIES if f in info.families)}): {info.summary}\n"
                f"  options: {options or 'none'}\n  size knob for --param-budget: {info.knob or 'none (fixed size)'}\n"
                f"  saved as: {saved}; medpeft export --merge: {'yes' if info.merge else 'no (adds non-linear modules or tokens)'}\n"
                f"  cite: {info.cite}{'  ' + info.url if info.url else ''}"
            )


def _print_t2i_methods(details: bool) -> None:
    from medpeft_cli.methods import list_methods

    table = new_table("name", "kind", "what trains", "default lr", "saved as", "reference",
                      title="text-to-image methods (Stable Diffusion U-Net; text encoder and VAE frozen)")
    for info in list_methods("t2i"):
        saved = "diffusers LoRA (adapter/)" if info.peft_owned else "trainable.safetensors"
        table.add_row(info.name, info.kind, info.summary, f"{info.default_lr:g}", saved, info.cite)
    out.print(table)
    if details:
        for info in list_methods("t2i"):
            options = ", ".join(f"{n}={f.default!r}" if f.default_factory is None else f"{n}={f.default_factory()!r}" for n, f in info.options.model_fields.items())
            out.print(f"[bold]{info.name}[/]: {info.summary}\n  options: {options or 'none'}\n  cite: {info.cite}{'  ' + info.url if info.url else ''}")


def _print_parameter_table(backbone: str, image_size: int, num_classes: int, every_method: bool = False, head: str | None = None) -> None:
    """Each method's parameters on `backbone` (shapes only); with `every_method`, also what does not apply and why."""
    from medpeft_cli.methods.accounting import backbone_table, head_params
    from medpeft_cli.models.backbones import describe_source, shape_backbone

    shape = shape_backbone(backbone, image_size, num_classes, head=head)
    rows = backbone_table(shape, every_method)
    base = shape.num_params - head_params(shape)
    if every_method:
        out.print(f"backbone {backbone}: {describe_source(backbone)}, detected family [bold]{shape.family}[/], "
                  f"{base:,} parameters without the head ({num_classes} classes, {image_size} px)")
        out.print(f"head: {shape.head_summary}")
    title = f"trainable parameters on {backbone} ({num_classes} classes, {image_size} px; backbone without head: {base:,})"
    numbers = ("method params", "head params", "trainable", "% of backbone", "total")
    table = new_table("method", *(("applies",) if every_method else ()), *numbers, title=title, right=numbers)
    for r in rows:
        if "error" not in r:
            counts = (f"{r['method_params']:,}", f"{r['head_params']:,}", f"{r['trainable_params']:,}", f"{r['method_pct']:.3f}", f"{r['total_params']:,}")
            table.add_row(r["method"], *(("yes",) if every_method else ()), *counts)
        elif every_method:  # another family's method, or one that cannot find what it needs (explained below)
            table.add_row(r["method"], f"no ({r['families']} only)" if "families" in r else "no (see below)", *("-" * 5))
    out.print(table)
    for r in rows:
        if "error" in r and "families" not in r:
            out.print(f"{r['method']}: {'does not apply' if every_method else 'not counted'}: {r['error']}")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory, e.g. runs/<run_key>.")],
    merge: Annotated[bool, typer.Option("--merge", help="Fold the trained method into the backbone weights (required).")] = False,
    out_path: Annotated[Optional[Path], typer.Option("--out", help="Output .safetensors file [default: <run_key>-merged.safetensors].")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Where the run's weights file is now, if it moved (checked by its sha256).")] = None,
) -> None:
    """Write a run's model as a plain timm state dict (safetensors) with the method merged into the weights."""
    if not merge:
        raise UserError("pass --merge: export writes a plain timm state dict with the method folded into the weights (the unmerged weights already are in the run directory)")
    from medpeft_cli.export import export_merged

    result = export_merged(run_dir, out_path, weights)
    out.print(f"merged {result['method']} into {result['backbone']}: {result['path']}", markup=False)  # paths as they are
    out.print(f"max |merged - adapted| / max |adapted| logits on {result['checked_images']} random images: {result['max_rel_diff']:.2e}")
    out.print(f"load with: {result['load_hint']}", markup=False)


datasets_app = typer.Typer(help="Datasets in the registry (datasets.yaml).", invoke_without_command=True)
app.add_typer(datasets_app, name="datasets")


@datasets_app.callback()
def datasets(ctx: typer.Context) -> None:
    """List the datasets (run `medpeft datasets info NAME` for one)."""
    if ctx.invoked_subcommand is None:
        datasets_list()


@datasets_app.command("list")
def datasets_list() -> None:
    """List the datasets in the registry (and how each is obtained)."""
    from medpeft_cli.data import list_datasets

    table = new_table("name", "task", "modality", "classes", "access", "license", title="datasets")
    for entry in list_datasets():
        n = str(len(entry.classes)) if entry.classes else ("from data" if getattr(entry, "classes_from_data", False) else "-")
        if getattr(entry, "expected_classes", None):
            n = str(entry.expected_classes)
        table.add_row(entry.name, entry.task, entry.modality, n, entry.access, entry.license)
    out.print(table)


@datasets_app.command("info")
def datasets_info(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset files/cache directory.")] = None,
) -> None:
    """Show one dataset's registry entry (source, licence, classes, how to obtain it)."""
    from medpeft_cli.data import default_data_dir, get_dataset_entry
    from medpeft_cli.data.prepared import available_resolutions

    entry = get_dataset_entry(name)
    data = entry.model_dump(mode="json")
    data["access"] = entry.access
    for key, value in data.items():
        if value is None or value == [] or key == "files":
            continue
        out.print(f"[bold]{key}[/]: {value}")
    if getattr(entry, "files", None):
        for res, f in sorted(entry.files.items()):
            out.print(f"[bold]file {res} px[/]: {f.file} md5={f.md5} {f.download_url}")
    have = available_resolutions(data_dir or default_data_dir(), name)
    out.print(f"[bold]prepared here[/]: {', '.join(f'{r} px' for r in have) if have else 'no'}")


@datasets_app.command("download")
def datasets_download(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    resolution: Annotated[Optional[list[int]], typer.Option("--resolution", "-r", help="MedMNIST file resolution(s): 28, 64, 128, 224 [default: 28].")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Where to put the files [default: $MEDPEFT_DATA_DIR or ~/.cache/medpeft/data].")] = None,
) -> None:
    """Download a dataset where its source allows it (MedMNIST, MD5-checked); otherwise say how to get it."""
    from medpeft_cli.data import default_data_dir, get_dataset_entry
    from medpeft_cli.data.load import offline
    from medpeft_cli.data.medmnist import locate, verify_md5

    entry = get_dataset_entry(name)
    if entry.kind == "synthetic":
        out.print(f"{name} is generated by medpeft from a seed; there is nothing to download")
        return
    if entry.kind != "medmnist":
        raise UserError(f"medpeft cannot download {name} ({entry.access}): {entry.how_to_obtain.strip()} Then run `medpeft datasets prepare {name} --raw PATH`")
    root = data_dir or default_data_dir()
    for res in resolution or [entry.resolution]:
        source = entry.at(res)
        path = locate(source, root, download_missing=not offline())
        verify_md5(path, source.md5)
        out.print(f"{name} {res} px: {path} (md5 {source.md5} ok)")


@datasets_app.command("prepare")
def datasets_prepare(
    name: Annotated[str, typer.Argument(help="Registry dataset, or a new name for your own data (with --from).")],
    raw: Annotated[Path, typer.Option("--raw", help="Folder of the official download (or your ImageFolder root / manifest file).")],
    resolution: Annotated[Optional[list[int]], typer.Option("--resolution", "-r", help="Side in pixels; repeat for several (decoded once) [default: the registry's, else 224].")] = None,
    source: Annotated[Optional[str], typer.Option("--from", help="For your own data: imagefolder (root/<class>/<image>) or manifest (CSV/Parquet: path,label[,group][,split]).")] = None,
    classes: Annotated[Optional[str], typer.Option(help="Your own data: comma-separated class order (label i = i-th name) [default: sorted labels].")] = None,
    subgroups: Annotated[Optional[str], typer.Option(help="Your own data: comma-separated manifest columns to report per subgroup (e.g. sex,site).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the split (datasets without an official split) [default: the registry's, else 0].")] = None,
    skip_corrupt: Annotated[bool, typer.Option("--skip-corrupt", help="Leave unreadable images out (counted in info.json) instead of failing.")] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing prepared copy.")] = False,
    workers: Annotated[int, typer.Option(help="Decoding threads [default: CPU cores, at most 8].")] = 0,
    data_dir: Annotated[Optional[Path], typer.Option(help="Where prepared data goes [default: $MEDPEFT_DATA_DIR or ~/.cache/medpeft/data].")] = None,
) -> None:
    """Decode a raw download once into uint8 arrays + Parquet manifest + split file under <data-dir>/prepared/."""
    from medpeft_cli.data import default_data_dir
    from medpeft_cli.data.prepare import prepare

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("decoding {task.completed} images"), TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("decode", total=None)
        result = prepare(
            name, raw, data_dir or default_data_dir(), resolution, source=source,
            classes=[c.strip() for c in classes.split(",")] if classes else None,
            subgroups=[c.strip() for c in subgroups.split(",")] if subgroups else None,
            seed=seed, skip_corrupt=skip_corrupt, force=force, workers=workers,
            progress=lambda n: bar.advance(task, n),
        )
    out.print(f"prepared {result.name}: {result.n_images} images, {len(result.class_names) or 'no'} classes, {result.seconds:.1f} s ({result.images_per_s:.0f} images/s)")
    for split, counts in result.counts.items():
        out.print(f"  {split}: {sum(counts)} images, per class {counts}")
    if result.skipped:
        out.print(f"  skipped {len(result.skipped)} unreadable image(s) (--skip-corrupt): " + "; ".join(f"{p} ({why})" for p, why in result.skipped[:5]))
    for reason, n in result.excluded.items():
        out.print(f"  left out {n}: {reason}")
    out.print(f"  split checksum {result.split_checksum}")
    for d in result.dirs:
        out.print(f"  -> {d}")


@datasets_app.command("verify")
def datasets_verify(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    resolution: Annotated[Optional[int], typer.Option("--resolution", "-r", help="Which prepared / MedMNIST resolution [default: the registry's].")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset files/cache directory.")] = None,
) -> None:
    """Check a dataset: checksums, class counts per split, split disjointness by group."""
    from medpeft_cli.data import default_data_dir
    from medpeft_cli.data.verify import verify_dataset

    report = verify_dataset(name, data_dir or default_data_dir(), resolution)
    out.print(f"{report.name}: {report.location}")
    if report.counts:
        table = new_table("class", *report.counts, title="images per class", right=report.counts)
        names = report.class_names or ["(all)"]
        for i, cls in enumerate(names):
            table.add_row(cls, *(str(report.counts[s][i]) for s in report.counts))
        out.print(table)
    for check in report.checks:
        out.print(f"  [{'green' if check.ok else 'red'}]{'ok  ' if check.ok else 'FAIL'}[/] {check.name}: {check.detail}")
    if report.split_checksum:
        out.print(f"  split checksum {report.split_checksum}")
    if not report.ok:
        failed = ", ".join(f"{c.name} ({c.detail})" for c in report.failures())
        raise UserError(f"{name} failed verification: {failed}")


@store_app.command("rebuild")
def store_rebuild(
    db: Annotated[Path, typer.Option(help="DuckDB results file to (re)create.")] = DEFAULT_DB,
    runs_dir: Annotated[Optional[list[Path]], typer.Option(help="Directory of run directories; repeat for several [default: runs].")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be added, kept, dropped and unreadable; write nothing.")] = False,
    drop_missing: Annotated[bool, typer.Option("--drop-missing", help="Drop rows whose run directory is under no --runs-dir (each is listed).")] = False,
) -> None:
    """Recreate the results database from the run directories, accounting for every row (docs/reliability.md)."""
    from medpeft_cli.store import rebuild_store

    dirs = runs_dir or [DEFAULT_RUNS]
    plan = rebuild_store(db, dirs, dry_run=dry_run, drop_missing=drop_missing)
    for line in plan.lines():
        out.print(line, markup=False, soft_wrap=True)
    verb = "would rebuild" if dry_run else "rebuilt"
    out.print(f"{verb} {db} from {', '.join(map(str, dirs))}: {plan.summary()}" + (" (dry run: nothing written)" if dry_run else ""), markup=False, soft_wrap=True)


@app.command("runs")
def runs_list(
    db: Annotated[Path, typer.Option(help="DuckDB results file (opened read-only).")] = DEFAULT_DB,
    dataset: Annotated[Optional[list[str]], typer.Option(help="Only these datasets (repeatable).")] = None,
    method: Annotated[Optional[list[str]], typer.Option(help="Only these methods (repeatable).")] = None,
    backbone: Annotated[Optional[list[str]], typer.Option(help="Only these backbones (repeatable).")] = None,
    status: Annotated[Optional[list[str]], typer.Option(help="Only these statuses: ok, diverged (repeatable).")] = None,
    task: Annotated[Optional[list[str]], typer.Option(help="Only these tasks: classification, t2i (repeatable).")] = None,
    key: Annotated[Optional[str], typer.Option(help="Only run keys starting with this prefix.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list (one object per run).")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV with a header line.")] = False,
) -> None:
    """List the stored runs (key, status, task, dataset, backbone, method, data, seed, main metric, finished)."""
    from medpeft_cli.store import listing

    if as_json and as_csv:
        raise UserError("give --json or --csv, not both")
    found = listing.list_runs(db, listing.RunFilter(dataset or [], method or [], backbone or [], status or [], task or [], key))
    text = listing.as_json(found) if as_json else listing.as_csv(found) if as_csv else listing.as_table(found)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


from medpeft_cli.bundle.commands import app as _bundle_app  # noqa: E402
from medpeft_cli.reference.commands import app as _reference_app  # noqa: E402
app.add_typer(_reference_app, name="reference")  # medpeft reference import|list
app.add_typer(_bundle_app, name="bundle")  # medpeft bundle create|verify|import
from medpeft_cli.sweep.commands import register as _register_sweep_commands  # noqa: E402

_register_sweep_commands(app)  # sweep plan|run|run-one|slurm, tune, prefetch


def main(argv: list[str] | None = None) -> None:
    """Console entry point: every expected outcome (errors.py), a usage error and Ctrl-C become one line on
    stderr and its exit code (user error 2, diverged 3, stopped 75, interrupted 130); see entry.py and
    docs/reliability.md, "Exit codes"."""
    from medpeft_cli.entry import run

    run(app, argv)
