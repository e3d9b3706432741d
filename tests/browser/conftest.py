"""Headless Chromium through Playwright, opening built sites from file://.

Skipped (with the reason) when /usr/bin/chromium or the playwright package is absent, so a plain
`pytest` passes on a machine without a browser. `.ci/run` installs both. Screenshots go to
test-artifacts/browser/ (or $MEDPEFT_TEST_ARTIFACTS/browser/).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("MEDPEFT_CHROMIUM", "/usr/bin/chromium"))
# Quiet on a closed network (see ENV.md "Browser tests").
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (install it: apt-get install chromium; or set MEDPEFT_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright; no browser download needed)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    root = Path(os.environ.get("MEDPEFT_TEST_ARTIFACTS", REPO / "test-artifacts")) / "browser"
    root.mkdir(parents=True, exist_ok=True)  # not emptied: xdist workers share it; each test writes its own files
    return root


class Console:
    """Console errors and uncaught page errors of a page, and the dialogs it tried to open."""

    def __init__(self, page):
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))

        def on_dialog(dialog):
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)


@pytest.fixture
def context(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    yield context
    context.close()


@pytest.fixture
def page(context):
    return context.new_page()


@pytest.fixture
def console(page) -> Console:
    return Console(page)
