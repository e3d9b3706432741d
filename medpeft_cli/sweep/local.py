"""Run a sweep on this machine: the missing runs of a manifest, one after another or N at a time.

`run_one` is what every array task calls (`medpeft sweep run-one MANIFEST --index I`); `run_sweep`
runs the missing entries in this process (`concurrent=1`) or as N `run-one` subprocesses at once,
which share the GPU. Finished run keys are skipped, so a sweep can be stopped and started again.
A run that fails does not stop the others; the sweep names every failure and exits non-zero.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from medpeft_cli.config import RunSpec
from medpeft_cli.errors import UserError
from medpeft_cli.sweep.manifest import Manifest, ReadyRun, Resolver, read_manifest, status


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM (Slurm's stop signal, `kill`) into KeyboardInterrupt: the run ends cleanly,
    nothing partial is stored, and the CLI says so; a bare SIGTERM would kill Python silently."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _entry(manifest: Manifest, index: int):
    if not 0 <= index < len(manifest.entries):
        raise UserError(f"index {index} is outside manifest {manifest.name} (entries 0..{len(manifest.entries) - 1})")
    return manifest.entries[index]


def run_one(manifest_path: Path, index: int, force: bool = False, progress=None, resume: bool = True):
    """Run entry `index` of a manifest (skipped when its key is finished, continued from its
    checkpoint when a stopped task left one); returns the RunOutcome."""
    from medpeft_cli.train.runner import train

    manifest = read_manifest(manifest_path)
    ready = Resolver(manifest).require(_entry(manifest, index))
    if ready.done and not force:
        # What train() does for a finished key, without loading torch first: a requeued or repeated
        # array task of a finished run ends in a second instead of importing the whole stack.
        from medpeft_cli.store import append, read_result
        from medpeft_cli.train.runner import RunOutcome

        run_dir = Path(ready.spec.output.runs_dir) / ready.run_key
        row = read_result(run_dir)
        append(ready.spec.output.db, row)  # restores the row if an earlier DB write gave up
        return RunOutcome(ready.run_key, "skipped", run_dir, row)
    return train(ready.spec, force=force, progress=progress, lr_origin=ready.lr_origin, resume=resume)


def tune_missing(manifest: Manifest, echo: Callable[[str], None]) -> int:
    """Run the tuning studies that pending runs wait for; returns how many studies were run."""
    from medpeft_cli.sweep.tune import run_study

    waiting = status(manifest).studies_waiting
    for study in waiting:
        group = manifest.group(study)
        echo(f"tuning the lr of {study} ({group.trials} trials, lr {group.lr_min:g}-{group.lr_max:g})")
        answer = run_study(manifest.tune_storage or "", group, echo=echo)
        if answer is None:
            raise UserError(f"study {study} is not finished (other workers still run trials); run the sweep again when they end")
        echo(f"tuned lr of {study}: {answer.lr:.3g} (validation macro-F1 {answer.value:.4f}, {answer.trials} trials)")
    return len(waiting)


def describe(spec: RunSpec) -> str:
    subset = f"{spec.shots} shots" if getattr(spec, "shots", None) else f"fraction {spec.data_fraction:g}"
    return f"{spec.method.name} / {spec.backbone} / {spec.dataset} / {subset} / seed {spec.seed}"


@dataclass
class SweepResult:
    finished: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # already finished before the sweep
    failed: list[tuple[int, str]] = field(default_factory=list)


def _last_error_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if line.startswith("medpeft: ")]
    return (errors or lines or ["exited without output"])[-1]


def _f1(ready: ReadyRun) -> str:
    try:
        row = json.loads((Path(ready.spec.output.runs_dir) / ready.run_key / "result.json").read_text(encoding="utf-8"))
        return f"test macro-F1 {row['test_macro_f1']:.4f}"
    except (OSError, ValueError, KeyError):
        return "finished"


def run_sweep(
    manifest: Manifest,
    manifest_path: Path,
    log_dir: Path,
    concurrent: int = 1,
    force: bool = False,
    progress_factory: Callable[[], object] | None = None,
    echo: Callable[[str], None] = print,
) -> SweepResult:
    """Run every entry that is not finished (all with `force`); tuned lrs must be known (tune_missing)."""
    resolver = Resolver(manifest)
    result = SweepResult()
    todo: list[ReadyRun] = []
    for entry in manifest.entries:
        ready = resolver.require(entry)
        if ready.done and not force:
            result.skipped.append(entry.index)
        else:
            todo.append(ready)
    log_dir.mkdir(parents=True, exist_ok=True)
    total = len(todo)

    def report(number: int, ready: ReadyRun, seconds: float, error: str | None) -> None:
        where = f"[{number}/{total}] #{ready.index} {describe(ready.spec)}"
        if error is None:
            result.finished.append(ready.index)
            echo(f"{where}: {_f1(ready)} ({seconds:.0f} s)")
        else:
            result.failed.append((ready.index, error))
            echo(f"{where}: FAILED: {error} (log: {log_dir / f'{ready.index}.log'})")

    if concurrent <= 1:
        from medpeft_cli.train.resume import Preempted
        from medpeft_cli.train.runner import train

        for number, ready in enumerate(todo, 1):
            start = time.perf_counter()
            error = None
            try:
                progress = progress_factory() if progress_factory else None
                train(ready.spec, force=force, progress=progress, lr_origin=ready.lr_origin)
            except Preempted:
                raise  # a stop signal stops the sweep (the run is checkpointed), not just this run
            except UserError as exc:
                error = str(exc)
            except Exception as exc:  # a crash (diverged loss, out of memory) must not stop the other runs
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                (log_dir / f"{ready.index}.log").write_text(traceback.format_exc(), encoding="utf-8")
            report(number, ready, time.perf_counter() - start, error)
        return result

    from medpeft_cli.train.resume import PREEMPTED_EXIT_CODE

    def launch(ready: ReadyRun) -> tuple[ReadyRun, float, str | None]:
        log = log_dir / f"{ready.index}.log"
        cmd = [sys.executable, "-m", "medpeft_cli", "sweep", "run-one", str(manifest_path), "--index", str(ready.index)]
        start = time.perf_counter()
        with open(log, "w", encoding="utf-8") as fh:
            code = subprocess.run([*cmd, *(["--force"] if force else [])], stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
        if code == PREEMPTED_EXIT_CODE:
            return ready, time.perf_counter() - start, "stopped by a signal; its checkpoint is kept: run the sweep again to resume it"
        return ready, time.perf_counter() - start, None if code == 0 else _last_error_line(log)

    with ThreadPoolExecutor(max_workers=concurrent) as pool:
        futures = [pool.submit(launch, ready) for ready in todo]
        for number, future in enumerate(as_completed(futures), 1):
            report(number, *future.result())
    return result
