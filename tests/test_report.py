"""The static leaderboard site: rendered pages, downloads, escaping, safe paths, the CLI, no torch.

Aggregation and statistics have their own file (test_report_stats.py); the browser checks are in
tests/browser/.
"""

from __future__ import annotations

import csv
import html
import json
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pytest

from medpeft_cli.errors import UserError
from medpeft_cli.report import build_site, build_site_from_db
from medpeft_cli.report.formatting import estimate, fmt, params, percent
from medpeft_cli.report.keys import page_name, slug
from medpeft_cli.report.render import make_env
from medpeft_cli.report.runpage import run_href, shard
from medpeft_cli.report.sitedir import MARKER
from medpeft_cli.report.stats import Stat
from medpeft_cli.store.results import COLUMNS
from synthetic_results import method_catalog, synthetic_rows

XSS_DATASET = "<script>alert(1)</script>"
XSS_METHOD = '"><img src=x onerror=alert(1)>'
WHEN = datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)
CATALOG = [
    {"name": "method-A", "task": "classification", "kind": "additive", "families": ["vit", "cnn"], "cite": "A et al., 2099",
     "summary": "The A method.", "default_lr": 1e-3},
    {"name": "full", "task": "classification", "kind": "baseline", "families": ["vit", "cnn", "other"], "cite": "baseline",
     "summary": "Everything trains.", "default_lr": 1e-4},
]  # fmt: skip


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
        "spec_json": json.dumps({"method": {"name": method, "rank": 8}, "marker": "spec-marker-42"}),
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
        "timm_version": "1.0.31",
        "peft_version": "0.21.2",
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


def sql(query: str) -> list[tuple]:
    con = duckdb.connect()
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def build(rows, out, **kw) -> Path:
    kw.setdefault("generated_at", WHEN)
    return build_site(rows, out, **kw)


def record(site: Path, key: str) -> dict:
    """Run `key`'s stored record from its shard page (what static/run.js draws as the run page)."""
    page = text(site / "runs" / f"{shard(key)}.html")
    found = re.search(rf'<section class="run-record" id="{re.escape(key)}"[^>]*>.*?<pre class="record">(.*?)</pre>', page, re.S)
    assert found, key
    return json.loads(html.unescape(found.group(1)))


def recorded_keys(site: Path) -> list[str]:
    return sorted(k for p in (site / "runs").glob("*.html") for k in re.findall(r'<section class="run-record" id="([^"]+)"', text(p)))


# --- formats --------------------------------------------------------------------------------------


def test_number_formats():
    assert estimate(Stat(3, 0.6, 0.1, 0.2484)) == "0.600 ± 0.248"
    assert estimate(Stat(1, 0.8)) == "0.800"
    assert estimate(Stat(0, None)) == "—"
    assert estimate(Stat(2, 41.234, 1.0, 2.5), 2) == "41.23 ± 2.50"
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
    assert fmt(2048, "bytes") == "2.0 KB"


def test_slugs_are_safe_and_distinct():
    assert slug("demo-derm") == "demo-derm"
    assert slug("lora") == "lora"
    names = ["LoRA", "lora", XSS_DATASET, "../../etc", "a b", "a_b", None, ""]
    slugs = [slug(n) for n in names]
    assert len(set(slugs)) == len(names)
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9_-]*", s) for s in slugs)


# --- the pages ------------------------------------------------------------------------------------


def test_overview_table_is_methods_by_datasets_with_ci(rows, tmp_path):
    index = build(rows, tmp_path / "site", title="Test board", db_label="db/file.duckdb", methods=CATALOG)
    site = tmp_path / "site"
    assert index == site / "index.html"
    page = text(index)
    for expected in ("Test board", "dermaset", "vitnet", "method-A", "method-C", "protocol v1", "protocol v2"):
        assert expected in page
    # 0.5/0.6/0.7 -> mean 0.600, 95 % CI half-width t(0.975, 2) * 0.1 / sqrt(3) = 0.248; n shown
    assert '0.600<span class="ci"> ± 0.248</span><span class="n">3</span>' in page
    assert f'<a href="{run_href("c-s0")}">0.800</a><span class="n">1</span>' in page  # one seed: no interval; links to its run
    assert "95 % confidence interval" in page and "ties get the average of the ranks they span" in page
    assert "Wilcoxon signed-rank" in page and "Holm" in page
    assert "6 runs: 5 finished, 1 diverged" in page
    assert "28.7K" in page and "additive" in page  # trainable parameters; family from the catalogue
    assert 'href="datasets/dermaset.html"' in page and 'href="methods/method-a.html"' not in page
    assert 'href="methods/method-A' in page or f'href="methods/{slug("method-A")}.html"' in page
    assert 'href="static/style.css"' in page and 'src="static/site.js"' in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    assert (site / MARKER).is_file()


