"""The built site in a real browser (headless Chromium, file://): the overview's values, sorting,
filters, metric and fraction switches, links down to a run page, no console errors, screenshots."""

from __future__ import annotations

import csv
import json

import pytest

from medpeft_cli.report import build_site
from medpeft_cli.report.runpage import run_href, shard
from medpeft_cli.report.stats import summarize
from synthetic_results import method_catalog, synthetic_rows

DATASETS = ("demo-derm", "demo-xray", "demo-ct")
BACKBONE = "vit_base_patch16_224"


@pytest.fixture(scope="module")
def site(browser, tmp_path_factory):  # browser first: no site is built where the tests skip
    """A demo site: 11 methods x 3 datasets x 2 fractions x 3 seeds, a few diverged runs, one run directory."""
    rows = synthetic_rows(backbones=(BACKBONE,), datasets=DATASETS, fractions=(0.1, 1.0), diverged_every=41)
    root = tmp_path_factory.mktemp("browser-site")
    key = rows[0]["run_key"]
    run_dir = root / "runs" / key
    run_dir.mkdir(parents=True)
    with open(run_dir / "predictions_test.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "id", "label", "pred"])
        for i in range(40):
            w.writerow([i, f"img{i}", i % 7, i % 7 if i % 5 else (i + 1) % 7])
    (run_dir / "metrics.json").write_text(json.dumps({"note": "from the run directory"}))
    # a diverged run stores NaN losses, which Python's json writes as a bare NaN (not JSON)
    diverged = next(r for r in rows if r["status"] == "diverged")
    diverged["metrics_json"] = json.dumps({"history": [{"epoch": 1, "train_loss": 0.9}, {"epoch": 2, "train_loss": float("nan")}]})
    build_site(rows, root / "site", title="Browser test board", methods=method_catalog(), runs_dir=root / "runs")
    return {"root": root / "site", "rows": rows, "key": key, "diverged": diverged["run_key"]}


def url(site, rel: str = "index.html") -> str:
    path, _, fragment = rel.partition("#")
    return (site["root"] / path).as_uri() + (f"#{fragment}" if fragment else "")


def expected_cell(rows, method, dataset, fraction=1.0, metric="test_macro_f1") -> str:
    values = [r[metric] for r in rows if r["status"] == "ok" and r["method"] == method and r["dataset"] == dataset and r["data_fraction"] == fraction]
    stat = summarize(values)
    text = f"{stat.mean:.3f}" + (f" ± {stat.half_width:.3f}" if stat.half_width is not None else "")
    return f"{text}{stat.n}"


def visible_rows(page, board="#b1-table"):
    """(method, cell texts) of the rows the user sees in the board's visible view."""
    return page.eval_on_selector(
        board,
        """t => Array.from(t.tBodies).filter(b => !b.hidden).flatMap(b => Array.from(b.rows))
              .filter(r => !r.hidden && !r.classList.contains('view-caption'))
              .map(r => [r.cells[0].textContent.replace('†', '').trim(), Array.from(r.cells).map(c => c.textContent.trim())])""",
    )


def column(page, header_text, board="#b1-table"):
    index = page.eval_on_selector(board, "(t, h) => Array.from(t.tHead.rows[0].cells).findIndex(c => c.textContent.trim().startsWith(h))", header_text)
    assert index >= 0, header_text
    return index


def test_overview_values_sorting_filters_and_switches(site, page, console, artifacts):
    page.goto(url(site))
    assert page.title() == "Browser test board"
    page.screenshot(path=str(artifacts / "overview.png"), full_page=True)

    # the default view: macro-F1 with all the training data, mean ± 95 % CI and n per cell
    rows = dict(visible_rows(page))
    assert len(rows) == 11
    derm = column(page, "demo-derm")
    for method in ("full", "lora", "linear"):
        assert rows[method][derm] == expected_cell(site["rows"], method, "demo-derm")
    ranks = [float(cells[column(page, "Avg rank")]) for _, cells in visible_rows(page)]
    assert ranks == sorted(ranks)  # server order: by average rank

    # click a dataset header: sorted by that column, best first; again: reversed
    page.click("#b1-table thead th:has-text('demo-ct') button.sort")
    ct = column(page, "demo-ct")
    first = [float(cells[ct].split(" ")[0]) for _, cells in visible_rows(page)]
    assert first == sorted(first, reverse=True) and first != [float(rows[m][ct].split(" ")[0]) for m in rows]
    assert page.get_attribute("#b1-table thead th:has-text('demo-ct')", "aria-sort") == "descending"
    page.click("#b1-table thead th:has-text('demo-ct') button.sort")
    assert [float(c[ct].split(" ")[0]) for _, c in visible_rows(page)] == sorted(first)
    page.click("#b1-table thead th:has-text('Method') button.sort")
    assert [m for m, _ in visible_rows(page)] == sorted(rows)
    assert page.eval_on_selector("#b1-table tbody:not([hidden]) tr", "r => r.classList.contains('view-caption')")  # caption stays first

    # filter by method family: only the baselines remain, and the status line says so
    page.select_option("select[data-filter=family]", "baseline")
    assert sorted(m for m, _ in visible_rows(page)) == ["full", "linear"]
    assert page.text_content("output.filter-status") == "2 of 11 rows shown"
    page.screenshot(path=str(artifacts / "overview-filtered.png"), full_page=True)

    # filter a dataset away: its column disappears
    page.select_option("select[data-filter=dataset]", "demo-xray")
    assert page.is_hidden("#b1-table thead th:has-text('demo-derm')") and page.is_visible("#b1-table thead th:has-text('demo-xray')")

    # metric and fraction switches show another view of the same table
    page.select_option("select[data-filter=metric]", "accuracy")
    page.select_option("select[data-filter=fraction]", "0.1")
    xray = column(page, "demo-xray")
    shown = dict(visible_rows(page))
    assert shown["full"][xray] == expected_cell(site["rows"], "full", "demo-xray", 0.1, "test_accuracy")
    caption = page.eval_on_selector("#b1-table", "t => Array.from(t.tBodies).find(b => !b.hidden).rows[0].textContent")
    assert "Accuracy" in caption and "10 %" in caption

    page.click("form.filters button[type=reset]")
    # a matcher, not a string predicate: the site's CSP (no 'unsafe-eval') stays on in this test
    from playwright.sync_api import expect  # here: the module imports where playwright is absent (the tests skip)

    expect(page.locator("output.filter-status")).to_have_text("11 of 11 rows shown")
    assert dict(visible_rows(page))["full"][derm] == expected_cell(site["rows"], "full", "demo-derm")
    assert console.errors == [] and console.dialogs == []


def test_links_lead_down_to_a_run_page(site, page, console, artifacts):
    page.goto(url(site))
    page.click("#b1-table thead a:has-text('demo-derm')")
    assert page.url.endswith("/datasets/demo-derm.html")
    assert page.locator("svg.chart").count() == 2  # data-volume and Pareto plots
    page.screenshot(path=str(artifacts / "dataset.png"))
    # the table of all runs filters by status
    page.select_option("select[data-filter=status]", "diverged")
    diverged = page.eval_on_selector_all("table.runs tbody tr", "rs => rs.filter(r => !r.hidden).length")
    assert diverged == sum(1 for r in site["rows"] if r["dataset"] == "demo-derm" and r["status"] == "diverged") > 0
    page.click("form.filters button[type=reset]")
    key = site["key"]
    page.click(f"table.runs a[title='{key}']")
    assert page.url.endswith(f"/runs/{shard(key)}.html#{key}")
    assert key in page.text_content("h1")
    assert page.is_hidden(".run-records")  # the stored records make way for the drawn run page
    for section in ("Setup", "Results", "Parameters", "Provenance", "Training curves", "Training history", "Per-class F1 (test)", "Run spec", "Files"):
        assert page.locator(f"#run-view h2:has-text('{section}')").count() == 1, section
    assert page.locator("table.confusion tbody tr").count() == 7
    assert page.locator("#run-view svg.chart").count() == 2  # loss and validation curves
    row = next(r for r in site["rows"] if r["run_key"] == key)
    fields = dict(page.eval_on_selector_all("#run-view table.fields tr", "rs => rs.map(r => [r.cells[0].textContent, r.cells[1].textContent])"))
    assert fields["Test Macro-F1"] == f"{row['test_macro_f1']:.3f}" and fields["Weights source"] == row["weights_source"]
    assert fields["Trainable parameters"].startswith(f"{row['trainable_params']:,} (")
    assert fields["Training data"] == f"{row['data_fraction'] * 100:g} %" and fields["Run key"] == key
    page.screenshot(path=str(artifacts / "run.png"), full_page=True)
    page.click("a:has-text('metrics.json')")
    assert "from the run directory" in page.text_content("body")
    for rel in ("methods.html", "methods/lora.html", "significance.html", "downloads.html"):
        page.goto(url(site, rel))
    page.screenshot(path=str(artifacts / "downloads.png"))
    assert console.errors == [] and console.dialogs == []


def test_a_diverged_run_page_shows_its_status_and_nan_losses(site, page, console):
    page.goto(url(site, run_href(site["diverged"])))
    assert "not included in any mean" in page.text_content("#run-view .notice")
    history = page.eval_on_selector_all("#run-view table.data tr", "rs => rs.map(r => r.textContent)")
    assert any("NaN" in row for row in history)
    assert page.locator("#run-view svg.chart").count() == 1  # the loss curve, drawn from its finite points
    assert console.errors == []


def test_significance_page(site, page, console, artifacts):
    page.goto(url(site, "significance.html"))
    assert page.locator("svg.chart.cd").count() == 2  # one per fraction
    assert "Friedman" in page.text_content("body")
    page.select_option("select[data-filter=fraction]", "1")
    assert page.eval_on_selector_all("section.board", "s => s.filter(x => !x.hidden).length") == 1
    page.screenshot(path=str(artifacts / "significance.png"), full_page=True)
    assert console.errors == []


def test_pages_read_without_javascript(site, browser):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(url(site))
    assert page.is_hidden("form.filters")
    shown = page.eval_on_selector_all("#b1-table tbody", "bs => bs.filter(b => !b.hidden).map(b => b.dataset.viewMetric + '@' + b.dataset.viewFraction)")
    assert shown == ["macro_f1@1"]
    assert page.locator("#b1-table tbody:not([hidden]) tr").count() == 12  # caption + 11 methods
    key = site["key"]
    page.goto(url(site, run_href(key)))  # a run's link shows its stored record alone
    shown = page.eval_on_selector_all("section.run-record", "ss => ss.filter(s => s.offsetParent !== null).map(s => s.id)")
    assert shown == [key]
    assert f'"run_key": "{key}"' in page.text_content(f"section.run-record[id='{key}'] pre")
    context.close()


def test_filtering_is_fast(site, page):
    page.goto(url(site, "datasets/demo-derm.html"))
    ms = page.evaluate(
        """() => { const s = document.querySelector('select[data-filter=family]'); s.value = 'additive';
                   const t = performance.now(); s.dispatchEvent(new Event('change', {bubbles: true}));
                   document.body.getBoundingClientRect(); return performance.now() - t; }"""
    )
    assert ms < 500, f"filtering took {ms:.0f} ms"
