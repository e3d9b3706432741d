"""Former home of the run pipeline, kept as aliases for older imports: one run from spec to stored
result is now medpeft_cli/run/ (the orchestrator, every task) and train/task.py (classification)."""

from medpeft_cli.errors import RunDiverged
from medpeft_cli.run import RunOutcome, resolve, train

__all__ = ["RunDiverged", "RunOutcome", "resolve", "train"]
