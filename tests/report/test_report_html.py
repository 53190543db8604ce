"""The report: the HTML builder's guarantees, a tiny report built end to end (every figure on
disk and referenced relatively, every number in report.json), and the page opened from disk in
a real headless Chromium (no broken image, the sections there, a non-blank screenshot)."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import by_hand
import numpy as np
import pytest
import torch
from PIL import Image

from gridlens.errors import ConfigError, GridlensError
from gridlens.report import build_report
from gridlens.report.build import STAGES, ReportError
from gridlens.report.html import Figure, Page, Section, Table

TASKS = "frame,contact"


# ------------------------------------------------------------------------- the HTML builder


def _png(path: Path, colour=(200, 30, 30)) -> None:
    Image.new("RGB", (40, 30), colour).save(path)


def test_page_escapes_text_and_links_sections(tmp_path):
    _png(tmp_path / "a.png")
    page = Page(
        "t <&> report",
        meta=[("model", "x<y")],
        sections=[
            Section("Ablation & more", howto="a < b", findings=["L0 > L1 by 3x"]).add(
                Figure("a.png", "cap"), Table(["k", "v"], [["<b>", 1]])
            ),
            Section("Ablation & more"),  # a second section of the same title: its own anchor
        ],
    )
    path = page.write(tmp_path)
    text = path.read_text()
    assert "<title>t &lt;&amp;&gt; report</title>" in text
    assert "x&lt;y" in text and "&lt;b&gt;" in text and "<b>" not in text
    assert "L0 &gt; L1 by 3x" in text
    ids = re.findall(r'<section id="([^"]+)"', text)
    links = re.findall(r'<a href="#([^"]+)"', text)
    assert ids == links == ["ablation-more", "ablation-more-2"]
    assert re.findall(r'<img src="([^"]+)"', text) == ["a.png"]
    assert "<script" not in text


@pytest.mark.parametrize("src", ["/tmp/a.png", "../a.png", "C:/a.png", "http://x/a.png"])
def test_figures_must_be_relative_inside_the_folder(src):
    with pytest.raises(ConfigError, match="relative path"):
        Figure(src)


def test_a_missing_figure_or_ragged_table_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"figures missing.*gone\.png"):
        Page("x", sections=[Section("s").add(Figure("gone.png"))]).write(tmp_path)
    assert not (tmp_path / "index.html").exists()
    with pytest.raises(ConfigError, match="2 cells"):
        Table(["a", "b", "c"], [[1, 2]])


# ------------------------------------------------------------------------- a tiny report


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rep") / "report"
    folder = build_report(out=out, tasks=TASKS, size="tiny", seed=1, progress=False)
    assert folder == out
    return out


@pytest.mark.slow
def test_folder_is_self_contained(report):
    text = (report / "index.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', text)
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert sorted(sources) == pngs and len(pngs) >= 12  # every figure shown, none missing
    for name in pngs:
        with Image.open(report / name) as image:
            assert image.format == "PNG" and min(image.size) > 50
    assert "<script" not in text and 'src="/' not in text and "://" not in text.split("<main>")[1]
    assert not [p for p in report.parent.iterdir() if p.name.startswith(".")]  # no staging left


@pytest.mark.slow
def test_report_json_holds_every_result(report):
    data = json.loads((report / "report.json").read_text())
    assert data["format"] == "gridlens.report"
    assert set(data["timings_s"]) == {name for name, _ in STAGES} | {"total"}
    # every entry is rounded to 1 ms: allow half a millisecond of rounding per entry
    stages = [v for k, v in data["timings_s"].items() if k != "total"]
    assert data["timings_s"]["total"] >= sum(stages) - 0.0005 * (len(stages) + 1)
    assert set(data["cpu_s"]) == set(data["timings_s"])
    assert {"gridlens", "torch", "numpy", "python"} <= set(data["versions"])
    assert data["options"]["tasks"] == ["frame", "contact"] and data["options"]["size"] == "tiny"
    results = data["results"]
    for key in (
        "evaluation",
        "ablation_layers_zero",
        "ablation_layers_mean",
        "ablation_heads_zero",
        "ablation_heads_mean",
        "attention",
        "copy_scores",
        "logit_lens",
        "activation_patching",
        "atp",
        "atp_star",
        "patching_agreement",
        "generation_layer",
        "generation_head",
        "probes_changes",
        "probes_roles",
        "edge_circuit",
    ):
        assert key in results, key
    evaluation = results["evaluation"]
    assert evaluation["overall"]["n"] == 1 * 4 * 2  # tiny: 1 quiz per task and structure
    greedy = [evaluation["tasks"][t]["accuracy_greedy"] for t in ("frame", "contact")]
    assert evaluation["overall"]["accuracy_greedy"] == pytest.approx(np.mean(greedy))
    ablation = results["ablation_heads_mean"]
    assert len(ablation["components"]) == 16 and ablation["n_quizzes"] == 2 * 2
    assert data["summary"] and all(isinstance(s, str) for s in data["summary"])


# One number of each stage's report.json against tests/by_hand.py (plain forwards and
# hooks, no gridlens analysis code), on the stage's own quizzes.


def _site(component: str) -> tuple[str, int | None]:
    """'L0.attn' / 'L2.mlp' / 'L1H3' / 'L0N50' -> (hook name, index in dimension 2 or None)."""
    layer, rest = re.fullmatch(r"L(\d+)(.+)", component).groups()
    if rest in (".attn", ".mlp"):
        return f"blocks.{layer}.hook_{rest[1:]}_out", None
    kind, index = rest[0], int(rest[1:])
    return f"blocks.{layer}.{'attn.hook_z' if kind == 'H' else 'mlp.hook_post'}", index


@pytest.fixture(scope="module")
def stages(report):
    """The report's results, its model (and training record) and its analysis quizzes."""
    from gridlens.analysis.core import quiz_set
    from gridlens.training.commands import resolve_model

    data = json.loads((report / "report.json").read_text())
    model, training, _ = resolve_model(data["options"]["model"], "cpu")
    tasks = tuple(data["options"]["tasks"])
    quizzes = quiz_set(tasks, data["options"]["n_per_task"], seed=data["options"]["seed"])
    return SimpleNamespace(
        options=data["options"],
        results=data["results"],
        findings={f["id"]: f for f in data["findings"]},
        model=model,
        training=training,
        tasks=tasks,
        quizzes=quizzes.tokens,
        clean=by_hand.grid_losses(model, quizzes.tokens).mean(),
    )


