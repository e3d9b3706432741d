"""Build time of the leaderboard site for a large store, and how responsive its pages stay in a browser.

    .venv/bin/python benchmarks/site_build.py                  # 10,000 synthetic rows
    .venv/bin/python benchmarks/site_build.py --rows 2000 --browser

Then, as `medpeft train` does after each run, the site is rebuilt with one more row. Rows come from `tests/synthetic_results.py` (7 backbones x 6 datasets x up to 11 methods x 8
fractions x 4 seeds, cut at --rows; 1 % diverged). Import time is reported apart from the build: it
is paid once per process. With --browser (needs /usr/bin/chromium and playwright) the overview and
the largest dataset page are opened from file:// and the time of a filter change, a metric switch
and a column sort is measured in the page (performance.now() around the event, forced layout); and
one run page is opened and drawn from the largest run shard.
Report the machine and its load (`uptime`) with the numbers: on a shared 2-core machine they swing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

BACKBONES = (
    "vit_base_patch16_224", "vit_small_patch16_224", "vit_tiny_patch16_224", "vit_large_patch16_224",
    "resnet50", "resnet18", "convnext_tiny",
)  # fmt: skip
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

MEASURE = """([selector, value]) => {
  const s = document.querySelector(selector);
  const t = performance.now();
  s.value = value;
  s.dispatchEvent(new Event('change', {bubbles: true}));
  document.body.getBoundingClientRect();
  return performance.now() - t;
}"""
SORT = """(selector) => {
  const b = document.querySelector(selector);
  const t = performance.now();
  b.click();
  document.body.getBoundingClientRect();
  return performance.now() - t;
}"""


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the run-page workers):
    what a build costs on an idle machine, whatever the load of a shared one."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def browser_timings(site: Path) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    dataset_page = max((site / "datasets").glob("*.html"), key=lambda p: p.stat().st_size)
    out: dict[str, float] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        for name, path in (("overview", site / "index.html"), ("dataset page", dataset_page)):
            start = time.perf_counter()
            page.goto(path.as_uri(), wait_until="load")
            out[f"{name}: open (ms)"] = (time.perf_counter() - start) * 1000
            out[f"{name}: size (MB)"] = path.stat().st_size / 1e6
            family = [page.evaluate(MEASURE, ["select[data-filter=family]", v]) for v in ("additive", "baseline", "")]
            out[f"{name}: filter by family (ms, mean of 3)"] = sum(family) / 3
            out[f"{name}: sort a column (ms)"] = page.evaluate(SORT, "table.sortable thead th[data-sort=num] button.sort")
            if name == "overview":
                out["overview: switch metric (ms)"] = page.evaluate(MEASURE, ["select[data-filter=metric]", "accuracy"])
                out["overview: switch fraction (ms)"] = page.evaluate(MEASURE, ["select[data-filter=fraction]", "0.1"])
        # a run page: the largest shard, drawn by static/run.js from the record of its first run
        shard_page = max((site / "runs").glob("*.html"), key=lambda p: p.stat().st_size)
        key = shard_page.read_text(encoding="utf-8").split('class="run-record" id="', 1)[1].split('"', 1)[0]
        start = time.perf_counter()
        page.goto(shard_page.as_uri() + "#" + key, wait_until="load")
        page.wait_for_selector("#run-view h1")
        out["run page: open and draw (ms)"] = (time.perf_counter() - start) * 1000
        out["run page: shard size (MB)"] = shard_page.stat().st_size / 1e6
        browser.close()
        if errors:
            raise SystemExit(f"page errors: {errors}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=None, help="keep the site here (default: a temporary folder)")
    parser.add_argument("--browser", action="store_true", help="also measure the pages in headless Chromium")
    args = parser.parse_args()

    start = time.perf_counter()
    import duckdb  # noqa: F401
    import jinja2  # noqa: F401
    import scipy.stats  # noqa: F401

    from medpeft_cli.report import render

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the synthetic rows are test fixtures
    from synthetic_results import method_catalog, synthetic_rows

    imports = time.perf_counter() - start
    rows = synthetic_rows(backbones=BACKBONES, seeds=(0, 1, 2, 3), limit=args.rows, diverged_every=97)
    tmp = Path(tempfile.mkdtemp(prefix="medpeft-site-bench-"))
    out = args.out or tmp / "site"
    if args.out is not None and args.out.exists():
        shutil.rmtree(args.out)  # a fresh folder: replacing an old site would add its deletion to the time
    timings: dict[str, float] = {}
    cpu = cpu_seconds()
    render.render_site(rows, out, title="medpeft benchmark", methods=method_catalog(), timings=timings)
    cpu_build = cpu_seconds() - cpu
    # what `medpeft train` does after each run: rebuild the site with one more row
    extra = dict(rows[0], run_key="bench-extra-run", seed=99)
    again: dict[str, float] = {}
    cpu = cpu_seconds()
    render.render_site([*rows, extra], out, title="medpeft benchmark", methods=method_catalog(), timings=again)
    cpu_rebuild = cpu_seconds() - cpu
    files = sum(1 for _ in out.rglob("*") if _.is_file())
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    report = {
        "rows": len(rows),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load average (1 min)": os.getloadavg()[0],
        "imports (s)": round(imports, 2),
        **{f"{k} (s)": round(v, 2) for k, v in timings.items()},
        "build CPU time, all processes (s)": round(cpu_build, 2),
        "rebuild with one more run (s)": round(again["total"], 2),
        "rebuild CPU time (s)": round(cpu_rebuild, 2),
        "files": files,
        "site size (MB)": round(size / 1e6, 1),
    }
    if args.browser:
        report.update({k: round(v, 1) for k, v in browser_timings(out).items()})
    print(json.dumps(report, indent=1))
    if args.out is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
