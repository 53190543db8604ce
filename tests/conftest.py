"""Shared test fixtures: the reference data under ../shared/reference, and headless Chromium
(Debian's chromium + chromium-driver, no download) for the HTML pages."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SHARED_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not SHARED_REFERENCE.is_dir():
        pytest.fail(f"reference data not found at {SHARED_REFERENCE} (shared/ beside the checkout)")
    return SHARED_REFERENCE


CHROMEDRIVER = Path("/usr/bin/chromedriver")


def _start_chromium(javascript: bool, window: str = "1280,1600"):
    """A headless Chromium WebDriver; skips the test when the browser or selenium is missing,
    unless GRIDLENS_REQUIRE_BROWSER is set (as `make test` does), which makes it a failure."""
    binary = next(
        (found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))),
        None,
    )
    missing = None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing = "selenium is not installed (pip install -e '.[dev]')"
    if missing is None and (binary is None or not CHROMEDRIVER.exists()):
        missing = (
            f"no chromium ({binary}) or {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
        )
    if missing:
        if os.environ.get("GRIDLENS_REQUIRE_BROWSER"):
            pytest.fail(f"GRIDLENS_REQUIRE_BROWSER is set but {missing}")
        pytest.skip(f"browser test skipped: {missing}")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={window}")
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for the report's pages."""
    driver = _start_chromium(javascript=True)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def browser_without_javascript():
    """Headless Chromium with JavaScript off: pages that must work as plain HTML."""
    driver = _start_chromium(javascript=False)
    yield driver
    driver.quit()
