"""The Python API a notebook uses: lazy package exports, figures returned (a file only when a
path is given), `_repr_html_` with the grids drawn inline, and tables as records or DataFrames."""

from __future__ import annotations

import base64
import importlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from unittest.mock import patch

import numpy as np
import pytest
from PIL import Image

import gridlens
from gridlens.analysis import AblationResult, PatchingResult, plot_pairwise
from gridlens.errors import GridlensError, MissingDependencyError
from gridlens.plotting import pyplot
from gridlens.training import EvalResult
from gridlens.world import generate
from gridlens.world.render import render_image

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numpy", "matplotlib", "pandas", "scipy", "sae_lens", "transformer_lens")


# ---------------------------------------------------------------------------- exports


@pytest.mark.parametrize(
    ("package", "expected"),
    [
        ("analysis", "ablate activation_patching attribution_patching classify_heads copy_scores "
                     "generate_under logit_lens make_pairs quiz_set train_probes"),
        ("sae", "attribute evaluate_sae label_latents latent_activations load_sae steer "
                "train_sae write_dashboard"),
        ("groundtruth", "evaluate get_benchmark get_task score_mlp scoreboard train"),
    ],
)  # fmt: skip
def test_packages_export_their_public_functions(package, expected):
    module = importlib.import_module(f"gridlens.{package}")
    assert set(expected.split()) <= set(module.__all__)
    assert module.__all__ == sorted(module.__all__)
    for name in module.__all__:
        defining = importlib.import_module(f"gridlens.{package}.{module._EXPORTS[name]}")
        assert getattr(module, name) is getattr(defining, name), name
        assert name in dir(module)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        module.not_a_name  # noqa: B018


def test_importing_the_packages_is_light_and_fast():
    code = (
        "import sys, time\nt = time.process_time()\n"
        "import gridlens, gridlens.analysis, gridlens.sae, gridlens.groundtruth, gridlens.world\n"
        "import gridlens.models, gridlens.training, gridlens.report, gridlens.notebook\n"
        f"print(time.process_time() - t, [m for m in {HEAVY!r} if m in sys.modules])"
    )
    runs = [_python(code).split(" ", 1) for _ in range(3)]
    assert all(heavy == "[]" for _, heavy in runs), runs
    assert min(float(seconds) for seconds, _ in runs) < 0.3


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return done.stdout.strip()


def test_an_exported_function_outlives_the_import_of_its_namesake_module():
    importlib.import_module("gridlens.world.generate")
    importlib.import_module("gridlens.groundtruth.scoreboard")
    from gridlens.groundtruth import scoreboard
    from gridlens.world import generate as world_generate

    for value in (world_generate, scoreboard, gridlens.world.generate):
        assert callable(value) and not isinstance(value, ModuleType)


# ---------------------------------------------------------------------------- figures


def _path_parameter(function) -> inspect.Parameter:
    parameters = inspect.signature(function).parameters
    return next(parameters[p] for p in ("path", "png", "directory") if p in parameters)


def _plotting_functions():
    """Every public plotting function or method of the packages, found by name."""
    from gridlens.groundtruth import figures
    from gridlens.training import plots
    from gridlens.training.culture import report

    evaluate = importlib.import_module("gridlens.training.evaluate")
    scoreboard = importlib.import_module("gridlens.groundtruth.scoreboard")
    found = [plots.plot_curve, evaluate.bar_chart, report.plot_rounds, scoreboard.figure]
    found += [figures.training_curves, figures.sae_scores, figures.sae_matrix]
    found += [figures.circuit_scores]
    for package in ("analysis", "sae", "groundtruth", "training"):
        module = importlib.import_module(f"gridlens.{package}")
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isclass(value) and callable(getattr(value, "plot", None)):
                found.append(value.plot)
            elif inspect.isfunction(value) and name.startswith("plot"):
                found.append(value)
    return found


def test_every_plotting_function_writes_only_when_given_a_path():
    functions = _plotting_functions()
    assert len(functions) >= 25
    for function in functions:
        assert _path_parameter(function).default is None, function.__qualname__


def test_only_the_plotting_module_saves_figures():
    writers = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "gridlens").rglob("*.py")
        if re.search(r"\.savefig\(|matplotlib\.use\(", path.read_text())
    ]
    assert sorted(writers) == ["gridlens/notebook.py", "gridlens/plotting.py"]


