"""When two copies of a run's row are the same run: every store column equal, except where it came from.

Used by `bundle create` (a run directory's result.json against its database row) and `bundle import`
(an incoming run against the stored one: same content is skipped, different content refused).
"""

from __future__ import annotations

import math
from typing import Any

from medpeft_cli.store.results import COLUMNS

# Columns that say where a row came from, not what the run was: a run imported from a bundle keeps its content.
ORIGIN_COLUMNS = ("bundle_sha256", "submitter")


def _norm(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN/inf are stored as NULL
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)  # an INTEGER column read back, or a float that happens to be whole
    return value


def first_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """'column: a-value vs b-value' for the first store column whose values differ, or None when none does."""
    for column in COLUMNS:
        if column in ORIGIN_COLUMNS:
            continue
        x, y = _norm(a.get(column)), _norm(b.get(column))
        if x != y:
            return f"{column}: {_short(a.get(column))} vs {_short(b.get(column))}"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
