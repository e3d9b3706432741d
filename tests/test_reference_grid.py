"""examples/dutt2024.yaml (issue 19) plans offline and covers every published classification value of
the study: each (backbone, dataset, method) of its Tables 2-3 is run at all training data with 3 seeds on
a backbone the reproduction page compares with it, and the data-volume study is HAM10000, ViT-B/L x
full/BitFit/LoRA at the study's eight fractions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from medpeft_cli.reference.csvfile import read_published
from medpeft_cli.reference.mapping import backbone_matches, parse_backbone

REPO = Path(__file__).resolve().parents[1]
FRACTIONS = {0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0}


@pytest.mark.slow
def test_the_study_grid_covers_every_published_value():
    from medpeft_cli.sweep.grid import load_grid

    grid = load_grid(REPO / "examples" / "dutt2024.yaml")
    points = [p.spec for p in grid.points]
    assert len(points) == 576 and all(p.tuned for p in grid.points)
    assert {s.weights for s in points} == {"pretrained"} and {s.image_size for s in points} == {224}
    cells = Counter((s.backbone, s.dataset, s.method.name, s.data_fraction) for s in points)
    published = read_published(REPO / "medpeft_cli" / "resources" / "reference" / "dutt2024_classification_f1.csv").rows
    for row in published:
        ref = parse_backbone(row.backbone)
        runs = [n for (b, d, m, f), n in cells.items() if d == row.dataset and m == row.method and f == 1.0 and backbone_matches(ref, b, "pretrained")]
        assert runs == [3], (row.table, row.backbone, row.dataset, row.method)
    # nothing beyond the published tables at all training data: 150 cells x 3 seeds
    assert sum(n for (_, _, _, f), n in cells.items() if f == 1.0) == 150 * 3
    volume = {(b, m) for (b, d, m, f) in cells if f != 1.0}
    assert volume == {(b, m) for b in ("vit_base_patch16_224.orig_in21k", "vit_large_patch16_224.orig_in21k") for m in ("full", "bitfit", "lora")}
    assert {d for (_, d, _, f) in cells if f != 1.0} == {"ham10000"}
    assert {f for (_, d, m, f) in cells if d == "ham10000" and m == "lora"} == FRACTIONS
    assert all(n == 3 for n in cells.values())
