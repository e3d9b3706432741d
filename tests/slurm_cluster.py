"""A live single-node Slurm cluster for tests: munged + slurmctld + slurmd started in a temporary directory.

    from slurm_cluster import slurm, slurm_cluster  # noqa: F401  (fixtures)

`slurm_cluster` (session scope) writes its own slurm.conf (one CPU-only node with this machine's cores
and a memory limit, partitions `cpu` (default) and `other`; `SlurmUser=root`, `proctrack/linuxproc`,
`task/none`, `select/cons_tres` with cores and memory as consumable resources), a fresh munge key
(`mungekey`; else a copy of the package's key), and
starts munged on its own socket, pid and log files (a system munged, if any, is left alone) and the
two Slurm daemons on free ports, with absolute `-f` paths. It waits until `sinfo` shows the node idle
and, at the end, cancels its jobs and stops exactly the daemons it started, by the pids in their pid
files. `slurm` (function scope) points SLURM_CONF at it for the test, so `sbatch`, `squeue` and
`scontrol` (and jobs, which inherit the environment) talk to this cluster.

Tests that use it skip, saying why, where the packages are missing (`.ci/run` installs `slurm-wlm`
and `munge` with apt) or the daemons cannot start (they must run as root here).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "squeue", "scancel")
PACKAGE_KEY = Path("/etc/munge/munge.key")  # what the munge package made, for munge without `mungekey`
MEMORY_MB = 4000  # the node's memory limit (less if the machine has less)
START_LIMIT_S = 60.0  # a guard: the node is idle within ~3 s here


@dataclass
class Cluster:
    root: Path
    conf: Path
    node: str
    cpus: int
    memory_mb: int

    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """A Slurm command against this cluster (its output as text)."""
        done = subprocess.run(list(args), env=self.env(), capture_output=True, text=True, timeout=60, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job JOB` as a dict (the first record: the job, or one array task `JOB_I`)."""
        line = self.run("scontrol", "-o", "show", "job", job_id).stdout.splitlines()[0]
        fields = {}
        for part in line.split(" "):
            key, sep, value = part.partition("=")
            if sep:
                fields[key] = value
        return fields

    def log_tail(self) -> str:
        tails = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            path = self.root / name
            if path.is_file():
                tails.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(tails)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return min(MEMORY_MB, int(line.split()[1]) // 1024 * 8 // 10)
    return MEMORY_MB


def write_conf(root: Path) -> Cluster:
    node = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    memory = _memory_mb()
    conf = root / "slurm.conf"
    lines = [
        "ClusterName=medpefttest",
        f"SlurmctldHost={node}(127.0.0.1)",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # Our own munged socket; cred_expire also sets how long a requeued job waits before it starts again.
        f"AuthInfo=socket={root / 'munge.socket'},cred_expire=5",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "DefMemPerCPU=500",
        "MpiDefault=none",
        "ReturnToService=2",
        # Schedule at once: on every submit and job end, and a full pass every second (default 60 s).
        "SchedulerParameters=sched_interval=1,batch_sched_delay=0",
        "KillWait=5",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN",
        "PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        "PartitionName=other Nodes=ALL MaxTime=INFINITE State=UP",
    ]
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    conf.write_text("\n".join(lines) + "\n")
    return Cluster(root, conf, node, cpus, memory)


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _ours(pid: int, root: Path) -> bool:
    """The process was started with a path inside `root` (our conf, socket or pid file): never stop another."""
    try:
        return str(root) in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False


def _wait(predicate, limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _daemon(cluster: Cluster, args: list[str], pid_file: str) -> None:
    done = subprocess.run(args, env=cluster.env(), capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0 or not _wait(lambda: _pid(cluster.root / pid_file) is not None, 10.0):
        raise RuntimeError(f"{args[0]} did not start ({done.returncode}): {(done.stderr or done.stdout).strip()[-500:]}")


def start(root: Path) -> Cluster:
    cluster = write_conf(root)
    key = root / "munge.key"
    if shutil.which("mungekey"):
        subprocess.run(["mungekey", "--create", "--force", "--keyfile", str(key)], check=True, capture_output=True, timeout=30)
    else:
        shutil.copyfile(PACKAGE_KEY, key)
        key.chmod(0o600)
    _daemon(cluster, ["munged", "--force", f"--socket={root / 'munge.socket'}", f"--key-file={root / 'munge.key'}",
                      f"--pid-file={root / 'munged.pid'}", f"--log-file={root / 'munged.log'}", f"--seed-file={root / 'munged.seed'}"],
            "munged.pid")  # fmt: skip
    _daemon(cluster, ["slurmctld", "-f", str(cluster.conf)], "slurmctld.pid")
    _daemon(cluster, ["slurmd", "-f", str(cluster.conf)], "slurmd.pid")

    def idle() -> bool:
        done = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        return done.returncode == 0 and set(done.stdout.split()) == {"idle"}  # one line per partition

    if not _wait(idle, START_LIMIT_S):
        raise RuntimeError(f"the node was not idle within {START_LIMIT_S:.0f} s")
    return cluster


def stop(cluster: Cluster) -> list[str]:
    """Cancel this cluster's jobs, then stop the daemons it started (by pid); returns what failed to stop."""
    if (cluster.root / "slurmctld.pid").is_file():
        cluster.run("scancel", "--user", "root", check=False)
        _wait(lambda: not cluster.run("squeue", "-h", check=False).stdout.strip(), 30.0)
    left = []
    for name in ("slurmd", "slurmctld", "munged"):
        pid = _pid(cluster.root / f"{name}.pid")
        if pid is None or not _alive(pid) or not _ours(pid, cluster.root):
            continue
        os.kill(pid, signal.SIGTERM)
        if not _wait(lambda pid=pid: not _alive(pid), 30.0):
            left.append(f"{name} (pid {pid})")
    return left


def missing() -> str | None:
    """Why no cluster can be started here, or None."""
    absent = [b for b in BINARIES if shutil.which(b) is None]
    if shutil.which("mungekey") is None and not PACKAGE_KEY.is_file():
        absent.append("mungekey (or the package's /etc/munge/munge.key)")
    if absent:
        return f"no live Slurm here: {', '.join(absent)} not installed (apt-get install slurm-wlm munge, as .ci/run does)"
    if os.geteuid() != 0:
        return "no live Slurm here: the test cluster runs its daemons as root (SlurmUser=root); run the tests as root"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    reason = missing()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    try:
        cluster = start(root)
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        half = Cluster(root, root / "slurm.conf", "", 0, 0)  # stop what did start
        left = stop(half)
        pytest.skip(f"the test Slurm cluster did not start: {exc}{f'; still running: {left}' if left else ''}\n{half.log_tail()}")
    yield cluster
    left = stop(cluster)
    assert not left, f"these test Slurm daemons did not stop: {', '.join(left)}"


@pytest.fixture
def slurm(slurm_cluster, monkeypatch) -> Cluster:
    """The live cluster, with SLURM_CONF set for this test (its commands and the jobs it submits)."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    return slurm_cluster
