"""Automatic labels recover planted detectors with F1 1, and precision / recall are counted
right on hand-made activations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gridlens.analysis.core import quiz_set
from gridlens.models.checkpoints import load
from gridlens.sae.features import FeatureActivations, latent_activations
from gridlens.sae.labels import LabelResult, label_latents
from gridlens.sae.model import SAEConfig, SparseAutoencoder

RED = 1


@pytest.fixture(scope="module")
def quizzes():
    return quiz_set("default", 3, seed=11)


def test_planted_embedding_detector_is_labelled_input_red(quizzes):
    """An SAE on hook_embed whose latent 0 reads the red token's embedding direction, with a
    bias between red's projection and every other token's, fires exactly where the model has
    just read a red cell: its label must be 'input=red' with F1 1."""
    model = load("default")
    embed = model.embed.weight.detach()
    u = embed[RED] / embed[RED].norm()
    projections = embed @ u
    others = torch.cat([projections[:RED], projections[RED + 1 :]])
    assert projections[RED] > others.max()
    threshold = (projections[RED] + others.max()) / 2
    cfg = SAEConfig(d_in=model.cfg.d_model, d_sae=3, architecture="relu", hook_name="hook_embed")
    sae = SparseAutoencoder(cfg).eval()
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[:, 0] = u
        sae.b_dec.zero_()
        sae.b_enc.copy_(torch.tensor([-float(threshold), -1e6, -1e6]))
    acts = latent_activations(model, sae, quizzes, positions="no_markers")
    labels = label_latents(acts)
    best = labels.best(0)[0]
    assert best["label"] == "input=red"
    assert best["f1"] == pytest.approx(1.0)
    read_red = (quizzes.tokens[:, :-1] == RED).numpy()[:, acts.positions - 1]
    assert labels.fires[0] == read_red.sum() > 0
    assert labels.best(1) == [] and labels.fires[1] == 0


def test_precision_recall_counts_on_hand_set_latents(quizzes, tmp_path):
    """Latent 0 fires exactly on changing cells, latent 1 on them and k unchanged cells,
    latent 2 on every other changing cell."""
    positions = np.arange(304, 404)
    changes = quizzes.batch.token_annotations("changes")[:, positions].reshape(-1) > 0
    change_rows = np.flatnonzero(changes)
    extra = np.flatnonzero(~changes)[:17]
    half = change_rows[::2]
    rows = np.concatenate([change_rows, change_rows, extra, half])
    latents = np.repeat([0, 1, 1, 2], [len(change_rows), len(change_rows), len(extra), len(half)])
    acts = FeatureActivations.from_entries(
        quizzes, "test", positions, 4, rows, latents, np.ones(len(rows))
    )
    labels = label_latents(acts)
    c = labels.candidates.index("changes")
    assert labels.f1[0, c] == pytest.approx(1.0)
    assert labels.best(0)[0]["f1"] == pytest.approx(1.0)
    n = len(change_rows)
    assert labels.precision[1, c] == pytest.approx(n / (n + 17))
    assert labels.recall[1, c] == pytest.approx(1.0)
    assert labels.precision[2, c] == pytest.approx(1.0)
    assert labels.recall[2, c] == pytest.approx(len(half) / n)
    p, r = 1.0, len(half) / n
    assert labels.f1[2, c] == pytest.approx(2 * p * r / (p + r))
    assert labels.fires.tolist() == [n, n + 17, len(half), 0]
    js, md = labels.write(tmp_path)
    data = json.loads(js.read_text())
    assert set(data["latents"]) == {"0", "1", "2"}
    assert "| 0 |" in md.read_text()
    assert labels.detectors_of("changes", 1)[0]["latent"] == 0


def test_task_detector_and_conjunction(quizzes):
    """A latent firing on every predicted-grid cell of contact quizzes is labelled task
    contact; one firing on contact's changing cells is labelled 'contact & changes'."""
    positions = np.arange(304, 404)
    is_contact = np.repeat(quizzes.tasks == "contact", len(positions))
    changes = quizzes.batch.token_annotations("changes")[:, positions].reshape(-1) > 0
    a = np.flatnonzero(is_contact)
    b = np.flatnonzero(is_contact & changes)
    acts = FeatureActivations.from_entries(
        quizzes,
        "test",
        positions,
        2,
        np.concatenate([a, b]),
        np.repeat([0, 1], [len(a), len(b)]),
        np.ones(len(a) + len(b)),
    )
    labels = label_latents(acts)
    assert labels.best(0)[0] == {"label": "contact", "f1": 1.0, "precision": 1.0, "recall": 1.0}
    best = labels.best(1, 3)
    assert best[0]["f1"] == pytest.approx(1.0)
    assert "contact & changes" in [b["label"] for b in best if b["f1"] == pytest.approx(1.0)]


def test_table_keeps_the_order_it_is_given():
    """A ranking passed in (e.g. the most task-specific latents) is not re-sorted by F1; with
    no latents, every live latent is listed, best F1 first."""
    f1 = np.array([[0.2, 0.1], [0.9, 0.3], [0.0, 0.0], [0.5, 0.6]], dtype=np.float32)
    labels = LabelResult(["x", "y"], f1, f1, f1, np.array([4, 7, 0, 9]), 100)

    def rows(text: str) -> list[tuple[int, str]]:
        cells = [line.split(" | ") for line in text.splitlines()[2:]]
        return [(int(c[0].strip("| ")), c[1]) for c in cells]

    assert rows(labels.table([0, 3, 1])) == [(0, "x"), (3, "y"), (1, "x")]
    assert rows(labels.table()) == [(1, "x"), (3, "y"), (0, "x")]  # latent 2 never fires
