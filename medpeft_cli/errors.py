"""How a command can end other than with success: one exception per outcome, each with its exit code.

    exit code  exception      meaning                                               stderr
    0          -              done (a finished run key is skipped: also 0)           -
    1          any other      a crash (a bug, out of memory, ...): the run's key     the traceback
                              gets `runs/.failed/<key>/status.json`; rerun with
                              --resume to continue from the last checkpoint
    2          UserError      something the user can fix (bad config, missing        `medpeft: error: ...`
                              data, unsupported method/backbone pair, unsafe
                              checkpoint, run key locked by another process);
                              nothing partial is written
    3          RunDiverged    the loss became NaN/Inf: the run IS stored, with       `medpeft: diverged: ...`
                              status 'diverged' and no metrics
    75         Preempted      stopped by SIGTERM/SIGUSR1 at a step boundary; its     `medpeft: stopped: ...`
                              checkpoint is saved (EX_TEMPFAIL, sysexits.h)
    130        Interrupted    interrupted (Ctrl-C): the line names the run's last    `medpeft: interrupted; ...`
                              checkpoint when one was written, else says nothing
                              of the run was kept

`medpeft_cli.entry.run` maps each `MedpeftError` (and a usage error, and Ctrl-C) to its one line and
code, the same for `train`, `sweep run`, `sweep run-one`, `tune` and the Slurm task scripts
(docs/reliability.md, "Exit codes").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): the run stopped early on request and can be resumed
DIVERGED_EXIT_CODE = 3
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what shells report for Ctrl-C


class MedpeftError(Exception):
    """An expected outcome the CLI reports as one line on stderr (`medpeft: <label>: <message>`) and `exit_code`."""

    exit_code = 1
    label = "error"

    def __init__(self, message: str):
        # One line only: the CLI contract is a single clear line on stderr.
        super().__init__(" ".join(str(message).split()))

    def line(self) -> str:
        return f"medpeft: {self.label}: {self}"


class UserError(MedpeftError):
    """An error the user can fix; the message says what is wrong and what to do."""

    exit_code = 2


class RunDiverged(MedpeftError, FloatingPointError):
    """The loss became NaN/Inf: the run was stored with status 'diverged' and no metrics (`outcome`).

    A FloatingPointError too, so callers that treat any numeric blow-up alike (the learning-rate
    search prunes such trials) catch it without knowing medpeft's types.
    """

    exit_code = DIVERGED_EXIT_CODE
    label = "diverged"

    def __init__(self, message: str, outcome: Any = None):
        super().__init__(message)
        self.outcome = outcome  # the run's RunOutcome (medpeft_cli/run/lifecycle.py): its stored row


class Preempted(MedpeftError):
    """The run stopped at a step boundary because a stop signal arrived; its checkpoint is saved.

    `hint` says how to continue; commands that resume by default (sweeps) replace it.
    """

    exit_code = PREEMPTED_EXIT_CODE
    label = "stopped"
    hint = "checkpoint saved: rerun the same command with --resume to continue"

    def line(self) -> str:
        return f"{super().line()}; {self.hint}"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C while a run trained. Still a KeyboardInterrupt, so nothing takes it for a failed run; it
    carries where the run's checkpoint is (written after every epoch and evaluation; maybe none yet)
    and how to continue from it. Commands that resume by default replace `again` (sweep/local.py)."""

    def __init__(self, checkpoint: Path, again: str = "rerun the same command with --resume"):
        super().__init__()
        self.checkpoint = Path(checkpoint)
        self.again = again


class Interrupted(MedpeftError):
    """What the CLI reports for Ctrl-C (a KeyboardInterrupt anywhere in a command): exit code 130 and
    one line that promises a resume only when a checkpoint is on disk."""

    exit_code = INTERRUPTED_EXIT_CODE
    label = "interrupted"

    @classmethod
    def of(cls, exc: KeyboardInterrupt) -> Interrupted:
        if not isinstance(exc, RunInterrupted):
            return cls("")
        if exc.checkpoint.is_file():  # looked at now: a throw-away run (a tuning trial) deletes its own
            return cls(f"the run's last checkpoint is {exc.checkpoint}: {exc.again} to continue from it")
        return cls("no checkpoint of the run is on disk, so nothing of it was kept (rerun the same command to start it again)")

    def line(self) -> str:
        return f"medpeft: {self.label}" + (f"; {self}" if str(self) else "")
