"""Which run keys may name a file: the only place a stored string becomes part of a path."""

from __future__ import annotations

import re
from typing import Any

_SAFE_KEY = re.compile(r"[A-Za-z0-9_.-]+")
MAX_KEY_LENGTH = 200


def page_name(run_key: Any) -> str | None:
    """`<run_key>.html`, or None when the key is not a safe file name (no page is written then).

    Safe means: only letters, digits, `_`, `.` and `-`; not starting with a dot (no `..`, no hidden
    files); at most MAX_KEY_LENGTH characters.
    """
    if not isinstance(run_key, str) or len(run_key) > MAX_KEY_LENGTH or run_key.startswith("."):
        return None
    if _SAFE_KEY.fullmatch(run_key) is None:
        return None
    return f"{run_key}.html"


def unique_by_key(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with duplicate run keys dropped (the first one is kept); rows without a key are kept."""
    seen: set[str] = set()
    out = []
    for row in rows:
        key = row.get("run_key")
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        out.append(row)
    return out