def test_every_metric_and_fraction_is_a_view_of_the_overview(tmp_path):
    rows = [make_row(f"k{i}", m, f1, seed=s, data_fraction=f, test_accuracy=acc)
            for i, (m, f1, s, f, acc) in enumerate([("A", 0.9, 0, 1.0, 0.95), ("B", 0.8, 0, 1.0, 0.99), ("A", 0.5, 0, 0.1, 0.6)])]  # fmt: skip
    page = text(build(rows, tmp_path / "site"))
    views = re.findall(r'<tbody data-view data-view-fraction="([^"]+)" data-view-metric="([^"]+)"([^>]*)>', page)
    assert {(f, m) for f, m, _ in views} == {(f, m) for f in ("1", "0.1") for m in ("macro_f1", "accuracy", "balanced_accuracy", "auroc")}
    shown = [(f, m) for f, m, attrs in views if " hidden" not in attrs]
    assert shown == [("1", "macro_f1")]  # without JavaScript: macro-F1 with all the training data
    assert '<option value="accuracy">Accuracy</option>' in page and '<option value="0.1">10 %</option>' in page


def test_dataset_page_has_plots_tables_and_all_runs(rows, tmp_path):
    build(rows, tmp_path / "site", methods=CATALOG)
    page = text(tmp_path / "site" / "datasets" / "dermaset.html")
    assert page.count("<svg") == 4  # data-volume and Pareto plots for each protocol version
    assert "the study's Fig. 1" in page and "the study's Fig. 3" in page and "Pareto front" in page
    assert "Per-class F1" in page and "benign-class" in page and "malignant-class" in page
    for key in ("a-s0", "a-s1", "a-s2", "c-s0", "a-v2-s0", "a-s3-div"):
        assert f'href="../{run_href(key)}"' in page
    assert 'data-f-status="diverged"' in page and 'data-f-protocol="2"' in page
    assert 'href="../static/style.css"' in page


def test_method_pages_and_capability_matrix(rows, tmp_path):
    build(rows, tmp_path / "site", methods=CATALOG)
    site = tmp_path / "site"
    page = text(site / "methods" / f"{slug('method-A')}.html")
    assert "The A method." in page and "A et al., 2099" in page and "additive" in page
    assert "✓ supported" in page and "– not supported" in page  # vit, cnn yes; other no
    assert "dermaset" in page and "0.600" in page
    unknown = text(site / "methods" / f"{slug('method-C')}.html")
    assert "not in this medpeft&#39;s method registry" in unknown
    matrix = text(site / "methods.html")
    assert "Everything trains." in matrix and matrix.count('class="yes"') == 2 + 3
    assert (site / "methods" / "full.html").is_file()  # registry methods without runs get a page too


def test_significance_page_names_its_tests(tmp_path):
    rows = [make_row(f"{m}-{d}-{s}", m, v + 0.01 * s - 0.02 * d, seed=s, dataset=f"ds{d}")
            for d in range(4) for s in range(3) for m, v in (("full", 0.8), ("A", 0.82), ("B", 0.6))]  # fmt: skip
    build(rows, tmp_path / "site")
    page = text(tmp_path / "site" / "significance.html")
    assert "Friedman χ²" in page and "Iman–Davenport" in page and "Demšar (2006)" in page and "Table 5(a)" in page
    assert "CD = " in page and 'class="chart cd"' in page
    assert "Wilcoxon signed-rank" in page and "p (Holm)" in page and ">worse<" in page  # B vs full on 12 pairs


