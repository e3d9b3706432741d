"""Published results beside the measured cells, and the reproduction page of each source (pure, no I/O).

Published rows come from the `reference_results` table (medpeft_cli/reference/) as plain dicts that
already carry medpeft's names for what they describe (or why they have none: `unmapped`). They are
only ever put *beside* the boards' cells: nothing here changes a cell, a mean, a rank or a test.

A published row meets a measured cell when the board's task is the row's, the board's (backbone,
weights) is the published backbone (reference/mapping.py `backbone_matches`), and the board has a cell
at the row's (training fraction, method, dataset) with the row's metric. Boards of different backbones
or protocol versions that all match give one comparison each; they are never pooled.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from medpeft_cli.reference.mapping import BackboneRef, backbone_matches
from medpeft_cli.report.boards import Board, Cell
from medpeft_cli.report.keys import slug
from medpeft_cli.report.metrics import BY_NAME, MetricInfo
from medpeft_cli.report.stats import Stat

# Verdicts of one comparison (the reproduction page explains each)
INSIDE, OUTSIDE, SINGLE, NOT_MEASURED, UNMAPPED = "inside the CI", "outside the CI", "one seed: no CI", "not measured", "unmapped"


@dataclass
class Comparison:
    ref: dict[str, Any]
    board: Board | None = None
    cell: Cell | None = None
    stat: Stat | None = None

    @property
    def metric(self) -> MetricInfo | None:
        return BY_NAME.get(self.ref.get("medpeft_metric") or "")

    @property
    def difference(self) -> float | None:
        """measured mean - published value (on the metric's own scale)."""
        return None if self.stat is None or self.stat.mean is None else self.stat.mean - self.ref["value"]

    @property
    def verdict(self) -> str:
        if self.ref.get("unmapped"):
            return UNMAPPED
        if self.stat is None or self.stat.mean is None:
            return NOT_MEASURED
        if self.stat.half_width is None:
            return SINGLE
        return INSIDE if self.stat.low <= self.ref["value"] <= self.stat.high else OUTSIDE


def source_href(source: Any) -> str:
    return f"reproduction/{slug(source)}.html"


def _ref_backbone(ref: dict[str, Any]) -> BackboneRef:
    return BackboneRef(ref.get("backbone_arch"), ref.get("backbone_pretraining"), ref.get("backbone_pattern"), ref.get("backbone_weights") or "pretrained")


def compare(references: list[dict[str, Any]], boards: list[Board]) -> list[Comparison]:
    """One comparison per (published row, matching board with that cell); one 'not measured' or
    'unmapped' comparison for a row without any."""
    out: list[Comparison] = []
    for ref in references:
        if ref.get("unmapped") or ref.get("medpeft_metric") not in BY_NAME:
            out.append(Comparison(ref))
            continue
        wanted = _ref_backbone(ref)
        found = []
        for board in boards:
            if board.task != ref.get("task") or not backbone_matches(wanted, board.backbone, board.weights):
                continue
            cell = board.cell(ref.get("data_fraction"), ref.get("medpeft_method"), ref.get("medpeft_dataset"))
            stat = cell.stats.get(ref["medpeft_metric"]) if cell is not None else None
            if stat is not None and stat.mean is not None:
                found.append(Comparison(ref, board, cell, stat))
        out.extend(found or [Comparison(ref)])
    return out


def cell_marks(comparisons: list[Comparison]) -> dict[tuple, dict[tuple, list[dict[str, Any]]]]:
    """(board id, fraction, metric) -> {(method, dataset): published rows} for the overview's cells."""
    marks: dict[tuple, dict[tuple, list[dict[str, Any]]]] = {}
    for c in comparisons:
        if c.board is None:
            continue
        view = (c.board.id, c.cell.fraction, c.ref["medpeft_metric"])
        marks.setdefault(view, {}).setdefault((c.cell.method, c.cell.dataset), []).append(c.ref)
    return marks


def source_summaries(comparisons: list[Comparison]) -> list[dict[str, Any]]:
    """Per source: its page and how its published values fared (for the overview and the page)."""
    by_source: dict[str, list[Comparison]] = {}
    for c in comparisons:
        by_source.setdefault(c.ref["source"], []).append(c)
    out = []
    for source, items in sorted(by_source.items()):
        verdicts = Counter(c.verdict for c in items)
        published = len({(c.ref["ref_table"], c.ref["file_name"], c.ref["file_line"]) for c in items})
        out.append({"source": source, "href": source_href(source), "published": published, "verdicts": verdicts,
                    "tables": sorted({c.ref["ref_table"] for c in items}), "items": items})  # fmt: skip
    return out


def _row(c: Comparison) -> dict[str, Any]:
    ref, metric = c.ref, c.metric
    places = (metric.decimals + 1) if metric else 3
    return {
        "table": ref["ref_table"], "backbone": ref["backbone"], "dataset": ref["dataset"], "method": ref["method"],
        "metric": metric.label if metric else ref["metric"], "setting": ref["setting"] or "all training data",
        "published": ref["value_text"], "plus_minus": ref.get("plus_minus"), "places": places,
        "measured_backbone": c.board.backbone if c.board else None,
        "protocol": c.board.protocol_version if c.board else None, "board_id": c.board.id if c.board else None,
        "n": c.stat.n if c.stat else None, "mean": c.stat.mean if c.stat else None,
        "low": c.stat.low if c.stat else None, "high": c.stat.high if c.stat else None,
        "difference": c.difference, "verdict": c.verdict, "setting_note": c.cell.setting_note if c.cell else None,
        "medpeft": f"{ref.get('medpeft_method')} on {ref.get('medpeft_dataset')}" if not ref.get("unmapped") else None,
        "unmapped": ref.get("unmapped"), "line": f"{ref['file_name']}:{ref['file_line']}",
    }  # fmt: skip


def page_context(summary: dict[str, Any]) -> dict[str, Any]:
    """The reproduction page of one source."""
    items = summary["items"]
    mapped = [c for c in items if c.verdict != UNMAPPED]
    order = {v: i for i, v in enumerate((OUTSIDE, INSIDE, SINGLE, NOT_MEASURED))}
    compared = sorted((c for c in mapped if c.board), key=lambda c: (c.ref["ref_table"], order[c.verdict], c.ref["file_line"]))
    missing = [c for c in mapped if not c.board]
    return {
        "source": summary["source"], "summary": summary,
        "compared": [_row(c) for c in compared],
        "not_measured": [_row(c) for c in missing],
        "unmapped": [_row(c) for c in items if c.verdict == UNMAPPED],
        "verdict_names": {"inside": INSIDE, "outside": OUTSIDE, "single": SINGLE, "missing": NOT_MEASURED, "unmapped": UNMAPPED},
    }  # fmt: skip
