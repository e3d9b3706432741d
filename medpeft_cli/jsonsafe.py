"""JSON that every parser reads: NaN and infinities become null (json.dumps would write bare `NaN`).

A metric can be undefined (AUROC when a class is absent from the evaluated split): medpeft stores it as
null in every JSON it writes (result.json, metrics.json, the row's JSON columns, `eval --json`, the
site's results.json) and as NULL in DuckDB, never as NaN.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any


def finite(value: Any) -> Any:
    """`value` with every non-finite float (nested in dicts, lists and tuples) replaced by None;
    numpy numbers become plain int/float."""
    if isinstance(value, float) or (isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral))):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """json.dumps of `finite(value)`; a NaN that slipped through would raise rather than be written."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)