def ablation_result() -> AblationResult:
    """Two tasks of two quizzes, four heads; L0H1 doubles the loss on a and quadruples it on b."""
    loss = np.array([[1.0, 1, 1, 1], [2, 2, 4, 4], [1, 1, 1, 1], [0.5, 0.5, 0.5, 0.5]])
    return AblationResult(
        method="zero",
        components=[f"L{layer}H{head}" for layer in range(2) for head in range(2)],
        tasks=np.array(["a", "a", "b", "b"]),
        clean_loss=np.ones(4),
        clean_cell_accuracy=np.ones(4),
        loss=loss,
        cell_accuracy=np.array([[1.0, 1, 1, 1], [1, 1, 0.5, 0.7], [1, 1, 1, 1], [1, 1, 1, 1]]),
    )


def test_a_figure_is_returned_and_written_only_with_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plt = pyplot()
    open_before = plt.get_fignums()
    result = ablation_result()
    fig = result.plot()
    pairs = plot_pairwise(np.array([[1.0, 0.5], [0.4, 1.0]]), title="pairs")
    assert type(fig).__name__ == "Figure" and type(pairs).__name__ == "Figure"
    assert list(tmp_path.iterdir()) == []
    assert plt.get_fignums() == open_before  # closed in pyplot: nothing piles up
    assert len(pairs.axes[0].texts) == 4  # one number per cell
    fig = result.plot(tmp_path / "heads.png")
    width, height = fig.get_size_inches() * 110
    assert Image.open(tmp_path / "heads.png").size == (round(width), round(height))


# ---------------------------------------------------------------------------- HTML


def inline_images(html: str) -> list[np.ndarray]:
    found = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)"/>', html)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(data)))) for data in found]


def test_a_quiz_batch_shows_its_grids_inline():
    batch = generate("frame", 3, seed=0)
    (image,) = inline_images(batch._repr_html_())
    np.testing.assert_array_equal(image[..., :3], np.asarray(render_image(batch))[..., :3])
    many = generate("contact", 10, seed=1)
    html = many._repr_html_()
    (image,) = inline_images(html)
    expected = np.asarray(render_image(many.subset(np.arange(8))))
    np.testing.assert_array_equal(image[..., :3], expected[..., :3])
    assert "10 quizzes; the first 8 drawn" in html
    from gridlens.analysis import quiz_set

    quizzes = quiz_set(("frame",), 2, seed=0)
    assert quizzes._repr_html_() == quizzes.batch._repr_html_()


def test_ablation_html_records_and_dataframe():
    result = ablation_result()
    html = result._repr_html_()
    assert len(inline_images(html)) == 1
    assert result.findings()[0].split(" (")[0] in html and "<td>L0H1</td>" in html
    records = result.to_records()
    assert len(records) == 4 * 3 and json.loads(json.dumps(records)) == records
    frame = result.to_dataframe().set_index(["component", "task"])
    assert frame.loc[("L0H1", "b"), "loss_ratio"] == pytest.approx(4.0)
    assert frame.loc[("L0H1", "all"), "loss_ratio"] == pytest.approx(3.0)
    assert frame.loc[("L0H1", "b"), "cell_accuracy_delta"] == pytest.approx(-0.4)


def test_patching_html_and_records_keep_undefined_scores_empty():
    scores = {"a": np.array([0.5, np.nan, 0.1, -0.2]), "all": np.array([0.4, 0.0, 0.2, -0.1])}
    result = PatchingResult(
        method="activation", pair_kind="parameter", components=["L0H0", "L0H1", "L1H0", "L1H1"],
        scores=scores, clean_logprob={"a": -1.0, "all": -1.0},
        corrupted_logprob={"a": -3.0, "all": -3.0}, n_pairs={"a": 2, "all": 2}, seconds=0.1,
        n_layers=2, n_heads=2,
    )  # fmt: skip
    assert len(inline_images(result._repr_html_())) == 1
    rows = {(r["component"], r["task"]): r["score"] for r in result.to_records()}
    assert rows[("L0H1", "a")] is None and rows[("L1H1", "all")] == pytest.approx(-0.1)
    assert len(rows) == 8


def test_evaluation_html_and_records():
    def metrics(greedy: float, n: int) -> dict:
        return {"accuracy_greedy": greedy, "accuracy_sampled": None, "cell_accuracy": 0.9,
                "loss": 0.1, "wrong_valid": None, "n": n}  # fmt: skip

    result = EvalResult(
        tasks={"frame": metrics(0.5, 4), "contact": metrics(1.0, 4)},
        structures={"forward": metrics(0.75, 8)},
        by_task_structure={},
        overall=metrics(0.75, 8),
    )
    html = result._repr_html_()
    assert len(inline_images(html)) == 1 and "greedy accuracy 75.0% on 8 quizzes" in html
    rows = result.to_records()
    assert [(r["group"], r["name"]) for r in rows] == [
        ("task", "frame"), ("task", "contact"), ("structure", "forward"), ("overall", "all")
    ]  # fmt: skip
    assert result.to_dataframe()["accuracy_greedy"].tolist() == [0.5, 1.0, 0.75, 0.75]


