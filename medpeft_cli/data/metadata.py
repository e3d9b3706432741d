"""Normalised per-sample metadata values (the subgroup columns): sex, age bin, view.

Unknown values are "" so every metadata column is a plain string column; evaluation leaves ""
out of subgroup metrics.
"""

from __future__ import annotations

import re

AGE_BIN_YEARS = 20  # 0-19, 20-39, 40-59, 60-79, 80+


def age_bin(text: object) -> str:
    """'58', '58.0' or DICOM '058Y' / '006M' -> '40-59' / '0-19'; '' when unknown or implausible."""
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([YyMmWwDd]?)\s*$", str(text if text is not None else ""))
    if not match:
        return ""
    value = float(match.group(1))
    unit = match.group(2).upper()
    years = value if unit in ("", "Y") else value / {"M": 12, "W": 52, "D": 365}[unit]
    if years > 130:
        return ""
    if years >= 80:
        return "80+"
    low = int(years // AGE_BIN_YEARS) * AGE_BIN_YEARS
    return f"{low}-{low + AGE_BIN_YEARS - 1}"


def sex_code(text: object) -> str:
    """'M'/'male' -> 'M', 'F'/'female' -> 'F', anything else -> ''."""
    return {"m": "M", "male": "M", "f": "F", "female": "F"}.get(str(text or "").strip().lower(), "")


def view_code(text: object) -> str:
    """DICOM ViewPosition ('PA', 'AP', 'LL', ...) upper-cased; '' when absent."""
    return str(text or "").strip().upper()
