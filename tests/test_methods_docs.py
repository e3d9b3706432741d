"""The method tables of README.md and docs/*.md are the registry's: a committed table that differs fails
here, with the command that rewrites it."""

from __future__ import annotations

from medpeft_cli.methods import list_methods
from medpeft_cli.methods.docs import MARKED, REPO, TABLES, documents, render


def test_committed_tables_match_the_registry():
    stale = [str(p.relative_to(REPO)) for p in documents() if render(p.read_text(encoding="utf-8")) != p.read_text(encoding="utf-8")]
    assert not stale, f"method tables out of date in {', '.join(stale)}: run `python -m medpeft_cli.methods.docs`"


def test_every_table_is_placed_and_lists_every_method():
    placed = {m.group(2): p.name for p in documents() for m in MARKED.finditer(p.read_text(encoding="utf-8"))}
    assert set(placed) == set(TABLES), f"tables without a place in the docs: {set(TABLES) - set(placed)}"
    classification = TABLES["classification-study"]() + TABLES["classification-beyond"]()
    for info in list_methods("classification"):
        assert f"| `{info.name}` |" in classification and f"`{info.name}`" in TABLES["matrix"]() and info.name in TABLES["knobs"]()
        assert (info.url or info.cite) in classification
    assert all(f"| `{m.name}` |" in TABLES["t2i"]() for m in list_methods("t2i"))


def test_a_stale_table_is_rewritten():
    text = "before\n<!-- methods-table: matrix -->\n| old |\n<!-- /methods-table -->\nafter\n"
    new = render(text)
    assert new.startswith("before\n<!-- methods-table: matrix -->\n| method | vit |") and new.endswith("<!-- /methods-table -->\nafter\n")
    assert "| old |" not in new and render(new) == new