@pytest.mark.slow
def test_evaluation_by_hand(stages):
    """contact's loss and greedy accuracy, one test quiz per predicted structure."""
    from gridlens.training.data import TestSet
    from gridlens.training.evaluate import PREDICTED_STRUCTURES

    row = stages.results["evaluation"]
    tests = TestSet.build(stages.tasks, row["test_pool"], stages.training["test_seed"])
    contact = torch.cat([tests.quizzes("contact", s, 1)[0] for s in PREDICTED_STRUCTURES])
    loss = by_hand.grid_losses(stages.model, contact).mean()
    assert row["tasks"]["contact"]["loss"] == pytest.approx(float(loss), rel=1e-4)
    grids = by_hand.greedy_grids(stages.model, contact)
    right = (grids == contact[:, by_hand.cells(contact)]).all(1).float().mean()
    assert row["tasks"]["contact"]["accuracy_greedy"] == float(right)


@pytest.mark.slow
def test_ablations_by_hand(stages):
    """Zero-ablated L0.attn's grid-loss ratio; the most damaging head's under mean ablation."""
    model, quizzes = stages.model, stages.quizzes
    zero = ("blocks.0.hook_attn_out", lambda act, hook: torch.zeros_like(act))
    ratio = by_hand.grid_losses(model, quizzes, [zero]).mean() / stages.clean
    layers = stages.results["ablation_layers_zero"]["effects"]
    assert layers["L0.attn"]["loss_ratio"]["all"] == pytest.approx(float(ratio), rel=1e-4)
    heads = stages.results["ablation_heads_mean"]["effects"]
    head = max(heads, key=lambda h: heads[h]["loss_ratio"]["all"])
    hook = by_hand.mean_ablation(model, quizzes, *_site(head))
    ratio = by_hand.grid_losses(model, quizzes, [hook]).mean() / stages.clean
    assert heads[head]["loss_ratio"]["all"] == pytest.approx(float(ratio), rel=1e-4)


