"""Method metadata for the site (description, citation, family, capabilities), as plain data.

The report takes its method metadata as data instead of importing the method registry, so a site can
be built for any catalogue (a test's, an older release's). `medpeft report` reads the registry
(`medpeft_cli.methods.method_catalog()`, no torch) and passes its entries in: dicts with name, task,
kind, families, cite, summary, default_lr and url. The registry is keyed by (task, name) — `lora` for
classification and `lora` for text-to-image are different entries — and so is this catalogue.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from medpeft_cli.errors import UserError

DEFAULT_TASK = "classification"
UNKNOWN = "unknown"
# Capability-matrix columns when no method metadata was passed in (else: the families as the catalogue lists them).
FAMILY_ORDER = ("vit", "cnn", "other")


class Catalog:
    def __init__(self, methods: Iterable[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]] | None = None):
        self.entries: dict[tuple[str, str], dict[str, Any]] = {}
        if methods is None:
            return
        items = methods.items() if isinstance(methods, Mapping) else ((m.get("name") if isinstance(m, Mapping) else None, m) for m in methods)
        for name, meta in items:
            if not isinstance(name, str) or not isinstance(meta, Mapping):
                raise UserError(f"method metadata entry {name!r} is not a name with a dict of fields; pass what `medpeft methods` lists")
            entry = {**meta, "name": name, "task": str(meta.get("task") or DEFAULT_TASK)}
            self.entries[(entry["task"], name)] = entry

    def entry(self, task: Any, method: Any) -> dict[str, Any] | None:
        """The entry of (task, method); else the method's entry under another task, if it has one."""
        if not isinstance(method, str):
            return None
        found = self.entries.get((str(task), method))
        if found is None:
            found = next((e for (_, n), e in self.entries.items() if n == method), None)
        return found

    def kind(self, task: Any, method: Any) -> str:
        entry = self.entry(task, method)
        return str(entry.get("kind") or UNKNOWN) if entry else UNKNOWN

    def names(self) -> set[str]:
        return {name for _, name in self.entries}

    def for_method(self, method: Any) -> list[dict[str, Any]]:
        return [e for (_, n), e in sorted(self.entries.items()) if n == method]

    def families(self) -> list[str]:
        """Backbone families in the order the entries list them (the registry's order: `full` lists every one)."""
        return list(dict.fromkeys(str(f) for e in self.entries.values() for f in (e.get("families") or ())))
