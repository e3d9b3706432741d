"""The static leaderboard site: rendered pages, downloads, escaping, safe paths, the CLI, no torch.

Aggregation and statistics have their own file (test_report_stats.py); the browser checks are in
tests/browser/.
"""

from __future__ import annotations

import csv
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
from medpeft_cli.report.render import make_env, render_site
from medpeft_cli.report.sitedir import MARKER
from medpeft_cli.report.stats import Stat
from medpeft_cli.report.synthetic import method_catalog, synthetic_rows
from medpeft_cli.store.results import COLUMNS

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
    assert '<a href="runs/c-s0.html">0.800</a><span class="n">1</span>' in page  # one seed: no interval; links to its run
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
        assert f'href="../runs/{key}.html"' in page
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


def test_run_page_shows_spec_metrics_curves_and_provenance(rows, tmp_path):
    build(rows, tmp_path / "site")
    page = text(tmp_path / "site" / "runs" / "a-s1.html")
    for expected in (
        "a-s1",
        "spec-marker-42",  # the pretty-printed spec
        "&#34;rank&#34;: 8",
        "benign-class",
        "malignant-class",
        "0.650",  # per-class F1
        "train_loss",
        "0.7123",  # history
        "Training curves",
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
        'href="../datasets/dermaset.html"',
    ):
        assert expected in page, expected
    assert page.count("<svg") == 2  # loss and validation curves
    assert "was not available when this site was built" in page  # no runs_dir given
    diverged = text(tmp_path / "site" / "runs" / "a-s3-div.html")
    assert "not included in any mean" in diverged


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
    page = text(tmp_path / "site" / "runs" / "r1.html")
    assert "Confusion matrix (test, 7 images)" in page
    cells = re.findall(r'<td class="num shade(\d+)( diag)?" title="[^"]*">(\d+)</td>', page)
    assert [(int(s), bool(d), int(c)) for s, d, c in cells] == [(6, True, 2), (3, False, 1), (2, False, 1), (7, True, 3)]
    assert 'href="r1/metrics.json"' in page and 'src="r1/samples/0.png"' in page
    assert "adapter_model.safetensors" in page and 'href="r1/adapter_model.safetensors"' not in page  # weights listed only
    assert "notes&amp;&lt;x&gt;.txt" in page and "r1/notes&" not in page  # odd names are listed, never linked
    published = sorted(p.relative_to(tmp_path / "site" / "runs" / "r1").as_posix() for p in (tmp_path / "site" / "runs" / "r1").rglob("*") if p.is_file())
    assert published == ["metrics.json", "predictions_test.csv", "samples/0.png"]
    assert "was not available" in text(tmp_path / "site" / "runs" / "r2.html")


def test_unreadable_predictions_leave_a_note(tmp_path):
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "predictions_test.csv").write_text("index,label\n0,zero\n")
    build([make_row("r1")], tmp_path / "site", runs_dir=tmp_path / "runs")
    assert "Not available: predictions_test.csv could not be read" in text(tmp_path / "site" / "runs" / "r1.html")


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
    run = text(tmp_path / "site" / "runs" / "g-norm-0.html")
    assert "Test FID</th><td>30.00" in run and "Test KID</th><td>0.0300" in run and "Test Macro-F1" not in run
    assert 'src="g-norm-0/samples/00.png" alt="a chest x-ray, &lt;b&gt;left&lt;/b&gt;"' in run


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
    assert "<loc>https://example.org/board/runs/a-s1.html</loc>" in sitemap
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
        assert re.findall(r"<script[^>]*>", content) == [f'<script src="{root}static/site.js" defer>']  # ours only
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
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["good-1.html"]
    assert not list(tmp_path.rglob("evil*"))
    page = text(out / "datasets" / "dermaset.html")
    assert re.findall(r'href="\.\./(runs/[^"]+)"', page) == ["runs/good-1.html"]
    assert '0.600<span class="ci"> ± 0.000</span><span class="n">2</span>' in text(out / "index.html")  # still in the mean


