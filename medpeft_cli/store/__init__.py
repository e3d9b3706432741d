"""Results store: one DuckDB row per finished run, plus the run directories it can be rebuilt from."""

from medpeft_cli.store.rebuild import RebuildPlan, rebuild, rebuild_store
from medpeft_cli.store.results import COLUMNS, append, has_run, query
from medpeft_cli.store.rundir import RESULT_FILE, read_result, write_run_dir

__all__ = [
    "COLUMNS",
    "RESULT_FILE",
    "RebuildPlan",
    "append",
    "has_run",
    "query",
    "read_result",
    "rebuild",
    "rebuild_store",
    "write_run_dir",
]