def test_a_one_dataset_study_gets_a_diagram_across_its_data_fractions(tmp_path):
    rows = [make_row(f"{m}-{f}-{s}", m, v * f ** 0.1 + 0.01 * s, seed=s, data_fraction=f)
            for f in (1.0, 0.2, 0.05) for s in range(3) for m, v in (("full", 0.8), ("A", 0.82), ("B", 0.6))]  # fmt: skip
    build(rows, tmp_path / "site")
    page = text(tmp_path / "site" / "significance.html")
    assert page.count('class="chart cd"') == 1 and "dermaset across data fractions" in page
    assert "k = 3 methods on N = 3 data fractions of dermaset" in page and "not across datasets" in page
    assert page.count("No critical-difference analysis: it needs at least 3 methods with results on at least 2 common datasets") == 3


def test_run_records_hold_spec_metrics_history_and_provenance(rows, tmp_path):
    build(rows, tmp_path / "site")
    site = tmp_path / "site"
    assert recorded_keys(site) == sorted(r["run_key"] for r in rows)
    rec = record(site, "a-s1")
    assert json.loads(rec["spec_json"]) == {"method": {"name": "method-A", "rank": 8}, "marker": "spec-marker-42"}
    assert json.loads(rec["class_names_json"]) == ["benign-class", "malignant-class"] and json.loads(rec["per_class_f1_json"]) == [0.55, 0.65]
    assert json.loads(rec["metrics_json"])["history"][1] == {"epoch": 2, "train_loss": 0.7123, "val_macro_f1": 0.61}
    row = make_row("a-s1", "method-A", 0.6, seed=1)
    for column in ("trainable_params", "total_params", "git_commit", "torch_version", "device", "container_image", "dataset_checksum",
                   "backbone_checksum", "weights_source", "dataset_source", "finished_at", "python_version", "accelerate_version"):  # fmt: skip
        assert rec[column] == row[column], column
    assert rec["files"] is None  # no runs_dir given
    diverged = record(site, "a-s3-div")
    assert diverged["status"] == "diverged" and diverged["test_macro_f1"] is None  # strict JSON: NaN is null, as in results.json
    page = text(site / "runs" / f"{shard('a-s1')}.html")
    assert 'href="../static/style.css"' in page and 'href="../index.html"' in page and '<script src="../static/run.js" defer>' in page
    assert "method-A · 100 % of the training data · seed 1" in page  # each record's summary line, readable without JavaScript
    assert "2026-01-02" not in page  # no build time: an unchanged shard is the same file in every build


