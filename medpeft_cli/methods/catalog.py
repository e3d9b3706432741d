"""The method registry as plain data (name, task, family, citation, ...), for the leaderboard site.

Reading the registry imports every method module, and with them torch (~2.5 s). `medpeft report`
needs only this metadata, so a copy ships as resources/method_catalog.json together with a digest
of the method modules' source. When the digest still matches the installed code the copy is used;
otherwise (someone edited a method) the live registry is read. Regenerate the copy with

    python -m medpeft_cli.methods.catalog

(tests/test_methods_catalog.py fails while it is stale).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent.parent
CATALOG_FILE = PACKAGE / "resources" / "method_catalog.json"
# The modules whose @register_method calls make up the registry (methods/registry.py imports them).
SOURCES = ("methods/*.py", "t2i/methods.py")


def source_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(p for pattern in SOURCES for p in PACKAGE.glob(pattern)):
        digest.update(path.relative_to(PACKAGE).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def live_catalog() -> list[dict[str, Any]]:
    """Read from the registry itself (imports torch)."""
    from medpeft_cli.methods import list_methods

    return [
        {"name": m.name, "task": m.task, "kind": m.kind, "families": sorted(m.families), "cite": m.cite,
         "summary": m.summary, "default_lr": m.default_lr, "url": m.url, "knob": m.knob,
         "mergeable": m.merge is not None, "peft": m.peft_owned}
        for m in list_methods()
    ]  # fmt: skip


def method_catalog() -> list[dict[str, Any]]:
    """The shipped copy when it matches the installed method code, else the live registry."""
    try:
        shipped = json.loads(CATALOG_FILE.read_text(encoding="utf-8"))
        if shipped.get("source_digest") == source_digest():
            return shipped["methods"]
    except (OSError, ValueError, AttributeError):
        pass
    return live_catalog()


def write_catalog() -> Path:
    data = {"source_digest": source_digest(), "methods": live_catalog()}
    CATALOG_FILE.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return CATALOG_FILE


if __name__ == "__main__":
    print(f"wrote {write_catalog()}")
