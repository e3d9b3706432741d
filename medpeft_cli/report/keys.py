"""Where stored strings become file names: run keys (kept as they are when safe) and slugs for
datasets and methods (always safe). The only places a user-controlled string enters a path.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

_SAFE_KEY = re.compile(r"[A-Za-z0-9_.-]+")
_SLUG_OK = re.compile(r"[a-z0-9][a-z0-9_-]*")
MAX_KEY_LENGTH = 200
MAX_SLUG_LENGTH = 60


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


def slug(name: Any) -> str:
    """A file name for a dataset or method name: the name itself when it is already a short
    lower-case slug, else a cleaned-up version plus a hash of the original, so two names never
    share a page (also on case-insensitive file systems)."""
    text = "none" if name is None else str(name)
    if _SLUG_OK.fullmatch(text) and len(text) <= MAX_SLUG_LENGTH:
        return text
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:MAX_SLUG_LENGTH] or "x"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned}-{digest}"


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
