"""Run a sweep on this machine: the missing runs of a manifest, one after another or N at a time.

`run_one` is what every array task calls (`medpeft sweep run-one MANIFEST --index I`); `run_sweep`
runs the missing entries in this process (`concurrent=1`) or as N `run-one` processes at once,
which share the GPU. Finished run keys are skipped, so a sweep can be stopped and started again.

Each of the N at once is a process of its own (a crash or an out-of-memory kill ends that run only),
forked from a fork server that has already imported torch and accelerate (`PRELOAD`): a run then
starts in 0.1 s instead of ~5 s of imports (the demo study's 54 runs on 2 cores: 2.5 minutes). The
child takes the sweep's working directory and environment (plus its thread share) when it starts.
Where there is no fork server (Windows), each run is a `python -m medpeft_cli` subprocess.
A run that fails or diverges does not stop the others; the sweep names each and ends with the exit
code of the worst (failed: 2, diverged: 3; errors.py).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from medpeft_cli.config import RunSpec
from medpeft_cli.errors import DIVERGED_EXIT_CODE, PREEMPTED_EXIT_CODE, MedpeftError, Preempted, RunDiverged, RunInterrupted, UserError
from medpeft_cli.run.task import headline
from medpeft_cli.store import RESULT_FILE
from medpeft_cli.sweep.manifest import Manifest, ReadyRun, Resolver, read_manifest, status


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM (Slurm's stop signal, `kill`) into KeyboardInterrupt: the run ends cleanly,
    nothing partial is stored, and the CLI says so; a bare SIGTERM would kill Python silently.
    (While a run trains, its own handler takes over: it checkpoints and stops, `Preempted`.)"""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@contextmanager
def resume_hint(hint: str, again: str = "rerun the same command") -> Iterator[None]:
    """How to continue after a stop signal (`hint`) or Ctrl-C (`again`, when a checkpoint was written),
    for commands that resume differently than `medpeft train --resume`."""
    try:
        yield
    except Preempted as exc:
        exc.hint = hint
        raise
    except RunInterrupted as exc:
        exc.again = again
        raise


def _entry(manifest: Manifest, index: int):
    if not 0 <= index < len(manifest.entries):
        raise UserError(f"index {index} is outside manifest {manifest.name} (entries 0..{len(manifest.entries) - 1})")
    return manifest.entries[index]


def run_one(manifest_path: Path, index: int, force: bool = False, progress=None, resume: bool = True):
    """Run entry `index` of a manifest (skipped when its key is finished, continued from its
    checkpoint when a stopped task left one); returns the RunOutcome. Raises `RunDiverged` when the
    run is stored as diverged (now or before), like `run.train`."""
    from medpeft_cli.run.lifecycle import stored_outcome

    manifest = read_manifest(manifest_path)
    ready = Resolver(manifest).require(_entry(manifest, index))
    if ready.done and not force:
        # What train() does for a finished key, without loading torch first: a requeued or repeated
        # array task of a finished run ends in a second instead of importing the whole stack.
        return stored_outcome(ready.spec, ready.run_key)
    from medpeft_cli.run import train

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


FINISHED, DIVERGED, FAILED = "finished", "diverged", "failed"


@dataclass
class SweepResult:
    finished: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # already finished (ok) before the sweep
    failed: list[tuple[int, str]] = field(default_factory=list)
    diverged: list[int] = field(default_factory=list)  # stored with status diverged, now or before the sweep

    def summary(self, name: str) -> str:
        counts = f"{len(self.finished)} finished, {len(self.skipped)} already done, {len(self.failed)} failed, {len(self.diverged)} diverged"
        return f"sweep {name}: {counts}"

    def error(self) -> MedpeftError | None:
        """How the sweep ends: failures first (exit 2), then divergences (exit 3), else None (exit 0)."""
        diverged = f"{len(self.diverged)} run(s) diverged (indices {', '.join(map(str, self.diverged))})"
        if self.failed:
            more = f"; {diverged}" if self.diverged else ""
            return UserError(f"{len(self.failed)} run(s) failed (indices {', '.join(str(i) for i, _ in self.failed)}); their errors are above{more}")
        if self.diverged:
            return RunDiverged(f"{diverged}: stored with status diverged; lower their learning rate and rerun them with --force")
        return None


