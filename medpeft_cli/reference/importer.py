"""`medpeft reference import`: CSV files of published results -> the `reference_results` table.

Every file is read and checked first (reference/csvfile.py); each row is mapped to medpeft's names
(reference/mapping.py) or kept with the reason it cannot be; then all rows are stored in one
transaction (reference/store.py). A bad file imports nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from medpeft_cli.errors import UserError
from medpeft_cli.reference.csvfile import PublishedFile, PublishedRow, read_published
from medpeft_cli.reference.mapping import resolve
from medpeft_cli.reference.store import ImportOutcome, replace_source

# Published result sets shipped in medpeft_cli/resources/reference/ (see the README there): name -> (source, files)
BUILTIN: dict[str, tuple[str, tuple[str, ...]]] = {
    "dutt2024": ("Dutt et al. 2024", ("dutt2024_classification_f1.csv", "dutt2024_t2i_fid.csv")),
}


def builtin_set(name: str) -> tuple[str, list[Path]]:
    """(source label, files) of a shipped set."""
    if name not in BUILTIN:
        raise UserError(f"no built-in published results called {name!r}; choose {', '.join(BUILTIN)}")
    source, names = BUILTIN[name]
    root = Path(str(files("medpeft_cli") / "resources" / "reference"))
    paths = [root / n for n in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"the shipped reference file {missing[0]} is missing; reinstall medpeft")
    return source, paths


@dataclass
class ImportReport:
    source: str
    files: list[PublishedFile]
    rows: list[dict[str, Any]]
    outcome: ImportOutcome | None = None
    per_table: Counter = field(default_factory=Counter)

    @property
    def unmapped(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["unmapped"]]


def _row(published: PublishedRow, file: PublishedFile, known_methods: Mapping[str, Collection[str]], known_datasets: Collection[str]) -> dict[str, Any]:
    r = resolve(
        backbone=published.backbone, dataset=published.dataset, method=published.method, metric=published.metric,
        data_fraction=published.data_fraction, train_images=published.train_images,
        known_methods=known_methods, known_datasets=known_datasets,
    )  # fmt: skip
    ref = r.backbone
    return {
        "ref_table": published.table, "task": r.task, "backbone": published.backbone, "dataset": published.dataset,
        "method": published.method, "metric": published.metric, "setting": published.setting, "value": published.value,
        "value_text": published.value_text, "plus_minus": published.plus_minus,
        "medpeft_dataset": r.dataset, "medpeft_method": r.method, "medpeft_metric": r.metric, "data_fraction": r.data_fraction,
        "backbone_arch": ref.arch if ref else None, "backbone_pretraining": ref.pretraining if ref else None,
        "backbone_pattern": ref.pattern if ref else None, "backbone_weights": ref.weights if ref else None,
        "unmapped": r.unmapped, "file_name": file.path.name, "file_line": published.line, "file_sha256": file.sha256,
    }  # fmt: skip


def import_published(
    db: Path, paths: list[Path], source: str, known_methods: Mapping[str, Collection[str]], known_datasets: Collection[str]
) -> ImportReport:
    """Read, map and store the published rows of `paths` under `source` (replacing its earlier rows of the same tables)."""
    source = " ".join((source or "").split())
    if not source:
        raise UserError("--source is empty; name where the numbers were published, e.g. --source \"Dutt et al. 2024\"")
    if not paths:
        raise UserError("give a CSV file of published results, or --builtin NAME")
    parsed = [read_published(p) for p in paths]
    report = ImportReport(source, parsed, [])
    seen: dict[tuple, str] = {}
    for file in parsed:
        for published in file.rows:
            where = f"{file.path} line {published.line}"
            if published.identity() in seen:
                raise UserError(f"{where}: the same entry as {seen[published.identity()]}; import each published value once")
            seen[published.identity()] = where
            report.rows.append(_row(published, file, known_methods, known_datasets))
            report.per_table[published.table] += 1
    report.outcome = replace_source(db, source, report.rows)
    return report
