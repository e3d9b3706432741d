"""How numbers look on the site: one place, so every page formats them the same way.

- metrics: their own number of decimals (3 on the 0-1 scale), ``0.612``; a mean over seeds with the
  half-width of its 95 % confidence interval, ``0.612 ± 0.034``, the interval only when n >= 2;
- parameter counts: ``512``, ``28.7K``, ``1.2M``, ``3.4B``; percentages with 2 significant digits
  below 10 % (``0.034 %``, ``1.2 %``) and 1 decimal above (``12.5 %``, ``100.0 %``);
- missing values (None) are ``—``; a metric that is NaN or infinite is printed as such.
"""

from __future__ import annotations

import json
import math
from typing import Any

DASH = "—"
PLUS_MINUS = "±"


def is_number(x: Any) -> bool:
    """True for a finite int or float (bools are not numbers here)."""
    kind = type(x)  # exact types first: this runs hundreds of thousands of times on a large site
    if kind is float:
        return math.isfinite(x)
    if kind is int:
        return True
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _missing(x: Any) -> str | None:
    """The text for a value that cannot be formatted as a number, or None if it can."""
    if x is None:
        return DASH
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return None


def metric(x: Any) -> str:
    """A metric on the 0-1 scale, 3 decimals."""
    return _missing(x) or f"{x:.3f}"


def params(n: Any) -> str:
    """A parameter count, human readable (28.7K, 1.2M)."""
    text = _missing(n)
    if text is not None:
        return text
    n = float(n)
    if abs(n) < 1000:
        return f"{n:.0f}"
    for unit, suffix in ((1e3, "K"), (1e6, "M"), (1e9, "B")):
        if round(abs(n) / unit, 1) < 1000:
            return f"{n / unit:.1f}{suffix}"
    return f"{n / 1e12:.1f}T"


def params_tick(n: Any) -> str:
    """A round parameter count on an axis: ``10K``, ``1M`` (no trailing .0)."""
    return params(n).replace(".0", "")


def percent(x: Any) -> str:
    """A percentage (already ×100): 2 significant digits below 10, 1 decimal above."""
    text = _missing(x)
    if text is not None:
        return text
    if x == 0:
        return "0 %"
    if abs(x) >= 10:
        return f"{x:.1f} %"
    decimals = max(0, 1 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f} %"


def fraction(x: Any) -> str:
    """A data fraction (0-1) as a percentage of the training split: ``10 %``."""
    text = _missing(x)
    return text or f"{x * 100:g} %"


def seconds(x: Any) -> str:
    """A duration: ``42.0 s``, ``3 min 05 s``, ``2 h 07 min``."""
    text = _missing(x)
    if text is not None:
        return text
    if x < 60:
        return f"{x:.1f} s"
    total = int(round(x))
    if total < 3600:
        return f"{total // 60} min {total % 60:02d} s"
    return f"{total // 3600} h {total % 3600 // 60:02d} min"


def megabytes(x: Any) -> str:
    """A memory size given in MB."""
    text = _missing(x)
    return text or f"{x:,.0f} MB"


def throughput(x: Any) -> str:
    """Training throughput in images per second."""
    text = _missing(x)
    return text or f"{x:,.1f} img/s"


def size(x: Any) -> str:
    """A file size in bytes: ``512 B``, ``12.3 KB``, ``4.5 MB``."""
    text = _missing(x)
    if text is not None:
        return text
    for unit in ("B", "KB", "MB", "GB"):
        if abs(x) < 1024 or unit == "GB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{x:.1f} GB"  # pragma: no cover - the loop always returns


def count(x: Any) -> str:
    """An exact integer count with thousands separators."""
    text = _missing(x)
    return text or f"{int(x):,}"


def params_exact(n: Any) -> str:
    """An exact parameter count with its short form: ``28,710 (28.7K)``."""
    text = _missing(n)
    return text or f"{int(n):,} ({params(n)})"


def value(x: Any) -> str:
    """Any stored value: floats with 4 significant digits, containers as compact JSON."""
    if isinstance(x, (dict, list, tuple)):
        return json.dumps(x, default=str, ensure_ascii=False)
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, float):
        return _missing(x) or f"{x:.4g}"
    return DASH if x is None else str(x)


KINDS = {
    "metric": metric,
    "params": params,
    "percent": percent,
    "fraction": fraction,
    "seconds": seconds,
    "megabytes": megabytes,
    "throughput": throughput,
    "count": count,
    "bytes": size,
    "params_exact": params_exact,
    "value": value,
}


def fmt(x: Any, kind: str = "value") -> str:
    """Format `x` as `kind` (one of KINDS); the template filter ``fmt``."""
    return KINDS[kind](x)


def span(pair: tuple[Any, Any] | None, kind: str = "value") -> str:
    """A (min, max) pair: one value when equal, else ``min–max``; the template filter ``span``."""
    if pair is None:
        return DASH
    low, high = (fmt(x, kind) for x in pair)
    return low if low == high else f"{low}–{high}"


def decimals(x: Any, places: int) -> str:
    """A number with a fixed number of decimals (a metric on its own scale)."""
    return _missing(x) or f"{x:.{places}f}"


def estimate(stat: Any, places: int = 3) -> str:
    """``mean ± half-width`` of the 95 % CI of a `Stat`; only the mean when it has no interval."""
    if stat is None or stat.mean is None:
        return DASH
    if stat.half_width is None:
        return decimals(stat.mean, places)
    return f"{decimals(stat.mean, places)} {PLUS_MINUS} {decimals(stat.half_width, places)}"


def pvalue(p: Any) -> str:
    """``p < 0.001`` or ``p = 0.012``."""
    if not is_number(p):
        return DASH
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def filter_value(x: Any) -> str:
    """The text a filter compares: ``none`` for a missing value, numbers in their shortest form."""
    if x is None:
        return "none"
    if is_number(x):
        return f"{x:g}"
    return str(x)


def sort_value(x: Any) -> str:
    """A number for the data-v attribute that the table sorter reads (empty when missing)."""
    if not is_number(x):
        return ""
    return f"{x:.6g}"