def test_missing_and_nan_values_do_not_break_the_site(tmp_path):
    bare = {name: None for name in COLUMNS}
    bare.update(run_key="bare-1", status="ok")
    junk = make_row("junk-1", metrics_json="{not json", spec_json="[1,", class_names_json="7", test_auroc=float("nan"), seed="abc")
    build([bare, junk, {"run_key": "only-a-key"}, {"run_key": "lost", "status": "diverged"}], tmp_path / "site")
    assert (tmp_path / "site" / "runs" / "bare-1.html").is_file() and (tmp_path / "site" / "runs" / "only-a-key.html").is_file()
    assert "{not json" in text(tmp_path / "site" / "runs" / "junk-1.html")
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
    assert len(list((site / "runs").glob("*.html"))) == len(rows)
    assert {p.name for p in (site / "datasets").iterdir()} == {"demo-derm.html", "demo-xray.html", "demo-ct.html"}
    sig = text(site / "significance.html")
    assert sig.count('class="chart cd"') == 2  # one per fraction


# --- writing the folder -------------------------------------------------------------------------


def test_rebuild_replaces_the_old_site(rows, tmp_path):
    out = tmp_path / "site"
    build(rows, out)
    build(rows[:1], out)
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["a-s0.html"]
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

    monkeypatch.setattr("medpeft_cli.report.export.write_csv", boom)
    with pytest.raises(RuntimeError):
        build(rows[:1], out)
    assert text(out / "index.html") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_run_pages_in_worker_processes_match_one_process(tmp_path):
    rows = synthetic_rows(backbones=("resnet50",), datasets=("demo-xray",), fractions=(1.0, 0.5))
    build(rows, tmp_path / "one", workers=1)
    build(rows, tmp_path / "two", workers=2)
    one = sorted((tmp_path / "one" / "runs").iterdir())
    assert [p.name for p in one] == [p.name for p in sorted((tmp_path / "two" / "runs").iterdir())]
    assert all(text(p) == text(tmp_path / "two" / "runs" / p.name) for p in one)


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
    assert (tmp_path / "site" / "runs" / "a-s2.html").is_file()
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
        "import sys, json\n"
        "import medpeft_cli.report as r\n"
        "from medpeft_cli.report import boards, catalog, charts, export, fragments, keys, metrics, overview, pages, render\n"
        "from medpeft_cli.report import runfiles, runpage, runs, significance, sitedir, stats, synthetic, formatting, assets\n"
        "rows = synthetic.synthetic_rows(backbones=('resnet50',), datasets=('demo-xray', 'demo-ct'), fractions=(1.0,))\n"
        f"r.build_site(rows, {str(tmp_path / 'site')!r}, methods=synthetic.method_catalog())\n"
        "bad = [m for m in ('torch', 'timm', 'peft', 'accelerate', 'torchvision', 'diffusers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_rebuild_reuses_unchanged_run_pages(rows, tmp_path):
    out = tmp_path / "site"
    timings: dict = {}
    render_site(rows, out, title="T", timings=timings, generated_at=WHEN)
    assert timings["run pages reused"] == 0
    before = {p.name: p.stat().st_ino for p in (out / "runs").glob("*.html")}
    page = text(out / "runs" / "a-s1.html")
    assert "2026-01-02" not in page  # no build time on run pages

    changed = [dict(r, status="failed") if r["run_key"] == "c-s0" else r for r in rows] + [make_row("new-1", seed=9)]
    render_site(changed, out, title="T", timings=timings)
    assert timings["run pages reused"] == len(rows) - 1
    after = {p.name: p.stat().st_ino for p in (out / "runs").glob("*.html")}
    assert after["a-s1.html"] == before["a-s1.html"]  # the same file, hard-linked
    assert after["c-s0.html"] != before["c-s0.html"] and "not included in any mean" in text(out / "runs" / "c-s0.html")
    assert text(out / "runs" / "a-s1.html") == page

    render_site(changed, out, title="Another title", timings=timings, runs_dir=tmp_path / "runs")
    assert timings["run pages reused"] == 0  # site options are part of every run page
    (tmp_path / "runs" / "a-s1").mkdir(parents=True)
    (tmp_path / "runs" / "a-s1" / "train.log").write_text("epoch 1")
    render_site(changed, out, title="Another title", timings=timings, runs_dir=tmp_path / "runs")
    assert timings["run pages reused"] == len(changed) - 1  # a run directory appeared for a-s1 only
    assert 'href="a-s1/train.log"' in text(out / "runs" / "a-s1.html")
    render_site(changed, out, title="Another title", timings=timings, runs_dir=tmp_path / "runs")
    assert timings["run pages reused"] == len(changed)
    assert text(out / "runs" / "a-s1" / "train.log") == "epoch 1"  # its published files come along
