"""CLI commands of the sweep layer: `medpeft sweep plan|run|run-one|slurm`, `medpeft tune`, `medpeft prefetch`.

Registered on the main app by cli.py. Like every command, each one parses its options and calls a
module; heavy imports happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medpeft_cli.console import err, new_table, out
from medpeft_cli.errors import UserError

sweep_app = typer.Typer(
    help="Grids of runs: plan a manifest, run what is missing here, or as a Slurm job array.", no_args_is_help=True
)

GridArg = Annotated[Path, typer.Argument(help="A grid file (YAML: a run config plus grid:/exclude:/tune:) or a manifest .json.")]


def _plan(path: Path, manifest_out: Path | None):
    """Load a manifest, or plan a grid and write its manifest; returns (manifest, manifest path)."""
    from medpeft_cli.sweep.manifest import default_manifest_path, is_manifest_file, plan, read_manifest, write_manifest

    if is_manifest_file(path):
        return read_manifest(path), path
    manifest = plan(path)
    return manifest, write_manifest(manifest, manifest_out or default_manifest_path(manifest))


def _summary(manifest, manifest_path: Path) -> None:
    from medpeft_cli.sweep.manifest import status

    state = status(manifest)
    dropped = f" ({manifest.excluded} excluded, {manifest.duplicates} duplicates dropped)" if manifest.excluded or manifest.duplicates else ""
    out.print(f"grid {manifest.name}: {len(manifest.entries)} runs{dropped}")
    waiting = f", {len(state.waiting)} waiting for a tuned lr ({len(state.studies_waiting)} studies)" if state.waiting else ""
    out.print(f"  {len(state.done)} done, {len(state.todo)} to run{waiting}")
    out.print(f"manifest: {manifest_path}")


@sweep_app.command("plan")
def sweep_plan(
    grid: GridArg,
    manifest_out: Annotated[Optional[Path], typer.Option("--manifest", help="Where to write the manifest [default: sweeps/<name>.manifest.json].")] = None,
    show: Annotated[bool, typer.Option("--show", help="List every run with its key and status.")] = False,
    estimate: Annotated[bool, typer.Option("--estimate", help="Device-hours of the runs and the lr search, from measured throughput.")] = False,
    throughput: Annotated[Optional[list[Path]], typer.Option(help="With --estimate: a benchmarks/train_step.py JSON, or a folder of them (repeatable).")] = None,
    device: Annotated[Optional[str], typer.Option(help="With --estimate: the device to estimate for (part of its name) [default: the best-measured one].")] = None,
    max_parallel: Annotated[Optional[int], typer.Option(help="With --estimate: tasks at once, for a wall-clock figure.")] = None,
) -> None:
    """Expand a grid into a manifest of run specs and keys; say how many runs are already done (and, with --estimate, what they will cost)."""
    if max_parallel is not None and max_parallel < 1:
        raise UserError(f"--max-parallel must be at least 1, got {max_parallel}")
    manifest, path = _plan(grid, manifest_out)
    _summary(manifest, path)
    if show:
        _show(manifest)
    if estimate:
        from medpeft_cli.sweep.estimate import estimate as cost, summary

        for line in summary(cost(manifest, throughput or [], device), max_parallel):
            out.print(line)


def _show(manifest) -> None:
    from medpeft_cli.sweep.manifest import Resolver

    resolver = Resolver(manifest)
    table = new_table("#", "run key", "status", "method", "backbone", "dataset", "fraction", "seed", "lr", right=("#", "fraction", "seed"))
    for entry in manifest.entries:
        ready = resolver.ready(entry)
        spec = entry.spec
        state = "waiting" if ready is None else ("done" if ready.done else "to run")
        lr = "tuned" if entry.study and ready is None else f"{(ready.spec.train.lr if ready else spec['train']['lr']):.3g}"
        table.add_row(
            str(entry.index), ready.run_key if ready else "-", state, spec["method"]["name"], spec["backbone"], spec["dataset"],
            f"{spec['data_fraction']:g}", str(spec["seed"]), lr + (" (tuned)" if entry.study and ready else ""),
        )  # fmt: skip
    out.print(table)


@sweep_app.command("run")
def sweep_run(
    grid: GridArg,
    concurrent: Annotated[int, typer.Option("--concurrent", "-j", help="Runs at once (as subprocesses sharing the GPU); pays for small models, see docs/scale.md.")] = 1,
    force: Annotated[bool, typer.Option(help="Rerun finished runs too.")] = False,
    no_tune: Annotated[bool, typer.Option("--no-tune", help="Fail instead of tuning missing learning rates first.")] = False,
    manifest_out: Annotated[Optional[Path], typer.Option("--manifest", help="Where to write the manifest [default: sweeps/<name>.manifest.json].")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="One line per epoch of each run (in-process runs).")] = False,
) -> None:
    """Run every missing run of a grid on this machine (tuning learning rates first where the grid says `lr: tuned`)."""
    from medpeft_cli.data.load import offline
    from medpeft_cli.sweep.local import run_sweep, tune_missing
    from medpeft_cli.sweep.prefetch import ensure_available

    if concurrent < 1:
        raise UserError(f"--concurrent must be at least 1, got {concurrent}")
    manifest, path = _plan(grid, manifest_out)
    _summary(manifest, path)
    ensure_available(manifest, download=not offline())
    from medpeft_cli.sweep.manifest import status

    if status(manifest).studies_waiting:
        if no_tune:
            raise UserError(f"runs wait for tuned learning rates; run `medpeft tune {path}` first (or drop --no-tune)")
        tune_missing(manifest, echo=err.print)

    progress_factory = None
    if verbose:
        from medpeft_cli.train.progress import EpochProgress

        def progress_factory():
            return EpochProgress(err, quiet=False)

    result = run_sweep(manifest, path, path.parent / f"{manifest.name}.logs", concurrent, force, progress_factory, echo=out.print)
    out.print(result.summary(manifest.name))
    error = result.error()  # failed: exit 2, diverged: exit 3
    if error is not None:
        raise error


@sweep_app.command("run-one")
def sweep_run_one(
    manifest_path: Annotated[Path, typer.Argument(help="A manifest (.json) written by `medpeft sweep plan|slurm`.")],
    index: Annotated[int, typer.Option(help="Entry to run (the Slurm array task id).")],
    force: Annotated[bool, typer.Option(help="Rerun it even if finished.")] = False,
    num_processes: Annotated[int, typer.Option("--num-processes", help="Data-parallel processes (GPUs) for this run.")] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-epoch lines.")] = False,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from the checkpoint a stopped (requeued) task left [default: on].")] = True,
) -> None:
    """Run one manifest entry (what each Slurm array task calls); a finished key is skipped."""
    from medpeft_cli.sweep.local import interrupt_on_sigterm, run_one

    if num_processes > 1:
        from medpeft_cli.sweep.launch import relaunch

        args = ["sweep", "run-one", str(manifest_path), "--index", str(index), *(["--force"] if force else []), *(["--quiet"] if quiet else [])]
        args += [] if resume else ["--no-resume"]
        raise typer.Exit(relaunch(args, num_processes))
    interrupt_on_sigterm()
    from medpeft_cli.errors import RunDiverged
    from medpeft_cli.sweep.local import resume_hint
    from medpeft_cli.train.progress import EpochProgress

    try:
        with resume_hint("checkpoint saved: rerun the same command to continue (run-one resumes by default)"):
            outcome = run_one(manifest_path, index, force=force, progress=EpochProgress(err, quiet=quiet), resume=resume)
    except RunDiverged as exc:  # stored with status diverged: said on stdout too, then exit code 3
        _print_run_one(index, exc.outcome, "stored as diverged", exc.outcome.row.get("status_detail") or "")
        raise
    if outcome.row:  # empty on the non-main processes of a multi-process launch
        from medpeft_cli.run.task import headline

        _print_run_one(index, outcome, "already finished" if outcome.status == "skipped" else "finished", headline(outcome.row))


def _print_run_one(index: int, outcome, state: str, what: str) -> None:
    row = outcome.row
    out.print(f"run #{index} {outcome.run_key} {state}: {what} ({row['method']} / {row['backbone']} / {row['dataset']}, lr {row['lr']:.3g} {row.get('lr_source') or ''})")


@sweep_app.command("slurm")
def sweep_slurm(
    grid: GridArg,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Directory for the scripts, manifest and logs [default: slurm/<name>].")] = None,
    image: Annotated[Optional[str], typer.Option(help="Apptainer image (.sif or docker://ghcr.io/...) the tasks run in; none: this Python's medpeft.")] = None,
    partition: Annotated[Optional[str], typer.Option(help="Partition of every job (tune, runs, report).")] = None,
    account: Annotated[Optional[str], typer.Option(help="Account every job is charged to.")] = None,
    qos: Annotated[Optional[str], typer.Option(help="QoS of every job.")] = None,
    time_limit: Annotated[str, typer.Option("--time", help="Time limit of each task and of the report job (Slurm format).")] = "04:00:00",
    gpus_per_task: Annotated[int, typer.Option(help="GPUs per run (0: CPU tasks; more than 1: data-parallel through Accelerate).")] = 1,
    cpus_per_task: Annotated[int, typer.Option(help="CPUs per tune and run task (the report job takes 1).")] = 8,
    mem: Annotated[Optional[str], typer.Option(help="Memory of every job, e.g. 32G [default: the cluster's].")] = None,
    max_parallel: Annotated[Optional[int], typer.Option(help="At most K tasks at once (%K).")] = None,
    signal_lead: Annotated[int, typer.Option(help="Seconds before the time limit at which a task stops and requeues itself.")] = 300,
    bind: Annotated[Optional[list[str]], typer.Option(help="Extra Apptainer bind, e.g. /scratch/data:/data (repeatable).")] = None,
    sbatch_arg: Annotated[Optional[list[str]], typer.Option(help="Extra sbatch option, e.g. --constraint=a100 (repeatable).")] = None,
    report_site: Annotated[Optional[Path], typer.Option("--report", help="Also submit a job that renders the site here after the array.")] = None,
    online: Annotated[bool, typer.Option("--online", help="Let tasks use the network (default: HF_HUB_OFFLINE=1).")] = False,
    tune_workers: Annotated[int, typer.Option(help="Parallel workers per tuning study.")] = 1,
    resubmit_failed: Annotated[bool, typer.Option("--resubmit-failed", help="Only the runs whose last attempt failed (see `medpeft sweep status`).")] = False,
    do_submit: Annotated[bool, typer.Option("--submit", help="Submit the scripts (needs sbatch).")] = False,
) -> None:
    """Write an sbatch job array (tuning, runs, report) for what is missing; --submit submits it.

    Runs that are finished, or whose array task is still queued, are left out."""
    from medpeft_cli.sweep.manifest import is_manifest_file, load_plan
    from medpeft_cli.sweep.slurm import SlurmOptions, check_options, submit, write_scripts
    from medpeft_cli.sweep.status import SUBMITTABLE, sweep_status

    manifest = load_plan(grid)
    target = out_dir or Path("slurm") / manifest.name
    opts = SlurmOptions(
        out_dir=target, image=image, partition=partition, account=account, qos=qos, time=time_limit,
        gpus_per_task=gpus_per_task, cpus_per_task=cpus_per_task, mem=mem, max_parallel=max_parallel,
        signal_lead_s=signal_lead, binds=bind or [], sbatch_args=sbatch_arg or [], report_site=report_site,
        offline=not online, tune_workers=tune_workers,
    )  # fmt: skip
    check_options(opts)
    state = sweep_status(manifest, target, strict=True)
    chosen = state.indices("failed") if resubmit_failed else state.indices(*SUBMITTABLE)
    _summary(manifest, grid if is_manifest_file(grid) else target / "manifest.json")
    queued = state.indices("running", "requeued", "pending")
    if queued:
        out.print(f"  {len(queued)} still queued in Slurm (left out)")
    if not chosen:
        counts = state.counts()
        if counts["done"] + counts["diverged"] == len(manifest.entries):
            out.print("every run is finished: nothing to submit")
        else:
            out.print(f"nothing to submit: {'no run has failed' if resubmit_failed else 'every unfinished run is queued'} (see `medpeft sweep status`)")
        return
    result = write_scripts(manifest, opts, chosen)
    for warning in result.warnings:
        err.print(f"medpeft: warning: {warning}")
    what = "failed run(s)" if resubmit_failed else "run(s)"
    out.print(f"{len(chosen)} {what} in the array: {', '.join(map(str, chosen)) if len(chosen) <= 20 else result.scripts['runs']}")
    for kind, path in result.scripts.items():
        out.print(f"{kind}: {path}")
    out.print(f"logs: {result.out_dir / 'logs'}")
    if do_submit:
        line, warnings = submit(result)
        for warning in warnings:
            err.print(warning)
        out.print(line)
    else:
        out.print(f"submit with: bash {result.scripts['submit']}")


@sweep_app.command("status")
def sweep_status_command(
    grid: GridArg,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="The directory `sweep slurm` wrote to [default: slurm/<name>].")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON (for scripts).")] = False,
    every: Annotated[bool, typer.Option("--all", help="List every run, not only the failed and diverged ones.")] = False,
) -> None:
    """How many runs of a grid are done / running / requeued / pending / failed / diverged / waiting, and why each failed one failed."""
    import json

    from medpeft_cli.sweep.manifest import is_manifest_file, plan, read_manifest
    from medpeft_cli.sweep.status import STATES, sweep_status

    # The same runs and keys as `sweep slurm` plans; which pairs are supported was checked when it submitted.
    manifest = read_manifest(grid) if is_manifest_file(grid) else plan(grid, check_support=False)
    state = sweep_status(manifest, out_dir or Path("slurm") / manifest.name)
    if as_json:
        out.print_json(json.dumps(state.to_json()))
        return
    counts = state.counts()
    table = new_table(*STATES, title=f"sweep {manifest.name}: {len(state.runs)} runs (Slurm: {state.slurm})", right=STATES)
    table.add_row(*(str(counts[name]) for name in STATES))
    out.print(table)
    for study in state.studies:
        answer = f"lr {study.lr:.4g}" if study.lr is not None else "no answer yet"
        out.print(f"study {study.study}: {study.trials}/{study.of} trials, {answer}")
    for run in state.runs:
        if every or run.state in ("failed", "diverged"):
            where = f" (log: {run.log})" if run.log and run.state != "done" else ""
            detail = f": {run.reason}" if run.reason else ""
            out.print(f"#{run.index} {run.run_key or '-'} {run.state}{detail}{where}")


def tune(
    grid: GridArg,
    group: Annotated[Optional[int], typer.Option(help="Only this study (its index in the manifest's tune groups; Slurm tune task).")] = None,
    worker: Annotated[int, typer.Option(help="Worker number when several processes share a study (seeds its sampler).")] = 0,
    fail_running: Annotated[bool, typer.Option("--fail-running", help="Mark the studies' RUNNING trials as failed (their workers were killed) and exit.")] = False,
) -> None:
    """Tune the learning rate of every (method, backbone, dataset) the grid marks `lr: tuned` (Optuna, validation split)."""
    from medpeft_cli.sweep.local import interrupt_on_sigterm
    from medpeft_cli.sweep.manifest import load_plan
    from medpeft_cli.sweep.tune import describe, fail_running_trials, run_study

    manifest = load_plan(grid)
    groups = manifest.tune_groups
    if not groups:
        raise UserError(f"{grid} has no run with `lr: tuned`; add `lr: tuned` under grid: (or train: {{lr: tuned}})")
    if group is not None:
        if not 0 <= group < len(groups):
            raise UserError(f"--group {group} is outside 0..{len(groups) - 1} (the grid has {len(groups)} tuning studies)")
        groups = [groups[group]]
    storage = manifest.tune_storage or ""
    if fail_running:
        for g in groups:
            out.print(f"{g.study}: {fail_running_trials(storage, g)} running trial(s) marked failed")
        return
    interrupt_on_sigterm()
    table = new_table("study", "lr", "trials", "val macro-F1", title=f"tuned learning rates ({storage})")
    for g in groups:
        err.print(f"study {g.study}: {g.trials} trials, lr {g.lr_min:g}-{g.lr_max:g}, pruner {g.pruner}")
        info = describe(run_study(storage, g, worker=worker, echo=err.print), g, storage)
        lr = f"{info['lr']:.4g}" if info["lr"] is not None else "not fixed yet (other workers)"
        f1 = f"{info['val_macro_f1']:.4f}" if "val_macro_f1" in info else "-"
        table.add_row(info["study"], lr, f"{info['trials']}/{info['of']}", f1)
    out.print(table)


def prefetch(
    grid: Annotated[Optional[Path], typer.Argument(help="A grid file or manifest whose datasets and backbones to fetch.")] = None,
    backbone: Annotated[Optional[list[str]], typer.Option("--backbone", help="Fetch this backbone into the HF cache (timm name, hf-hub:org/name, transformers:org/name); repeatable.")] = None,
    weights: Annotated[str, typer.Option(help="With --backbone: 'pretrained' (the weights) or 'random' (only what the architecture needs).")] = "pretrained",
    image_size: Annotated[int, typer.Option(help="With --backbone: input size the model is built at while fetching.")] = 224,
) -> None:
    """Download every dataset and pretrained backbone a grid needs, or the backbones named (run it where there is internet access)."""
    from medpeft_cli.sweep.manifest import load_plan
    from medpeft_cli.sweep.prefetch import prefetch as fetch

    if backbone:
        from medpeft_cli.sweep.prefetch import prefetch_backbones

        done = prefetch_backbones(backbone, weights, image_size, echo=out.print)
        out.print(f"{len(done)} backbone(s) ready; runs can now load them with HF_HUB_OFFLINE=1")
        if grid is None:
            return
    if grid is None:
        raise UserError("give a grid file (medpeft prefetch GRID) or --backbone SPEC")
    manifest = load_plan(grid)
    done = fetch(manifest, echo=out.print)
    out.print(f"{len(done)} item(s) ready; compute nodes can now run this grid with HF_HUB_OFFLINE=1")


def register(app: typer.Typer) -> None:
    app.add_typer(sweep_app, name="sweep")
    app.command("tune")(tune)
    app.command("prefetch")(prefetch)
