"""Re-launch a medpeft command as N data-parallel processes through `accelerate launch`.

`medpeft train --num-processes N` (and `sweep run-one --num-processes N`) validate their input in
this process, then start `accelerate launch --multi_gpu --num_processes N -m medpeft_cli ...`: one
process per GPU, or N CPU processes talking over gloo when no GPU is visible. Accelerate only runs
CPU processes as one distributed job when ACCELERATE_USE_CPU is set; without it each process would
train alone, so it is set here (and the run refuses such a launch otherwise, see train/task.py `check_world`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from medpeft_cli.errors import UserError

# Where the main process of a launch notes its outcome's exit code (`record_outcome`).
OUTCOME_ENV = "MEDPEFT_OUTCOME_FILE"


def launched_by_accelerate() -> bool:
    """True inside a process started by accelerate launch / torchrun."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def free_port() -> int:
    # Several launches on one node (tests, concurrent sweeps) must not share the rendezvous port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_batches(batch_sizes: dict[str, int], num_processes: int) -> None:
    for name, size in batch_sizes.items():
        if size % num_processes:
            raise UserError(f"{name} {size} does not split evenly over {num_processes} processes; use a multiple of {num_processes}")


def launch_command(args: list[str], num_processes: int, cuda_devices: int) -> tuple[list[str], dict[str, str]]:
    """The `accelerate launch` command line and environment for `medpeft ARGS` on N processes."""
    env = dict(os.environ)
    if cuda_devices == 0:
        env["ACCELERATE_USE_CPU"] = "true"
    elif cuda_devices < num_processes:
        raise UserError(f"--num-processes {num_processes} needs {num_processes} GPUs but {cuda_devices} are visible; ask for fewer processes")
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), "-m", "medpeft_cli", *args,
    ]  # fmt: skip
    return cmd, env


def record_outcome(exit_code: int) -> None:
    """In the main process of a launch by `relaunch`: note the exit code of its outcome (errors.py), which
    the launcher itself reports as a plain failure (1)."""
    path = os.environ.get(OUTCOME_ENV)
    if path and os.environ.get("RANK", "0") == "0":
        Path(path).write_text(f"{exit_code}\n", encoding="utf-8")


def relaunch(args: list[str], num_processes: int) -> int:
    """Run `medpeft ARGS` on `num_processes` processes; returns the exit code of the main process's
    outcome (user error 2, diverged 3, stopped 75, as from one process), else the launcher's.

    `--mixed_precision no` only silences accelerate's notice: the run sets its own precision.
    """
    if launched_by_accelerate():
        raise UserError("--num-processes is for a plain `medpeft` call; this process is already part of a multi-process launch")
    import tempfile

    import torch

    cmd, env = launch_command(args, num_processes, torch.cuda.device_count())
    fd, outcome = tempfile.mkstemp(prefix="medpeft-outcome-")
    os.close(fd)
    try:
        code = subprocess.run(cmd, env={**env, OUTCOME_ENV: outcome}, check=False).returncode
        recorded = Path(outcome).read_text(encoding="utf-8").strip()
        return int(recorded) if code and recorded else code
    finally:
        Path(outcome).unlink(missing_ok=True)


def relaunch_train(spec, num_processes: int, force: bool, quiet: bool, site) -> int:
    """`medpeft train` on N processes: the resolved spec goes to the workers as a config file.

    Everything that can be checked before starting processes is checked here, so a bad spec gives
    one error line instead of one per process.
    """
    import tempfile

    import yaml

    from medpeft_cli.run import resolve

    if num_processes < 1:
        raise UserError(f"--num-processes must be at least 1, got {num_processes}")
    resolve(spec)  # method and options
    check_batches({"train.batch_size": spec.train.batch_size, "train.eval_batch_size": spec.train.eval_batch_size}, num_processes)
    fd, name = tempfile.mkstemp(prefix="medpeft-spec-", suffix=".yaml")
    try:
        with open(fd, "w", encoding="utf-8") as fh:
            yaml.safe_dump(spec.model_dump(mode="json"), fh, sort_keys=False)
        args = ["train", "--config", name, *(["--force"] if force else []), *(["--quiet"] if quiet else [])]
        args += ["--no-site"] if site is None else ["--site", str(site)]
        return relaunch(args, num_processes)
    finally:
        Path(name).unlink(missing_ok=True)
