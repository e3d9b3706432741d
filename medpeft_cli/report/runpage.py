"""Run pages: every run's full stored record, in shard pages runs/<xx>.html (one section per run).

A site of 10,000 runs cannot afford 10,000 rich HTML pages (about 1 ms of Python each, and 200 MB).
Instead each run's record (every column, its spec, metrics and history, and what its run directory
adds) is written once, as JSON text, into a <section id="<run_key>"> of a shard page:

- with JavaScript off it reads as it is (CSS shows only the linked run);
- static/run.js draws the full run view from it: setup, results, per-class F1, confusion matrix,
  training curves, samples, all metrics, history, provenance, files and spec.

A run's address is runs/<shard>.html#<run_key>, where shard = the first two hex digits of
sha256(run_key): it never changes as the site grows. Only keys that are safe file names (keys.page_name)
get a section, so the published-files folder runs/<run_key>/ can never point outside the site.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from markupsafe import Markup

from medpeft_cli.report.formatting import fmt
from medpeft_cli.report.keys import page_name, slug
from medpeft_cli.report.metrics import CATALOGUE
from medpeft_cli.report.runfiles import RunFiles, scan
from medpeft_cli.report.runs import Run, parse_json

# What run.js needs to know about the metrics: labels and decimals (one source: report/metrics.py).
METRICS_LAYOUT = json.dumps([{"name": m.name, "label": m.label, "decimals": m.decimals} for m in CATALOGUE])


def shard(run_key: str) -> str:
    return hashlib.sha256(run_key.encode("utf-8", "surrogatepass")).hexdigest()[:2]


def run_href(run_key: Any) -> str | None:
    """Link to a run, relative to the site root; None when the key is not a safe name (no section)."""
    if page_name(run_key) is None:
        return None
    return f"runs/{shard(run_key)}.html#{run_key}"


def class_names(row: dict[str, Any]) -> list[Any]:
    names, _ = parse_json(row.get("class_names_json"))
    return names if isinstance(names, list) else []


def _files(found: RunFiles) -> dict[str, Any]:
    confusion = found.confusion
    return {
        "files": [asdict(f) for f in found.files],
        "samples": found.samples,
        "confusion": None if confusion is None else {"names": confusion["names"], "counts": [[c["count"] for c in r["cells"]] for r in confusion["rows"]]},
        "note": found.note,
    }


def record_text(run: Run, files: RunFiles | None) -> str:
    """The run's record as JSON text: its result row as in results.json (JSON columns such as spec_json
    and metrics_json stay text; run.js parses them) plus what its run directory adds, one field per line."""
    found = json.dumps(_files(files), ensure_ascii=False) if files is not None else "null"
    text = f'{run.json[:-1]}, "files": {found}}}' if len(run.json) > 2 else f'{{"files": {found}}}'
    # Inside JSON strings every quote is escaped, so ', "' only ever occurs between fields.
    return "{\n" + text[1:-1].replace(', "', ',\n"') + "\n}"


def _pre_text(text: str) -> Markup:
    """Escaped for the inside of <pre>: quotes need no escaping there, and JSON is full of them."""
    return Markup(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def _summary(row: dict[str, Any]) -> str:
    parts = [fmt(row.get(c)) for c in ("dataset", "backbone", "method")]
    parts.append(f"{fmt(row.get('data_fraction'), 'fraction')} of the training data")
    parts.append(f"seed {fmt(row.get('seed'))}")
    if row.get("status") != "ok":
        parts.append(f"status {fmt(row.get('status'))}")
    return " · ".join(parts)


def shard_records(runs: list[Run], runs_dir: Path | None) -> dict[str, list[dict[str, Any]]]:
    """Shard name -> the records of its runs (key, links, summary line, JSON text, files found)."""
    shards: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        key = run.key
        if page_name(key) is None:
            continue
        files = scan(runs_dir, key, class_names(run.row)) if runs_dir is not None else None
        shards[shard(key)].append(
            {
                "key": key,
                "dataset_href": f"datasets/{slug(run.row.get('dataset'))}.html",
                "method_href": f"methods/{slug(run.row.get('method'))}.html",
                "summary": _summary(run.row),
                "text": _pre_text(record_text(run, files)),
                "found": files,
            }
        )
    return dict(sorted(shards.items()))
