"""The Pages workflow publishes the demo leaderboard when no results database is given: it runs the
shipped demo study, adds the study's published tables and builds the site from them."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _steps() -> str:
    flow = yaml.safe_load((REPO / ".github" / "workflows" / "pages.yml").read_text())
    return "\n".join(step.get("run", "") for step in flow["jobs"]["build"]["steps"])


def test_pages_runs_the_demo_study_then_imports_references_then_reports():
    script = _steps()
    demo, refs, report = (script.index(s) for s in ("sweep run examples/demo-study.yaml", "reference import --builtin dutt2024", "medpeft report"))
    assert demo < refs < report
    assert (REPO / "examples" / "demo-study.yaml").is_file()
    assert "mv results/demo-study.duckdb results/medpeft.duckdb" in script  # the demo's output: examples/demo-study.yaml
    assert "db: results/demo-study.duckdb" in (REPO / "examples" / "demo-study.yaml").read_text()


def test_pages_rebuilds_when_the_demo_or_the_code_changes():
    flow = yaml.safe_load((REPO / ".github" / "workflows" / "pages.yml").read_text())
    paths = flow[True]["push"]["paths"]  # YAML 1.1 reads the key `on` as True
    assert {"examples/demo-study.yaml", "medpeft_cli/**", "results/medpeft.duckdb"} <= set(paths)
