"""A result row as one line of strict JSON: written once per build, used by results.json and by the
run records of the run pages (runpage.py)."""

from __future__ import annotations

import json
import math
import numbers
from typing import Any

_SCALARS = (str, int, bool, type(None))


def plain(x: Any) -> Any:
    """A JSON-safe scalar: NaN/inf become null, other numbers plain int/float, unknown types their
    text. Exact type checks first: this runs for every value of a row that needs it."""
    kind = type(x)
    if kind is float:
        return x if math.isfinite(x) else None
    if kind in _SCALARS:
        return x
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):  # numpy.float64, Decimal, ...
        x = float(x)
        return x if math.isfinite(x) else None
    return str(x)


def row_json(row: dict[str, Any]) -> str:
    """The row as a JSON object on one line (NaN and infinities as null)."""
    try:  # most rows hold plain values only: json's C encoder takes them as they are
        return json.dumps(row, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):  # NaN (a diverged run), numpy numbers, datetimes, ...
        return json.dumps({k: plain(v) for k, v in row.items()}, ensure_ascii=False, allow_nan=False)
