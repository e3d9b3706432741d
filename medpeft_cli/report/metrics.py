"""Which metrics the site knows, and in which direction each is better.

The metric set is data-driven: a board shows every catalogue metric that at least one of its runs
has, read from the row column ``test_<name>`` or, when a task stores it only there, from
``metrics_json["test"][<name>]`` (e.g. FID/KID of text-to-image runs). Metrics outside the catalogue
are still shown on run pages and in the downloads, but never ranked: their direction is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    name: str  # key in metrics_json["test"]; the row column is test_<name>
    label: str
    higher_is_better: bool
    decimals: int

    @property
    def column(self) -> str:
        return f"test_{self.name}"

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


CATALOGUE: tuple[MetricInfo, ...] = (
    MetricInfo("macro_f1", "Macro-F1", True, 3),
    MetricInfo("accuracy", "Accuracy", True, 3),
    MetricInfo("balanced_accuracy", "Balanced accuracy", True, 3),
    MetricInfo("auroc", "AUROC", True, 3),
    MetricInfo("fid", "FID", False, 2),
    MetricInfo("kid", "KID", False, 4),
)
BY_NAME = {m.name: m for m in CATALOGUE}

# The study's headline metric per task: macro-F1 for classification, FID for generation.
# A board's default metric is the first of these its runs have (else the first catalogue metric they have).
DEFAULT_ORDER: tuple[str, ...] = ("macro_f1", "fid")


def default_metric(available: list[MetricInfo]) -> MetricInfo | None:
    names = {m.name for m in available}
    for name in DEFAULT_ORDER:
        if name in names:
            return BY_NAME[name]
    return available[0] if available else None
