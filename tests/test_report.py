"""The static leaderboard: aggregation numbers, rendered pages, escaping, safe paths, no torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from medpeft_cli.errors import UserError
from medpeft_cli.report import build_site, build_site_from_db
from medpeft_cli.report.aggregate import Stat, build_tables, summarize
from medpeft_cli.report.formatting import fmt, mean_std, params, percent
from medpeft_cli.report.keys import page_name
from medpeft_cli.report.render import make_env
from medpeft_cli.report.sitedir import MARKER
from medpeft_cli.store.results import COLUMNS

XSS_DATASET = "<script>alert(1)</script>"
XSS_METHOD = '"><img src=x onerror=alert(1)>'


def make_row(key: str, method: str = "lora", f1: float | None = 0.6, seed: int = 0, **kw) -> dict:
    """A complete result row with recognisable values; keyword arguments override columns."""
    row = {
        "run_key": key,
        "protocol_version": 1,
        "status": "ok",
        "task": "classification",
        "dataset": "dermaset",
        "backbone": "vitnet",
        "weights": "in21k",
        "method": method,
        "data_fraction": 1.0,
        "seed": seed,
        "epochs": 3,
        "lr": 1e-3,
        "batch_size": 32,
        "image_size": 64,
        "spec_json": json.dumps({"method": {"name": method, "options": {"rank": 8}}, "marker": "spec-marker-42"}),
        "test_macro_f1": f1,
        "test_accuracy": 0.75,
        "test_balanced_accuracy": 0.65,
        "test_auroc": 0.9,
        "val_macro_f1": 0.61,
        "best_epoch": 2,
        "num_classes": 2,
        "class_names_json": json.dumps(["benign-class", "malignant-class"]),
        "per_class_f1_json": json.dumps([0.55, 0.65]),
        "metrics_json": json.dumps(
            {
                "val": {"macro_f1": 0.61, "loss": 0.5},
                "test": {"macro_f1": f1},
                "history": [
                    {"epoch": 1, "train_loss": 0.9, "val_macro_f1": 0.4},
                    {"epoch": 2, "train_loss": 0.7123, "val_macro_f1": 0.61},
                ],
            }
        ),
        "trainable_params": 28_710,
        "head_params": 1_538,
        "method_params": 27_172,
        "total_params": 5_700_000,
        "trainable_pct": 100 * 28_710 / 5_700_000,
        "wall_time_s": 42.0,
        "train_images_per_s": 512.5,
        "peak_memory_mb": 1234.0,
        "memory_kind": "cuda_max_allocated",
        "medpeft_version": "0.1.0",
        "git_commit": "deadbeefcafe",
        "python_version": "3.11.7",
        "torch_version": "9.9.9-torchver",
        "timm_version": "1.0.20",
        "peft_version": "0.17.0",
        "accelerate_version": "1.15.0",
        "device": "Test GPU 80GB",
        "world_size": 1,
        "container_image": "ghcr.io/example/medpeft:testtag",
        "dataset_checksum": "sha256:feedface",
        "dataset_source": "medmnist:dermamnist",
        "weights_source": "hf-hub:timm/vit_tiny",
        "backbone_checksum": "sha256:0badc0de",
        "started_at": "2025-01-01T00:00:00Z",
        "finished_at": "2025-01-01T00:01:00Z",
    }
    row.update(kw)
    return row


@pytest.fixture
def rows() -> list[dict]:
    """3 seeds of A (0.5, 0.6, 0.7), 1 seed of C (0.8), A under protocol 2, A diverged."""
    return [
        make_row("a-s0", "method-A", 0.5, seed=0),
        make_row("a-s1", "method-A", 0.6, seed=1),
        make_row("a-s2", "method-A", 0.7, seed=2),
        make_row("c-s0", "method-C", 0.8, seed=0),
        make_row("a-v2-s0", "method-A", 0.9, seed=0, protocol_version=2),
        make_row("a-s3-div", "method-A", float("nan"), seed=3, status="diverged"),
    ]


def html_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.html"))


# --- aggregation --------------------------------------------------------------------------------


def test_summarize_mean_and_sample_std():
    stat = summarize([0.5, 0.6, 0.7])
    assert stat.n == 3
    assert stat.mean == pytest.approx(0.6, abs=1e-12)
    assert stat.std == pytest.approx(0.1, abs=1e-12)
    assert summarize([0.8]) == Stat(1, 0.8, None)
    assert summarize([None, float("nan"), 0.4, float("inf")]) == Stat(1, 0.4, None)
    assert summarize([]) == Stat(0, None, None)


def test_tables_split_by_protocol_and_exclude_non_ok(rows):
    tables = build_tables(rows)
    assert [(t.dataset, t.backbone, t.protocol_version) for t in tables] == [
        ("dermaset", "vitnet", 2),
        ("dermaset", "vitnet", 1),
    ]
    v2, v1 = tables
    assert [(line.method, line.n) for line in v2.lines] == [("method-A", 1)]
    assert v2.lines[0].primary == Stat(1, 0.9, None)

    # sorted by mean macro-F1, best marked; the diverged run is listed, not averaged
    assert [line.method for line in v1.lines] == ["method-C", "method-A"]
    best, a = v1.lines
    assert best.best and not a.best
    assert best.primary == Stat(1, 0.8, None)
    assert a.n == 3
    assert a.primary.mean == pytest.approx(0.6, abs=1e-12)
    assert a.primary.std == pytest.approx(0.1, abs=1e-12)
    assert a.stats["test_accuracy"] == Stat(3, 0.75, 0.0)
    assert a.trainable_params == (28_710, 28_710)
    assert a.trainable_pct[0] == pytest.approx(100 * 28_710 / 5_700_000)
    assert [r["run_key"] for r in v1.excluded] == ["a-s3-div"]
    assert v1.n_runs == 5


def test_best_is_marked_per_data_fraction():
    tables = build_tables(
        [
            make_row("f1", "m1", 0.9),
            make_row("f2", "m2", 0.8),
            make_row("f3", "m1", 0.4, data_fraction=0.1),
            make_row("f4", "m2", 0.5, data_fraction=0.1),
        ]
    )
    lines = [(line.method, line.data_fraction, line.best) for line in tables[0].lines]
    assert lines == [("m1", 1.0, True), ("m2", 1.0, False), ("m2", 0.1, True), ("m1", 0.1, False)]


def test_lines_flag_mixed_settings():
    (table,) = build_tables([make_row("x1", lr=1e-3), make_row("x2", lr=1e-4, seed=1)])
    assert table.lines[0].mixed == ("lr",)


def test_number_formats():
    assert mean_std(Stat(3, 0.6, 0.1)) == "0.600 ± 0.100"
    assert mean_std(Stat(1, 0.8, None)) == "0.800"
    assert mean_std(Stat(0, None, None)) == "—"
    assert params(512) == "512"
    assert params(28_710) == "28.7K"
    assert params(1_234_567) == "1.2M"
    assert params(999_999) == "1.0M"
    assert percent(0.0341) == "0.034 %"
    assert percent(1.234) == "1.2 %"
    assert percent(100.0) == "100.0 %"
    assert fmt(0.1, "fraction") == "10 %"
    assert fmt(float("nan"), "metric") == "NaN"
    assert fmt(None, "metric") == "—"
    assert fmt(200.0, "seconds") == "3 min 20 s"


# --- rendered site ------------------------------------------------------------------------------


def test_index_shows_tables_and_links_existing_run_pages(rows, tmp_path):
    index = build_site(rows, tmp_path / "site", title="Test board", db_label="db/file.duckdb")
    site = tmp_path / "site"
    assert index == site / "index.html"
    text = index.read_text(encoding="utf-8")
    for expected in ("Test board", "dermaset", "vitnet", "method-A", "method-C", "0.600 ± 0.100", "0.800", "0.900"):
        assert expected in text
    assert "protocol v1" in text and "protocol v2" in text
    assert "mean ± std over seeds" in text
    assert "6 runs" in text and "1 diverged" in text
    assert "28.7K" in text
    hrefs = re.findall(r'href="(runs/[^"]+)"', text)
    assert sorted(set(hrefs)) == sorted(f"runs/{r['run_key']}.html" for r in rows)
    assert all((site / h).is_file() for h in hrefs)
    assert (site / "static" / "style.css").is_file()
    assert 'href="static/style.css"' in text
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert (site / MARKER).is_file()


def test_run_page_shows_spec_metrics_and_provenance(rows, tmp_path):
    build_site(rows, tmp_path / "site")
    page = (tmp_path / "site" / "runs" / "a-s1.html").read_text(encoding="utf-8")
    for expected in (
        "a-s1",
        "spec-marker-42",  # the pretty-printed spec
        "&#34;rank&#34;: 8",
        "benign-class",
        "malignant-class",
        "0.650",  # per-class F1
        "train_loss",
        "0.7123",  # history
        "28,710 (28.7K)",
        "5,700,000",
        "deadbeefcafe",
        "9.9.9-torchver",
        "Test GPU 80GB",
        "ghcr.io/example/medpeft:testtag",
        "sha256:feedface",
        "sha256:0badc0de",
        "hf-hub:timm/vit_tiny",
        "medmnist:dermamnist",
        "2025-01-01T00:01:00Z",
        "3.11.7",
        "1.15.0",
        'href="../static/style.css"',
        'href="../index.html"',
    ):
        assert expected in page, expected
    diverged = (tmp_path / "site" / "runs" / "a-s3-div.html").read_text(encoding="utf-8")
    assert "not included in any mean" in diverged


def test_downloads_hold_every_row(rows, tmp_path):
    build_site(rows, tmp_path / "site")
    data = json.loads((tmp_path / "site" / "results.json").read_text(encoding="utf-8"))
    assert [r["run_key"] for r in data] == [r["run_key"] for r in rows]
    assert data[-1]["test_macro_f1"] is None  # NaN written as null
    csv_lines = (tmp_path / "site" / "results.csv").read_text(encoding="utf-8").splitlines()
    assert csv_lines[0].startswith("run_key,protocol_version,status")
    index = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert 'href="results.csv"' in index and 'href="results.json"' in index


def test_user_strings_are_escaped_everywhere(tmp_path):
    evil = make_row(
        "xss-1",
        XSS_METHOD,
        0.5,
        dataset=XSS_DATASET,
        backbone=XSS_DATASET,
        weights=XSS_METHOD,
        class_names_json=json.dumps([XSS_DATASET, XSS_METHOD]),
        spec_json=json.dumps({"path": XSS_DATASET, "note": XSS_METHOD}),
        metrics_json=json.dumps({"test": {XSS_DATASET: 1}, "history": [{XSS_METHOD: 1}]}),
        device=XSS_METHOD,
        git_commit=XSS_DATASET,
    )
    build_site([evil, make_row("xss-2", XSS_METHOD, 0.4, seed=1, dataset=XSS_DATASET, backbone=XSS_DATASET, weights=XSS_METHOD)], tmp_path / "site", title=XSS_DATASET)
    pages = html_files(tmp_path / "site")
    assert len(pages) == 3
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert "<script" not in text.lower()
        assert "<img" not in text.lower()
    index = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in index
    assert "&lt;img src=x onerror=alert(1)&gt;" in index


def test_autoescape_is_on_for_j2_templates():
    env = make_env()
    assert env.autoescape is True
    assert env.from_string("{{ x }}").render(x="<b>") == "&lt;b&gt;"


@pytest.mark.parametrize("bad_key", ["../evil", "../../evil", "a/b", "..", ".hidden", "ok\n", "c:\\x", "x" * 300, None])
def test_unsafe_run_keys_write_nothing_outside(bad_key, tmp_path):
    out = tmp_path / "out" / "site"
    rows = [make_row("good-1"), make_row(bad_key, seed=1)]
    build_site(rows, out)
    assert page_name(bad_key) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["site"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["good-1.html"]
    assert not list(tmp_path.rglob("evil*"))
    index = (out / "index.html").read_text(encoding="utf-8")
    assert re.findall(r'href="(runs/[^"]+)"', index) == ["runs/good-1.html"]
    assert "0.600 ± 0.000" in index  # the run without a page still counts in the mean


def test_missing_and_nan_values_do_not_break_the_site(tmp_path):
    bare = {name: None for name in COLUMNS}
    bare.update(run_key="bare-1", status="ok")
    junk = make_row("junk-1", metrics_json="{not json", spec_json="[1,", class_names_json="7", test_auroc=float("nan"))
    build_site([bare, junk], tmp_path / "site")
    assert (tmp_path / "site" / "runs" / "bare-1.html").is_file()
    assert "{not json" in (tmp_path / "site" / "runs" / "junk-1.html").read_text(encoding="utf-8")


def test_empty_store_gives_an_empty_board(tmp_path):
    text = build_site([], tmp_path / "site").read_text(encoding="utf-8")
    assert "No runs yet" in text


# --- writing the folder -------------------------------------------------------------------------


def test_rebuild_replaces_the_old_site(rows, tmp_path):
    out = tmp_path / "site"
    build_site(rows, out)
    build_site(rows[:1], out)
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["a-s0.html"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no temporary folders left


def test_refuses_to_replace_a_folder_that_is_not_a_site(rows, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        build_site(rows, out)
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_failed_build_keeps_the_previous_site(rows, tmp_path, monkeypatch):
    out = tmp_path / "site"
    build_site(rows, out)
    before = (out / "index.html").read_text(encoding="utf-8")

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("medpeft_cli.report.export.write_csv", boom)
    with pytest.raises(RuntimeError):
        build_site(rows[:1], out)
    assert (out / "index.html").read_text(encoding="utf-8") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


# --- from the store, and without torch ----------------------------------------------------------


def test_build_site_from_db(rows, tmp_path):
    from medpeft_cli.store import append

    db = tmp_path / "results.duckdb"
    for row in rows:
        assert set(row) <= set(COLUMNS)
        assert append(db, row)
    index = build_site_from_db(db, tmp_path / "site", title="From DB")
    text = index.read_text(encoding="utf-8")
    assert "From DB" in text and "0.600 ± 0.100" in text and "method-C" in text
    assert str(db) in text
    assert (tmp_path / "site" / "runs" / "a-s2.html").is_file()
    data = json.loads((tmp_path / "site" / "results.json").read_text(encoding="utf-8"))
    assert len(data) == len(rows)
    assert any(r["test_macro_f1"] is None for r in data)


def test_build_site_from_missing_db_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        build_site_from_db(tmp_path / "nope.duckdb", tmp_path / "site")


def test_report_never_imports_torch(tmp_path):
    code = (
        "import sys, json\n"
        "import medpeft_cli.report as r\n"
        "from medpeft_cli.report import aggregate, context, render, export, sitedir, keys, formatting, assets\n"
        f"r.build_site([{{'run_key': 'k1', 'status': 'ok', 'test_macro_f1': 0.5}}], {str(tmp_path / 'site')!r})\n"
        "bad = [m for m in ('torch', 'timm', 'peft', 'accelerate', 'torchvision') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
