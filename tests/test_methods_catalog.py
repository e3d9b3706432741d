"""The method metadata that `medpeft report` reads without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys

from medpeft_cli.methods import catalog


def test_the_shipped_catalog_matches_the_registry():
    shipped = json.loads(catalog.CATALOG_FILE.read_text(encoding="utf-8"))
    assert shipped["source_digest"] == catalog.source_digest(), "stale: run `python -m medpeft_cli.methods.catalog`"
    assert shipped["methods"] == catalog.live_catalog()
    assert {"lora", "full", "ssf"} <= {m["name"] for m in shipped["methods"]}


def test_report_reads_it_without_torch(tmp_path):
    code = (
        "import sys\n"
        "from medpeft_cli.methods.catalog import method_catalog\n"
        "names = [m['name'] for m in method_catalog()]\n"
        "assert 'lora' in names and 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_changed_method_module_falls_back_to_the_live_registry(monkeypatch):
    monkeypatch.setattr(catalog, "source_digest", lambda: "edited")
    monkeypatch.setattr(catalog, "live_catalog", lambda: [{"name": "live"}])
    assert catalog.method_catalog() == [{"name": "live"}]