@pytest.mark.slow
def test_attention_and_direct_paths_by_hand(stages):
    """L0H1's mass on the cell above the predicted one (offset 9; grid rows 1-9), and the logit
    lens at the last layer, which is the model's own cell accuracy (no final LayerNorm)."""
    model, quizzes = stages.model, stages.quizzes
    cells = by_hand.cells(quizzes)
    queries = cells[10:]
    pattern = by_hand.attention_pattern(model, quizzes, 0)
    above = pattern[:, 1, queries, queries - 9].sum(1) / 100  # [n]: head 1, [query, key]
    heads = stages.results["attention"]["heads"]
    assert heads["L0H1"]["mass_predicted_grid"]["cell_above"] == pytest.approx(
        float(above.mean()), rel=1e-4
    )
    with torch.no_grad():
        predicted = model(quizzes)[:, cells].argmax(-1)
    accuracy = (predicted == quizzes[:, cells]).float().mean()
    lens = stages.results["logit_lens"]
    assert lens["accuracy"][lens["sites"][-1]]["all"] == pytest.approx(float(accuracy), abs=1e-6)


@pytest.mark.slow
def test_patching_and_generation_by_hand(stages):
    """The top head's restored fraction; cells right when generating (without a cache) under
    the mean ablation of the generation stage's layer."""
    from gridlens.analysis.pairs import as_tokens
    from gridlens.analysis.patching import make_pairs

    model, quizzes = stages.model, stages.quizzes
    exact = stages.results["activation_patching"]
    best = int(np.nanargmax(exact["scores"]["all"]))
    layer, head = map(int, re.fullmatch(r"L(\d+)H(\d+)", exact["components"][best]).groups())
    pairs = make_pairs(exact["pair_kind"], stages.tasks, 1, stages.options["seed"])
    restored = by_hand.head_patched(model, *as_tokens(pairs), layer, head)
    assert exact["scores"]["all"][best] == pytest.approx(restored, rel=1e-3, abs=1e-5)
    run = stages.results["generation_layer"]
    hook = by_hand.mean_ablation(model, quizzes, *_site(run["ablated"]))
    grids = by_hand.greedy_grids(model, quizzes, [hook])
    share = (grids == quizzes[:, by_hand.cells(quizzes)]).double().mean()
    assert run["cells_right"]["intervened"]["all"] == pytest.approx(float(share))


@pytest.mark.slow
def test_claims_by_hand(stages):
    """Claim 1's loss increase of L0.attn over the next attention layer (both zero-ablated)
    and claim 2's head attention share (offset 100: the previous grid's copy of the predicted
    cell) with the verdict its thresholds give."""
    from gridlens.report.claims import FAR_MORE, HEAD_SHARE

    model, quizzes, clean = stages.model, stages.quizzes, stages.clean
    outsized = stages.findings["l0_attention_outsized"]["evidence"]

    def zero_increase(layer: str) -> float:
        zero = (f"blocks.{layer[1:-5]}.hook_attn_out", lambda act, hook: torch.zeros_like(act))
        return float(by_hand.grid_losses(model, quizzes, [zero]).mean() - clean)

    rise = zero_increase("L0.attn") / zero_increase(outsized["next_layer"])
    assert outsized["increase_ratio_to_next"] == pytest.approx(rise, rel=1e-3)
    assert (stages.findings["l0_attention_outsized"]["verdict"] == "reproduced") == (
        rise >= FAR_MORE
    )
    head = stages.findings["l0_previous_token_head"]
    assert head["evidence"]["category"] == "prev_grid_same_cell"
    queries = by_hand.cells(quizzes)
    index = int(head["evidence"]["head"].removeprefix("L0H"))
    pattern = by_hand.attention_pattern(model, quizzes, 0)
    share = float(pattern[:, index, queries, queries - 100].mean())
    assert head["evidence"]["attention_share"] == pytest.approx(share, rel=1e-4)
    expected = "reproduced" if share >= HEAD_SHARE[0] else "partly"
    assert share >= HEAD_SHARE[1] and head["verdict"] == expected


def _newton_logistic(x: torch.Tensor, y: torch.Tensor, decay: float) -> torch.Tensor:
    """Binary logistic regression, [weights, bias], minimising the mean cross-entropy plus
    (decay / 2) |w|^2 by Newton's method. A two-class softmax with decay |W|^2 has the same
    optimum (its two weight columns settle at +-w / 2), so it separates the same tokens."""
    x = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    penalty = torch.full((x.shape[1],), decay, dtype=torch.float64)
    penalty[-1] = 0.0  # no decay on the bias
    theta = torch.zeros(x.shape[1], dtype=torch.float64)
    for _ in range(30):
        p = torch.sigmoid(x @ theta)
        grad = x.t() @ (p - y) / len(x) + penalty * theta
        hess = (x.t() * (p * (1 - p))) @ x / len(x) + torch.diag(penalty)
        theta -= torch.linalg.solve(hess, grad)
    assert grad.abs().max() < 1e-6  # converged
    return theta


