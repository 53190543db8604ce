"""The graph page opens from disk in headless Chromium: nodes and edges drawn as SVG, the
label on hover (an SVG title) and the details panel on click; and `gridlens graph build`
writes it with its JSON from transcoders saved by `gridlens sae transcoder`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from graph_helpers import one_quiz, random_transcoders, tiny_model

from gridlens.analysis.core import quiz_set
from gridlens.graphs.attribution import attribute, prune
from gridlens.graphs.commands import changed_cell
from gridlens.graphs.html import write_graph_page
from gridlens.graphs.labels import label_graph
from gridlens.graphs.replacement import build_replacement


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    model = tiny_model(seed=1)
    tcs = random_transcoders(seed=3)
    tokens = one_quiz(seed=5)
    rm = build_replacement(model, tcs, tokens)
    graph = attribute(rm, changed_cell(tokens), max_features=20)
    details = label_graph(model, tcs, graph, quiz_set(("contact", "frame"), 2, seed=1))
    nodes, edges = prune(graph, 0.9, 0.95)
    path = tmp_path_factory.mktemp("graph") / "graph.html"
    write_graph_page(graph, nodes, edges, path, details, title="test graph")
    return graph, nodes, edges, path, details


def test_labels_come_from_the_world(page):
    graph, _, _, _, details = page
    assert len(graph.labels) == graph.n_features and all(graph.labels)
    fired = [d for d in details.values() if d["best"]]
    assert fired and all(0 <= d["best"][0]["f1"] <= 1 for d in fired)
    assert all(len(e["grid"]) == 100 for d in fired for e in d["examples"])


def test_page_is_self_contained(page):
    text = page[3].read_text()
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text and 'src="' not in text


def test_page_renders_and_shows_details_in_chromium(browser, page):
    from selenium.webdriver.common.by import By

    graph, nodes, edges, path, _ = page
    browser.get(path.as_uri())
    drawn = browser.find_elements(By.CSS_SELECTOR, ".node")
    kept_edges = edges & (graph.adjacency != 0)
    with_edges = nodes & (kept_edges.any(0) | kept_edges.any(1))
    assert len(drawn) == int(with_edges.sum()) and with_edges[graph.target_index]
    assert len(browser.find_elements(By.TAG_NAME, "line")) == int(
        (edges & (graph.adjacency != 0)).sum()
    )
    kept = [i for i in np.flatnonzero(nodes[: graph.n_features])]
    assert kept, "the pruned graph keeps some features"
    node = browser.find_element(By.CSS_SELECTOR, f'[data-node="{kept[0]}"]')
    title = node.find_element(By.TAG_NAME, "title").get_attribute("textContent")
    assert graph.labels[kept[0]] in title
    browser.execute_script("arguments[0].dispatchEvent(new MouseEvent('click'))", node)
    panel = browser.find_element(By.ID, "panel")
    assert panel.get_attribute("data-node") == str(kept[0])
    assert graph.labels[kept[0]] in panel.text and "strongest inputs" in panel.text


def test_cli_trains_transcoders_and_builds_a_graph(tmp_path, capsys):
    from cli_runner import run

    model = tiny_model(seed=1)
    model.save(str(tmp_path / "model"))
    code, out, err = run(capsys, "sae", "transcoder", "--model", str(tmp_path / "model"),
                         "--d-sae", "32", "--k", "4", "--tokens", "2048", "--batch-size", "512",
                         "-n", "1", "--out", str(tmp_path / "tc"), "--no-progress")  # fmt: skip
    assert code == 0, err
    assert "loss recovered" in out
    metrics = json.loads((tmp_path / "tc" / "metrics.json").read_text())
    assert set(metrics["layers"]) == {"0", "1"} and "loss_recovered" in metrics
    model_dir, tc_dir = str(tmp_path / "model"), str(tmp_path / "tc")
    code, out, err = run(capsys, "graph", "build", "--model", model_dir, "--transcoders", tc_dir,
                         "--max-features", "16", "-n", "1", "--interventions", "4",
                         "--out", str(tmp_path / "g"), "--no-progress")  # fmt: skip
    assert code == 0, err
    saved = json.loads((tmp_path / "g" / "graph.json").read_text())
    assert saved["format"] == "gridlens.attribution_graph" and saved["decomposition_error"] < 1e-8
    assert 0 <= saved["scores"]["completeness"] <= 1
    assert (tmp_path / "g" / "graph.html").is_file()
    code, _, err = run(capsys, "graph", "build", "--model", model_dir, "--transcoders", tc_dir,
                       "--out", str(tmp_path / "g"))  # fmt: skip
    assert code == 2 and "not empty" in err
