"""The report's attribution-graph stage on a tiny model: it attributes the transform cell the
MLP study picks and links a graph page (the full report build is tested elsewhere)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from gridlens.analysis.core import quiz_set
from gridlens.models.gpt import GridGPT
from gridlens.report.graph_stage import stage_graph, transform_cell
from gridlens.sae.transcoder import Transcoder, TranscoderConfig
from gridlens.sae.transcoder_io import layer_dir, save_transcoder


def test_stage_attributes_the_transform_cell(tmp_path):
    model = GridGPT(d_model=16, n_layers=2, n_heads=2, d_head=8, d_mlp=32, seed=0).eval()
    for layer in range(2):
        cfg = TranscoderConfig.for_layer(layer, 16, 32, architecture="topk", k=4)
        save_transcoder(Transcoder(cfg, seed=layer), layer_dir(tmp_path / "tc", layer))
    quizzes = quiz_set(("contact", "frame"), 2, seed=1)
    study = SimpleNamespace(
        task="contact",
        quizzes=quizzes.subset([0, 1]),
        broken=torch.tensor([False, True]),
        first_wrong=torch.tensor([-1, 7]),
    )
    tokens, position = transform_cell(study)
    assert torch.equal(tokens, quizzes.tokens[1]) and position == 404 - 100 + 7
    run = SimpleNamespace(model=model, study=study, quizzes=quizzes, folder=tmp_path / "report",
                          results={}, transcoders_path=tmp_path / "tc")  # fmt: skip
    section = stage_graph(run)
    assert section.title == "Attribution graph" and "replacement score" in section.findings[0]
    assert run.results["graph"]["position"] == position
    assert (tmp_path / "report" / "graph" / "graph.html").is_file()
    assert stage_graph(SimpleNamespace(transcoders_path=None)) is None
