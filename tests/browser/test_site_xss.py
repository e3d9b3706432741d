"""No user-controlled string executes: payloads in every kind of stored field, opened in Chromium.

The context bypasses the pages' Content-Security-Policy, so what is tested is the escaping itself
(the CSP is a second line of defence on top of it).
"""

from __future__ import annotations

import json

import pytest

from medpeft_cli.report import build_site
from medpeft_cli.report.keys import slug
from medpeft_cli.report.runpage import run_href, shard

PAYLOADS = [
    "<script>window.__xss=1</script>",
    '"><img src=x onerror="window.__xss=2">',
    "'><svg onload=window.__xss=3>",
    "</title></svg><script>window.__xss=4</script>",
    "javascript:window.__xss=5",
]
DATASET, METHOD, BACKBONE, NOTE, LINK = PAYLOADS


def evil_rows():
    rows = []
    for seed in range(3):
        for method, f1 in ((METHOD, 0.7), ("full", 0.6), (NOTE, 0.5)):
            rows.append({
                "run_key": f"xss-{seed}-{len(rows)}", "protocol_version": 1, "status": "ok", "task": PAYLOADS[4],
                "dataset": DATASET, "backbone": BACKBONE, "weights": PAYLOADS[1], "method": method,
                "data_fraction": 1.0, "seed": seed, "test_macro_f1": f1 + 0.01 * seed, "test_accuracy": 0.8,
                "val_macro_f1": 0.6, "trainable_params": 1000, "total_params": 10_000, "best_epoch": 1,
                "class_names_json": json.dumps(PAYLOADS[:2]), "per_class_f1_json": json.dumps([0.5, 0.6]),
                "spec_json": json.dumps({"path": PAYLOADS[3], "method": {"name": method, "note": NOTE}}),
                "metrics_json": json.dumps({"test": {PAYLOADS[0]: 1}, "history": [{"epoch": 1, PAYLOADS[2]: 0.3, "val_macro_f1": 0.5}]}),
                "device": PAYLOADS[2], "git_commit": PAYLOADS[3], "container_image": LINK, "weights_source": LINK,
                "notes": NOTE, "tags": PAYLOADS[1], "dataset_source": PAYLOADS[0],
            })  # fmt: skip
    rows.append({**rows[0], "run_key": PAYLOADS[1], "status": PAYLOADS[0]})  # an unsafe key and status
    return rows


@pytest.fixture(scope="module")
def evil_site(browser, tmp_path_factory):  # browser first: no site is built where the tests skip
    root = tmp_path_factory.mktemp("xss-site")
    run = root / "runs" / "xss-0-0"
    (run / "samples").mkdir(parents=True)
    (run / 'x"><img src=x onerror="window.__xss=6">.txt').write_text("payload in a file name")
    (run / "samples" / "ok.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (run / "predictions_test.csv").write_text("index,id,label,pred\n0,<script>window.__xss=7</script>,0,1\n1,b,1,1\n")
    catalog = [{"name": METHOD, "task": PAYLOADS[4], "kind": PAYLOADS[0], "families": [PAYLOADS[2]], "cite": PAYLOADS[3],
                "summary": NOTE, "url": LINK, "default_lr": PAYLOADS[1], "knob": PAYLOADS[0]}]  # fmt: skip
    build_site(evil_rows(), root / "site", title=PAYLOADS[3], methods=catalog, runs_dir=root / "runs")
    return root / "site"


@pytest.mark.slow
def test_no_payload_executes_in_the_browser(evil_site, browser, artifacts):
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    dialogs, errors = [], []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: errors.append(str(e)))
    pages = sorted(p.relative_to(evil_site).as_posix() for p in evil_site.rglob("*.html"))
    expected = {"index.html", f"datasets/{slug(DATASET)}.html", f"methods/{slug(METHOD)}.html", f"runs/{shard('xss-0-0')}.html"}
    assert expected | {"significance.html", "methods.html", "downloads.html"} <= set(pages)
    runs = [run_href(r["run_key"]) for r in evil_rows() if run_href(r["run_key"])]  # each run drawn by static/run.js
    for rel in pages + runs:
        path, _, fragment = rel.partition("#")
        page.goto((evil_site / path).as_uri() + (f"#{fragment}" if fragment else ""))
        page.wait_for_load_state("load")
        # exercise every filter value and every sort button, as a visitor would
        for select in page.query_selector_all("form.filters select"):
            values = select.eval_on_selector_all("option", "os => os.map(o => o.value)")
            for value in values[1:3] + values[:1]:
                select.select_option(value)
        for button in page.query_selector_all("button.sort")[:4]:
            button.click()
        assert page.evaluate("window.__xss") is None, rel
        if rel == "index.html":
            page.screenshot(path=str(artifacts / "xss-index.png"), full_page=True)
    assert dialogs == [] and errors == []
    # the payloads are shown as text, not swallowed
    page.goto((evil_site / "index.html").as_uri())
    body = page.text_content("body")
    assert DATASET in body and METHOD in body and BACKBONE in body
    page.goto((evil_site / f"runs/{shard('xss-0-0')}.html").as_uri() + "#xss-0-0")
    body = page.text_content("#run-view")
    assert NOTE in body and 'x"><img src=x onerror="window.__xss=6">.txt' in body and PAYLOADS[0] in body
    assert page.locator("a[href^='javascript']").count() == 0
    context.close()
