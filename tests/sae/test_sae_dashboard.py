"""The SAE dashboard opens from disk in headless Chromium: every page renders, every image
loads, links between pages work, with no server and no JavaScript needed by the page."""

from __future__ import annotations

import json

import pytest
from sae_feature_helpers import random_sae

from gridlens.analysis.core import quiz_set
from gridlens.models.checkpoints import load
from gridlens.sae.dashboard import latent_page, write_dashboard


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    model = load("default")
    sae = random_sae(model, d_sae=16, seed=2)
    quizzes = quiz_set(("frame", "contact"), 2, seed=4)
    out = tmp_path_factory.mktemp("dash") / "sae_dashboard"
    index = write_dashboard(model, sae, quizzes, out, latents=[1, 5], n_examples=2)
    return out, index


def test_folder_is_self_contained(dashboard):
    out, index = dashboard
    assert index == out / "index.html"
    names = {p.name for p in out.iterdir()}
    assert {"index.html", "expression.png", latent_page(1), latent_page(5)} <= names
    assert json.loads((out / "dashboard.json").read_text())["latents"] == [1, 5]
    for page in out.glob("*.html"):
        text = page.read_text()
        assert "<script" not in text
        assert "http://" not in text and "https://" not in text and 'src="/' not in text
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left


def _images_loaded(driver) -> list[bool]:
    from selenium.webdriver.common.by import By

    images = driver.find_elements(By.TAG_NAME, "img")
    return [int(img.get_property("naturalWidth") or 0) > 0 for img in images]


def test_pages_render_in_chromium(browser_without_javascript, dashboard):
    browser = browser_without_javascript
    from selenium.webdriver.common.by import By

    _, index = dashboard
    browser.get(index.resolve().as_uri())
    assert "SAE blocks.3.hook_mlp_out" in browser.title
    assert "Latents" in browser.find_element(By.TAG_NAME, "body").text
    loaded = _images_loaded(browser)
    assert loaded and all(loaded)
    link = browser.find_element(By.LINK_TEXT, "5")
    link.click()
    assert browser.current_url.endswith(latent_page(5))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Latent 5"
    body = browser.find_element(By.TAG_NAME, "body").text
    for heading in ("Automatic label", "Top examples", "Promoted logits", "Per task"):
        assert heading in body
    loaded = _images_loaded(browser)
    assert len(loaded) == 2 and all(loaded)
    browser.find_element(By.PARTIAL_LINK_TEXT, "index").click()
    assert browser.current_url.endswith("index.html")
