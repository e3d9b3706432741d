"""The run orchestrator: one life for every run, whatever its task (classification, text-to-image).

    task.py       the interface a task supplies (prepare, fit, evaluate, row fields, save) and the task registry
    spec.py       resolving a spec: defaults filled in, so equal runs get equal keys
    row.py        the result row's shared fields
    lifecycle.py  key -> skip -> lock -> fit with checkpoints -> evaluate -> run directory + DuckDB row

`train(spec)` runs one spec; sweeps, tuning and `medpeft train` all call it.
"""

from medpeft_cli.run.lifecycle import RunOutcome, train
from medpeft_cli.run.spec import resolve, resolve_run

__all__ = ["RunOutcome", "resolve", "resolve_run", "train"]