def test_an_sae_latent_shows_examples_histogram_and_rates():
    from gridlens.analysis import quiz_set
    from gridlens.models import GridGPT
    from gridlens.sae import SAEConfig, SparseAutoencoder, latent_activations

    model = GridGPT("tiny", seed=0).eval()
    cfg = SAEConfig(d_in=64, d_sae=8, architecture="relu", hook_name="blocks.1.hook_mlp_out")
    sae = SparseAutoencoder(cfg, seed=0).eval()
    quizzes = quiz_set(("frame", "contact"), 2, seed=3)
    acts = latent_activations(model, sae, quizzes, positions="grid")
    j = int(np.argmax([len(acts.column(k)[0]) for k in range(8)]))
    latent = acts.latent(j)
    examples, histogram = inline_images(latent._repr_html_())
    assert examples.shape[0] > histogram.shape[0] / 2
    dense = acts.dense(j)  # [quizzes, positions], an independent path to the rates
    for row in latent.to_records():
        mine = quizzes.tasks == row["task"]
        assert row["firing_rate"] == pytest.approx(float((dense[mine] > 0).mean()))
        assert row["mean_activation"] == pytest.approx(float(dense[mine][dense[mine] > 0].mean()))
    with pytest.raises(GridlensError, match="outside"):
        acts.latent(8)


def test_probe_heads_and_sae_metrics_html_and_records():
    from gridlens.analysis import HeadClassification, ProbeResult
    from gridlens.analysis.attention import CATEGORIES
    from gridlens.sae import SAEMetrics
    from gridlens.sae.metrics import PER_TASK

    sites = ["hook_embed", "blocks.0.hook_resid_post"]
    probes = ProbeResult(
        annotation="changes", target="input", control="type", sites=sites,
        accuracy={sites[0]: 0.6, sites[1]: 0.9}, control_accuracy={sites[0]: 0.5, sites[1]: 0.5},
        task_accuracy={s: {"frame": 0.7} for s in sites}, baseline=0.55, n_classes=2,
        n_train=30, n_test=10,
    )  # fmt: skip
    mass = np.zeros((2, len(CATEGORIES)))
    mass[0, 0], mass[1, 1], mass[1, 2] = 1.0, 0.4, 0.6
    heads = HeadClassification(
        heads=["L0H0", "L0H1"], mass_predicted=mass, mass_all=mass, per_task={"frame": mass},
        entropy_bits=np.array([0.1, 1.0]), top_offset=np.array([100, 1]),
        top_offset_mass=np.array([0.9, 0.4]),
    )  # fmt: skip
    values = {m: {"frame": 0.5, "all": 0.5} for m in PER_TASK}
    values["explained_variance"] = {"frame": 0.8, "all": 0.8}
    sae = SAEMetrics(
        hook_name="blocks.1.hook_mlp_out", architecture="topk", d_sae=8, positions="grid",
        n_quizzes=2, n_rows=200, values=values, firing_frequency=np.linspace(0, 0.5, 8),
    )  # fmt: skip
    for result in (probes, heads, sae):
        assert len(inline_images(result._repr_html_())) == 1
        assert json.loads(json.dumps(result.to_records())) == result.to_records()
    assert [r["selectivity"] for r in probes.to_records()] == pytest.approx([0.1, 0.4])
    rows = heads.to_records()
    assert [r["label"] for r in rows] == [CATEGORIES[0], CATEGORIES[2]]
    assert rows[1][CATEGORIES[1]] == pytest.approx(0.4) and rows[0]["top_offset"] == 100
    assert sae.to_dataframe().set_index("task").loc["frame", "explained_variance"] == 0.8


def test_to_dataframe_without_pandas_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` now raises ImportError
    with pytest.raises(MissingDependencyError, match="pip install pandas"):
        ablation_result().to_dataframe()
    assert ablation_result().to_records()  # records need nothing


@pytest.mark.slow  # starts a Jupyter kernel: about 16 s on a loaded 2-core machine
def test_a_notebook_shows_each_figure_once_and_a_batch_as_html():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(
            "import numpy as np\nfrom gridlens.analysis import plot_pairwise\n"
            "plot_pairwise(np.eye(2), title='pairs')"
        ),
        nbformat.v4.new_code_cell("from gridlens.world import generate\ngenerate('frame', 2)"),
    ]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with patch.dict(os.environ, env):
        nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    figure, batch = ([out["data"] for out in cell.outputs] for cell in notebook.cells)
    assert len(figure) == 1 and "image/png" in figure[0]  # the returned Figure, not twice
    assert len(batch) == 1 and "<img" in batch[0]["text/html"]