@pytest.mark.slow
def test_probes_by_hand(stages):
    """The 'changes' probe's held-out accuracy after the last block: the split redrawn by quiz
    (a quarter of each task held out), the activations read with a hook at the positions that
    read a cell, standardised on the training tokens, and fitted by Newton's method."""
    from gridlens.analysis.core import quiz_set
    from gridlens.report.build import SIZES

    probes = stages.results["probes_changes"]
    site = probes["sites"][-1]
    seed = stages.options["seed"]
    quizzes = quiz_set(stages.tasks, SIZES[stages.options["size"]].probe_per_task, seed=seed + 1)
    tasks = np.asarray(quizzes.tasks)
    rng, test = np.random.default_rng(seed), np.zeros(len(tasks), dtype=bool)
    for task in dict.fromkeys(tasks.tolist()):
        rows = rng.permutation(np.flatnonzero(tasks == task))
        test[rows[: max(1, round(0.25 * len(rows)))]] = True
    assert stages.model.cfg.shift_input  # position p reads cell p - 1
    length = quizzes.tokens.shape[1]
    read = torch.arange(length - 1)
    read = read[read % (length // 4) != 0]  # the cells, not the four grid markers
    seen = []
    with torch.no_grad(), stages.model.hooks([(site, lambda act, hook: seen.append(act))]):
        stages.model(quizzes.tokens)
    x = seen[0][:, read + 1].double()  # [n, cells, d]
    y = torch.as_tensor(quizzes.batch.token_annotations("changes"))[:, read].double()
    assert set(y.unique().tolist()) == {0.0, 1.0}
    mean, std = x[~test].flatten(0, 1).mean(0), x[~test].flatten(0, 1).std(0).clamp_min(1e-6)
    x = (x - mean) / std
    theta = _newton_logistic(x[~test].flatten(0, 1), y[~test].flatten(), 1e-4)
    held_out = torch.cat([x[test].flatten(0, 1), torch.ones(int(test.sum()) * len(read), 1)], 1)
    right = ((held_out @ theta > 0).double() == y[test].flatten()).double()
    assert probes["n_test"] == len(right)
    assert probes["accuracy"][site] == pytest.approx(float(right.mean()), abs=1 / len(right))


@pytest.mark.slow
def test_sae_by_hand(stages):
    """The shipped SAE's explained variance on the first quiz of each task (the stage takes
    n_per_task // 2 of each, at least one): its own encode/decode, the variance by hand."""
    from gridlens.sae.io import load_sae

    sae_result = stages.results["sae"]
    assert sae_result["origin"].startswith("the shipped SAE")
    sae = load_sae("default")
    first = stages.quizzes[:: stages.options["n_per_task"]]
    seen = []
    with torch.no_grad(), stages.model.hooks([(sae.cfg.hook_name, lambda a, h: seen.append(a))]):
        stages.model(first)
        x = seen[0][:, by_hand.cells(first)].reshape(-1, sae.cfg.d_in)
        error = (x - sae.decode(sae.encode(x))).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    explained = sae_result["metrics"]["explained_variance"]["all"]
    assert explained == pytest.approx(float(1 - error), rel=1e-4)


@pytest.mark.slow
def test_neurons_by_hand(stages):
    """The first neuron's exact mean-ablation ratio, on the first quiz of each task (the stage
    takes n_per_task // 8 of each, at least one)."""
    neuron, value = next(iter(stages.results["neurons"]["exact_loss_ratio"].items()))
    first = stages.quizzes[:: stages.options["n_per_task"]]
    hook = by_hand.mean_ablation(stages.model, first, *_site(neuron))
    ratio = by_hand.grid_losses(stages.model, first, [hook]).mean()
    assert value == pytest.approx(float(ratio / by_hand.grid_losses(stages.model, first).mean()))


@pytest.mark.slow
def test_the_page_shows_the_findings_and_the_evaluation(report):
    data = json.loads((report / "report.json").read_text())
    text = (report / "index.html").read_text()
    import html

    for lines in data["section_findings"].values():
        for line in lines:
            assert html.escape(line) in text
    frame = data["results"]["evaluation"]["tasks"]["frame"]
    assert f"<td>frame</td><td>{100 * frame['accuracy_greedy']:.1f}%</td>" in text


CLAIMS = (
    "l0_attention_outsized",
    "l0_previous_token_head",
    "l0_direct_path_copies",
    "task_specific_mlp",
    "transform_cell_decides",
    "sparse_feature_recovers",
    "feature_induces_behaviour",
)


@pytest.mark.slow
def test_findings_come_first_with_every_claim_and_a_verdict(report):
    data = json.loads((report / "report.json").read_text())
    assert [f["id"] for f in data["findings"]] == list(CLAIMS)
    for finding in data["findings"]:
        assert finding["verdict"] in ("reproduced", "partly", "not reproduced", "not applicable")
        assert finding["claim"] and (finding["evidence"] or finding["reason"])
    text = (report / "index.html").read_text()
    sections = re.findall(r'<section id="([^"]+)"', text)
    assert sections[:2] == ["findings", "summary"]
    for claim_id in CLAIMS:
        assert f"<td>{claim_id}</td>" in text
    assert {"sae", "neurons"} <= set(data["results"]) and data["options"]["sae"] is None


@pytest.mark.slow
def test_the_sae_section_links_its_dashboard(report):
    text = (report / "index.html").read_text()
    assert '<a href="sae_dashboard/index.html">' in text
    dashboard = (report / "sae_dashboard" / "index.html").read_text()
    for page in re.findall(r'href="(latent_\d+\.html)"', dashboard):
        assert (report / "sae_dashboard" / page).is_file()
    sae = json.loads((report / "report.json").read_text())["results"]["sae"]
    assert 0 < sae["metrics"]["explained_variance"]["all"] <= 1


def test_an_sae_of_another_width_is_refused_before_any_work(tmp_path):
    from gridlens.sae.io import save_sae
    from gridlens.sae.model import SAEConfig, SparseAutoencoder

    cfg = SAEConfig(d_in=64, d_sae=32, architecture="topk", k=4, hook_name="blocks.0.hook_mlp_out")
    save_sae(SparseAutoencoder(cfg), tmp_path / "sae")
    with pytest.raises(ReportError, match="width 128"):
        build_report(out=tmp_path / "r", tasks="frame", size="tiny", sae=tmp_path / "sae")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_only_an_earlier_report_is_replaced(report, tmp_path):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ReportError, match="not a gridlens report"):
        build_report(out=precious, tasks="frame", size="tiny", progress=False)
    assert [p.name for p in precious.iterdir()] == ["notes.txt"]
    with pytest.raises(GridlensError, match="unknown report size"):
        build_report(out=tmp_path / "r", size="huge", progress=False)
    with pytest.raises(GridlensError, match="unknown task"):
        build_report(out=tmp_path / "r", tasks="fram", progress=False)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------- in Chromium


def _broken_images(driver) -> list[str]:
    """src of every image that did not load (not complete, or no natural width)."""
    return driver.execute_script(
        "return Array.from(document.images)"
        ".filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'));"
    )


@pytest.mark.slow
def test_report_renders_in_chromium(browser, report):
    from selenium.webdriver.common.by import By

    browser.get((report / "index.html").resolve().as_uri())
    assert browser.title == "gridlens report"
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) == len(list(report.glob("*.png")))
    assert _broken_images(browser) == []
    titles = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "section > h2")]
    for title in (
        "Findings",
        "Summary",
        "Evaluation",
        "Layer ablation",
        "Head ablation",
        "Attention heads",
        "Direct paths and logit lens",
        "Activation patching and attribution patching",
        "Generation under ablation",
        "Linear probes",
        "Sparse autoencoder",
        "MLP neurons",
        "About this report",
    ):
        assert title in titles, (title, titles)
    toc = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "nav.toc a")]
    assert toc == titles
    shot = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("L"), float)
    assert shot.std() > 20  # text, tables and figures, not a blank page
    assert (shot < 128).mean() > 0.01


@pytest.mark.slow
def test_chromium_check_catches_a_broken_image(browser, report, tmp_path):
    """The broken-image check is not vacuous: remove one figure and it is reported."""
    copy = tmp_path / "moved"
    shutil.copytree(report, copy)  # a moved folder still works...
    browser.get((copy / "index.html").resolve().as_uri())
    assert _broken_images(browser) == []
    (copy / "eval_bars.png").unlink()  # ...until a figure is missing
    browser.get((copy / "index.html").resolve().as_uri())
    assert _broken_images(browser) == ["eval_bars.png"]