def _stored_status(ready: ReadyRun) -> dict:
    try:
        return json.loads((Path(ready.spec.output.runs_dir) / ready.run_key / RESULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _last_error_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if line.startswith("medpeft: ")]
    return (errors or lines or ["exited without output"])[-1]


def _run_here(ready: ReadyRun, force: bool, progress, log: Path) -> tuple[str, str]:
    """Run in this process: (state, detail). A failed run does not stop the others; a stop signal does."""
    from medpeft_cli.run import train

    try:
        with resume_hint("checkpoint saved: run the same `medpeft sweep run` again to continue", "run the same `medpeft sweep run` again"):
            train(ready.spec, force=force, progress=progress, lr_origin=ready.lr_origin)
    except Preempted:
        raise  # a stop signal stops the sweep (the run is checkpointed), not just this run
    except RunDiverged as exc:
        return DIVERGED, str(exc)
    except UserError as exc:
        return FAILED, str(exc)
    except Exception as exc:  # a crash (out of memory, a bug) must not stop the other runs
        log.write_text(traceback.format_exc(), encoding="utf-8")
        return FAILED, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return FINISHED, ""


def thread_share(concurrent: int) -> dict[str, str]:
    """Environment for one of `concurrent` runs at once: its share of the CPU cores as torch's intra-op
    threads, so N runs do not each start one thread per core and slow each other down (a user's own
    OMP_NUM_THREADS wins)."""
    if "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // concurrent))}


# What the fork server imports once: packages that read no settings from the environment when imported
# (not timm: it loads huggingface_hub, which fixes HF_HUB_OFFLINE and its cache paths at import).
PRELOAD = ("numpy", "torch", "torch._dynamo", "accelerate")


def _fork_server():
    """multiprocessing's fork-server context with PRELOAD, or None where there is none."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    return context


def _forked_cli(args: list[str], log: str, env: dict[str, str], cwd: str) -> None:
    """In a process forked from the fork server: `medpeft ARGS` with stdout and stderr in `log`, in `cwd`
    with environment `env`, ending with the exit code the same command would end with."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115 (closed by os._exit)
    sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
    if env.get("OMP_NUM_THREADS", "").isdigit():  # torch was loaded before this process had its share
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    import runpy

    sys.argv = ["medpeft", *args]
    code = 0
    try:
        runpy.run_module("medpeft_cli", run_name="__main__", alter_sys=True)  # `python -m medpeft_cli ARGS`
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # a crash: the traceback into the log and exit 1, as the interpreter would
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown: the fork server's handlers and atexit hooks are not this run's


def _run_process(args: list[str], log: Path, env: dict[str, str]) -> int:
    """Exit code of `medpeft ARGS` in a process of its own (negative: killed by that signal)."""
    context = _fork_server()
    if context is None:
        with open(log, "w", encoding="utf-8") as fh:
            return subprocess.run([sys.executable, "-m", "medpeft_cli", *args], stdout=fh, stderr=subprocess.STDOUT, env=env, check=False).returncode
    process = context.Process(target=_forked_cli, args=(args, str(log), env, os.getcwd()))
    process.start()
    process.join()
    return process.exitcode


def _run_subprocess(ready: ReadyRun, manifest_path: Path, force: bool, log: Path, concurrent: int) -> tuple[str, str]:
    """Run as `medpeft sweep run-one` in a process of its own (its output in `log`): (state, detail) from its exit code."""
    args = ["sweep", "run-one", str(manifest_path), "--index", str(ready.index), *(["--force"] if force else [])]
    code = _run_process(args, log, {**os.environ, **thread_share(concurrent)})
    if code == 0:
        return FINISHED, ""
    if code == DIVERGED_EXIT_CODE:
        return DIVERGED, _last_error_line(log).removeprefix(f"medpeft: {RunDiverged.label}: ")
    if code == PREEMPTED_EXIT_CODE:
        return FAILED, "stopped by a signal; its checkpoint is kept: run the sweep again to resume it"
    return FAILED, _last_error_line(log)


def _todo(manifest: Manifest, force: bool, result: SweepResult, echo: Callable[[str], None]) -> list[ReadyRun]:
    """The runs to run; finished ones are counted as already done (or diverged, when stored so)."""
    resolver = Resolver(manifest)
    todo = []
    for entry in manifest.entries:
        ready = resolver.require(entry)
        if force or not ready.done:
            todo.append(ready)
            continue
        row = _stored_status(ready)
        if row.get("status") == DIVERGED:
            result.diverged.append(entry.index)
            echo(f"#{entry.index} {describe(ready.spec)}: stored as diverged ({row.get('status_detail')}); rerun with --force")
        else:
            result.skipped.append(entry.index)
    return todo


def run_sweep(
    manifest: Manifest,
    manifest_path: Path,
    log_dir: Path,
    concurrent: int = 1,
    force: bool = False,
    progress_factory: Callable[[], object] | None = None,
    echo: Callable[[str], None] = print,
) -> SweepResult:
    """Run every entry that is not finished (all with `force`) here, or `concurrent` at a time as
    subprocesses; tuned lrs must be known (tune_missing)."""
    result = SweepResult()
    todo = _todo(manifest, force, result, echo)
    log_dir.mkdir(parents=True, exist_ok=True)

    def report(number: int, ready: ReadyRun, seconds: float, state: str, detail: str) -> None:
        where = f"[{number}/{len(todo)}] #{ready.index} {describe(ready.spec)}"
        if state == FINISHED:
            result.finished.append(ready.index)
            echo(f"{where}: {headline(_stored_status(ready))} ({seconds:.0f} s)")
        elif state == DIVERGED:
            result.diverged.append(ready.index)
            echo(f"{where}: DIVERGED: {detail} ({seconds:.0f} s)")
        else:
            result.failed.append((ready.index, detail))
            echo(f"{where}: FAILED: {detail} (log: {log_dir / f'{ready.index}.log'})")

    def here(ready: ReadyRun) -> tuple[ReadyRun, float, str, str]:
        start = time.perf_counter()
        progress = progress_factory() if progress_factory else None
        state, detail = _run_here(ready, force, progress, log_dir / f"{ready.index}.log")
        return ready, time.perf_counter() - start, state, detail

    def subprocess_(ready: ReadyRun) -> tuple[ReadyRun, float, str, str]:
        start = time.perf_counter()
        state, detail = _run_subprocess(ready, manifest_path, force, log_dir / f"{ready.index}.log", concurrent)
        return ready, time.perf_counter() - start, state, detail

    if concurrent <= 1:
        for number, ready in enumerate(todo, 1):
            report(number, *here(ready))
        return result
    with ThreadPoolExecutor(max_workers=concurrent) as pool:
        futures = [pool.submit(subprocess_, ready) for ready in todo]
        for number, future in enumerate(as_completed(futures), 1):
            report(number, *future.result())
    return result
