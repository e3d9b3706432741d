"""The method tables of README.md and docs/*.md, written from the registry.

Each table sits between two marker comments in the Markdown source:

    <!-- methods-table: classification-study -->
    ...generated...
    <!-- /methods-table -->

`python -m medpeft_cli.methods.docs` rewrites every marked table of the repository's README.md and
docs/*.md; tests/test_methods_docs.py fails while a committed table differs from the registry.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from medpeft_cli.methods.catalog import list_methods
from medpeft_cli.methods.registry import FAMILIES, FAMILY_DESCRIPTIONS, MethodInfo

REPO = Path(__file__).resolve().parents[2]
MARKED = re.compile(r"(<!-- methods-table: ([a-z0-9-]+) -->\n)(.*?)(<!-- /methods-table -->)", re.DOTALL)


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _table(header: list[str], rows: Iterable[Iterable[str]], align: str = "---") -> str:
    return "\n".join([_row(header), _row(align for _ in header), *(_row(r) for r in rows)]) + "\n"


def _families(info: MethodInfo) -> str:
    return "all" if set(FAMILIES) <= info.families else ", ".join(f for f in FAMILIES if f in info.families)


def _reference(info: MethodInfo) -> str:
    return f"[{info.cite}]({info.url})" if info.url else info.cite


def _classification(study: bool) -> str:
    rows = [
        (f"`{m.name}`", _families(m), m.kind, m.summary, "peft" if m.peft_owned else "ours", m.knob or "–",
         "yes" if m.mergeable else "no", _reference(m))
        for m in list_methods("classification") if m.in_study == study
    ]  # fmt: skip
    return _table(["name", "families", "kind", "what trains (besides the head)", "impl.", "size knob", "merge", "reference"], rows)


def _matrix() -> str:
    rows = [(f"`{m.name}`", *("yes" if f in m.families else "–" for f in FAMILIES)) for m in list_methods("classification")]
    return _table(["method", *FAMILIES], rows)


def _by_family() -> str:
    methods = list_methods("classification")
    rows = [(f"`{f}`", FAMILY_DESCRIPTIONS[f], ", ".join(f"`{m.name}`" for m in methods if f in m.families)) for f in FAMILIES]
    return _table(["family", "what", "methods"], rows)


def _knobs() -> str:
    methods = list_methods("classification")
    knobs = dict.fromkeys(m.knob for m in methods if m.knob)
    rows = [(f"`{k}`", ", ".join(m.name for m in methods if m.knob == k)) for k in knobs]
    rows.append(("none (fixed size: `--param-budget` is refused)", ", ".join(m.name for m in methods if not m.knob)))
    return _table(["knob", "methods"], rows)


def _t2i() -> str:
    rows = [
        (f"`{m.name}`", m.kind, m.summary, m.knob or "–",
         "`adapter/` (diffusers LoRA format)" if m.peft_owned else "`trainable.safetensors`", _reference(m))
        for m in list_methods("t2i")
    ]  # fmt: skip
    return _table(["method", "kind", "what trains", "size knob", "saved as", "reference"], rows)


TABLES: dict[str, Callable[[], str]] = {
    "classification-study": lambda: _classification(study=True),
    "classification-beyond": lambda: _classification(study=False),
    "matrix": _matrix,
    "families": _by_family,
    "knobs": _knobs,
    "t2i": _t2i,
}


def render(text: str) -> str:
    """`text` with every marked table replaced by the registry's; an unknown table name is an error."""

    def replace(match: re.Match) -> str:
        name = match.group(2)
        if name not in TABLES:
            raise ValueError(f"unknown methods table {name!r}; known: {', '.join(TABLES)}")
        return match.group(1) + TABLES[name]() + match.group(4)

    return MARKED.sub(replace, text)


def documents(root: Path = REPO) -> list[Path]:
    """The Markdown files that hold marked tables."""
    candidates = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    return [p for p in candidates if p.is_file() and MARKED.search(p.read_text(encoding="utf-8"))]


def main() -> int:
    found = documents()
    if not found:
        print(f"no marked method tables under {REPO} (run this from a source checkout)", file=sys.stderr)
        return 1
    for path in found:
        text = path.read_text(encoding="utf-8")
        new = render(text)
        if new != text:
            path.write_text(new, encoding="utf-8")
        print(f"{'wrote' if new != text else 'current'}: {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