def test_run_directory_gives_confusion_matrix_samples_and_files(tmp_path):
    runs_dir = tmp_path / "runs"
    run = runs_dir / "r1"
    (run / "samples").mkdir(parents=True)
    with open(run / "predictions_test.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "id", "label", "pred", "prob_0", "prob_1"])
        for i, (label, pred) in enumerate([(0, 0), (0, 0), (0, 1), (1, 1), (1, 1), (1, 1), (1, 0)]):
            w.writerow([i, f"img{i}", label, pred, 0.5, 0.5])
    (run / "metrics.json").write_text("{}")
    (run / "adapter_model.safetensors").write_bytes(b"\0" * 2048)
    (run / "samples" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (run / "notes&<x>.txt").write_text("odd name")
    build([make_row("r1"), make_row("r2", seed=1)], tmp_path / "site", runs_dir=runs_dir)
    files = record(tmp_path / "site", "r1")["files"]
    assert files["confusion"] == {"names": ["benign-class", "malignant-class"], "counts": [[2, 1], [1, 3]]}
    listed = {f["path"]: f["published"] for f in files["files"]}
    assert listed == {"adapter_model.safetensors": False, "metrics.json": True, "notes&<x>.txt": False, "predictions_test.csv": True, "samples/0.png": True}
    assert files["samples"] == [{"path": "samples/0.png", "caption": "0.png"}]
    published = sorted(p.relative_to(tmp_path / "site" / "runs" / "r1").as_posix() for p in (tmp_path / "site" / "runs" / "r1").rglob("*") if p.is_file())
    assert published == ["metrics.json", "predictions_test.csv", "samples/0.png"]  # weights and odd names are never copied
    assert record(tmp_path / "site", "r2")["files"] is None


def test_unreadable_predictions_leave_a_note(tmp_path):
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "predictions_test.csv").write_text("index,label\n0,zero\n")
    build([make_row("r1")], tmp_path / "site", runs_dir=tmp_path / "runs")
    files = record(tmp_path / "site", "r1")["files"]
    assert files["confusion"] is None and files["note"].startswith("predictions_test.csv could not be read")


def test_generation_runs_rank_by_fid_and_show_their_samples(tmp_path):
    def t2i(key, method, fid, seed):
        return make_row(key, method, None, seed=seed, task="t2i", dataset="captions-x", backbone="tiny-unet", test_accuracy=None,
                        test_balanced_accuracy=None, test_auroc=None, test_fid=fid, test_kid=fid / 1000,
                        metrics_json=json.dumps({"test": {"fid": fid}, "history": [{"epoch": 1, "train_loss": 0.2}]}))  # fmt: skip

    rows = [t2i(f"g-{m}-{s}", m, fid + s, s) for s in range(3) for m, fid in (("full", 40.0), ("norm", 30.0))]
    runs_dir = tmp_path / "runs"
    (runs_dir / "g-norm-0" / "samples").mkdir(parents=True)
    (runs_dir / "g-norm-0" / "samples" / "00.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (runs_dir / "g-norm-0" / "samples" / "prompts.json").write_text(json.dumps({"seed": 0, "prompts": {"00.png": "a chest x-ray, <b>left</b>"}}))
    build(rows, tmp_path / "site", runs_dir=runs_dir)
    page = text(tmp_path / "site" / "index.html")
    assert '<option value="fid">FID</option>' in page and "FID (lower is better)" in page
    shown = page[page.index('data-view-metric="fid"') :]
    shown = shown[: shown.index("</tbody>")]
    assert shown.index(">norm<") < shown.index(">full<")  # lower FID ranks first
    assert '<td class="num best" data-filtered data-f-dataset="captions-x" data-v="31"' in shown
    rec = record(tmp_path / "site", "g-norm-0")
    assert rec["test_fid"] == 30.0 and rec["test_macro_f1"] is None
    assert rec["files"]["samples"] == [{"path": "samples/00.png", "caption": "a chest x-ray, <b>left</b>"}]
    assert "<b>left</b>" not in text(tmp_path / "site" / "runs" / f"{shard('g-norm-0')}.html")  # escaped in the page


def test_downloads_hold_every_row_with_its_protocol_version(rows, tmp_path):
    build(rows, tmp_path / "site")
    site = tmp_path / "site"
    data = json.loads(text(site / "results.json"))
    assert [r["run_key"] for r in data] == [r["run_key"] for r in rows]
    assert data[-1]["test_macro_f1"] is None  # NaN written as null
    csv_lines = text(site / "results.csv").splitlines()
    assert csv_lines[0].startswith("run_key,protocol_version,status")
    parquet = sql(f"SELECT run_key, protocol_version, seed, started_at FROM '{site / 'results.parquet'}' ORDER BY run_key")
    assert len(parquet) == len(rows) and ("a-v2-s0", 2, 0, "2025-01-01T00:00:00Z") in parquet
    types = {r[0]: r[1] for r in sql(f"DESCRIBE SELECT * FROM '{site / 'results.parquet'}'")}
    assert types["seed"] == "INTEGER" and types["test_macro_f1"] == "DOUBLE" and types["started_at"] == "VARCHAR"
    summary = list(csv.DictReader(open(site / "summary.csv", encoding="utf-8")))
    a = [r for r in summary if r["method"] == "method-A" and r["metric"] == "macro_f1"]
    assert sorted((r["protocol_version"], r["n"], round(float(r["mean"]), 3)) for r in a) == [("1", "3", 0.6), ("2", "1", 0.9)]
    page = text(site / "downloads.html")
    assert all(f'href="{n}"' in page for n in ("results.csv", "results.json", "results.parquet", "summary.csv"))
    assert "protocol_version" in page


def test_base_url_adds_canonical_links_and_a_sitemap_but_links_stay_relative(rows, tmp_path):
    build(rows, tmp_path / "site", base_url="https://example.org/board")
    index = text(tmp_path / "site" / "index.html")
    assert '<link rel="canonical" href="https://example.org/board/index.html">' in index
    assert 'href="datasets/dermaset.html"' in index
    sitemap = text(tmp_path / "site" / "sitemap.xml")
    assert f"<loc>https://example.org/board/runs/{shard('a-s1')}.html</loc>" in sitemap
    assert "<loc>https://example.org/board/datasets/dermaset.html</loc>" in sitemap
    with pytest.raises(UserError, match="not an http"):
        build(rows, tmp_path / "other", base_url="javascript:alert(1)")
    assert not (tmp_path / "other").exists()


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
        metrics_json=json.dumps({"test": {XSS_DATASET: 1}, "history": [{XSS_METHOD: 1, "train_loss": 0.5}]}),
        device=XSS_METHOD,
        git_commit=XSS_DATASET,
        notes=XSS_METHOD,
        tags=XSS_DATASET,
    )
    other = make_row("xss-2", "full", 0.4, seed=1, dataset=XSS_DATASET, backbone=XSS_DATASET, weights=XSS_METHOD)
    catalog = [{"name": XSS_METHOD, "kind": XSS_DATASET, "families": [XSS_METHOD], "cite": XSS_DATASET, "summary": XSS_METHOD, "url": "javascript:alert(1)"}]
    build([evil, other], tmp_path / "site", title=XSS_DATASET, methods=catalog)
    pages = sorted((tmp_path / "site").rglob("*.html"))
    assert len(pages) >= 8
    for page in pages:
        content = text(page).lower()
        assert "<script>" not in content and "<img src=x" not in content and "javascript:" not in content, page
        root = "../" * (len(page.relative_to(tmp_path / "site").parts) - 1)
        ours = [f'<script src="{root}static/site.js" defer>'] + ([f'<script src="{root}static/run.js" defer>'] if page.parent.name == "runs" else [])
        assert re.findall(r"<script[^>]*>", content) == ours  # ours only
    index = text(tmp_path / "site" / "index.html")
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
    build(rows, out)
    assert page_name(bad_key) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["site"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == [f"{shard('good-1')}.html"]
    assert recorded_keys(out) == ["good-1"]
    assert not list(tmp_path.rglob("evil*"))
    page = text(out / "datasets" / "dermaset.html")
    assert re.findall(r'href="\.\./(runs/[^"]+)"', page) == [run_href("good-1")]
    assert '0.600<span class="ci"> ± 0.000</span><span class="n">2</span>' in text(out / "index.html")  # still in the mean


def test_missing_and_nan_values_do_not_break_the_site(tmp_path):
    bare = {name: None for name in COLUMNS}
    bare.update(run_key="bare-1", status="ok")
    junk = make_row("junk-1", metrics_json="{not json", spec_json="[1,", class_names_json="7", test_auroc=float("nan"), seed="abc")
    build([bare, junk, {"run_key": "only-a-key"}, {"run_key": "lost", "status": "diverged"}], tmp_path / "site")
    assert recorded_keys(tmp_path / "site") == ["bare-1", "junk-1", "lost", "only-a-key"]
    junk_record = record(tmp_path / "site", "junk-1")
    assert junk_record["metrics_json"] == "{not json" and junk_record["spec_json"] == "[1," and junk_record["test_auroc"] is None
    assert sql(f"SELECT count(*) FROM '{tmp_path / 'site' / 'results.parquet'}'") == [(4,)]


def test_empty_store_gives_an_empty_board(tmp_path):
    page = text(build([], tmp_path / "site"))
    assert "No runs yet" in page
    assert sql(f"SELECT count(*) FROM '{tmp_path / 'site' / 'results.parquet'}'") == [(0,)]


def test_bad_method_metadata_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="method metadata"):
        build([make_row("k")], tmp_path / "site", methods=[{"kind": "additive"}])


def test_synthetic_demo_site_builds(tmp_path):
    rows = synthetic_rows(backbones=("vit_base_patch16_224",), datasets=("demo-derm", "demo-xray", "demo-ct"), fractions=(0.1, 1.0), diverged_every=17)
    assert all(set(r) == set(COLUMNS) for r in rows)
    build(rows, tmp_path / "site", methods=method_catalog())
    site = tmp_path / "site"
    assert recorded_keys(site) == sorted(r["run_key"] for r in rows)
    assert {p.name for p in (site / "datasets").iterdir()} == {"demo-derm.html", "demo-xray.html", "demo-ct.html"}
    sig = text(site / "significance.html")
    assert sig.count('class="chart cd"') == 2  # one per fraction


# --- writing the folder -------------------------------------------------------------------------


def test_rebuild_replaces_the_old_site(rows, tmp_path):
    out = tmp_path / "site"
    build(rows, out)
    build(rows[:1], out)
    assert recorded_keys(out) == ["a-s0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no temporary folders left


def test_refuses_to_replace_a_folder_that_is_not_a_site(rows, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        build(rows, out)
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_failed_build_keeps_the_previous_site(rows, tmp_path, monkeypatch):
    out = tmp_path / "site"
    build(rows, out)
    before = text(out / "index.html")

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("medpeft_cli.report.export.write_tables", boom)
    with pytest.raises(RuntimeError):
        build(rows[:1], out)
    assert text(out / "index.html") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


# --- from the store, the CLI, and without torch -----------------------------------------------------


def test_build_site_from_db(rows, tmp_path):
    from medpeft_cli.store import append

    db = tmp_path / "results.duckdb"
    for row in rows:
        assert set(row) <= set(COLUMNS)
        assert append(db, row)
    index = build_site_from_db(db, tmp_path / "site", title="From DB")
    page = text(index)
    assert "From DB" in page and "0.600<span class=\"ci\"> ± 0.248" in page and "method-C" in page
    assert str(db) in page
    assert record(tmp_path / "site", "a-s2")["seed"] == 2
    data = json.loads(text(tmp_path / "site" / "results.json"))
    assert len(data) == len(rows)
    assert any(r["test_macro_f1"] is None for r in data)


def test_build_site_from_missing_db_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        build_site_from_db(tmp_path / "nope.duckdb", tmp_path / "site")


def test_report_command(cli, rows, tmp_path):
    from medpeft_cli.store import append

    for row in rows:
        append(tmp_path / "results" / "medpeft.duckdb", row)
    result = cli("report", "--out", "public", "--title", "CLI board", "--base-url", "https://example.org/x/")
    assert result.code == 0, result.stderr
    assert "site: " in result.stdout and "(6 runs)" in result.stdout
    page = text(tmp_path / "public" / "index.html")
    assert "CLI board" in page and 'href="https://example.org/x/index.html"' in page
    assert "baseline" in text(tmp_path / "public" / "methods.html")  # the registry's families reached the site
    bad = cli("report", "--db", "missing.duckdb")
    assert bad.code == 2 and "no results database at missing.duckdb" in bad.stderr and "\n" not in bad.stderr.strip()
    bad = cli("report", "--base-url", "ftp://x")
    assert bad.code == 2 and "not an http(s) URL" in bad.stderr


def test_report_never_imports_torch(tmp_path):
    code = (
        f"import sys, json\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import medpeft_cli.report as r\n"
        "from medpeft_cli.report import boards, catalog, charts, export, fragments, keys, metrics, overview, pages, render\n"
        "from medpeft_cli.report import runfiles, runpage, runs, significance, sitedir, stats, formatting, assets\n"
        "from medpeft_cli.methods import method_catalog\n"
        "import synthetic_results\n"
        "rows = synthetic_results.synthetic_rows(backbones=('resnet50',), datasets=('demo-xray', 'demo-ct'), fractions=(1.0,))\n"
        f"r.build_site(rows, {str(tmp_path / 'site')!r}, methods=method_catalog())  # the whole registry, read without torch\n"
        "bad = [m for m in ('torch', 'timm', 'peft', 'accelerate', 'torchvision', 'diffusers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_run_addresses_are_stable_as_the_site_grows(rows, tmp_path):
    build(rows, tmp_path / "one")
    build(rows + [make_row(f"more-{i}", seed=10 + i) for i in range(50)], tmp_path / "two", generated_at=datetime(2027, 1, 1, tzinfo=timezone.utc))
    for key in ("a-s0", "c-s0", "a-s3-div"):
        assert run_href(key) == f"runs/{shard(key)}.html#{key}" and record(tmp_path / "one", key) == record(tmp_path / "two", key)
    assert len(list((tmp_path / "two" / "runs").glob("*.html"))) <= 256
