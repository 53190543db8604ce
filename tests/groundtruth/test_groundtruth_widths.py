"""`groundtruth train --d-model/--d-mlp --detach-sources`: the options are used, recorded and
read back."""

from gridlens.cli import main
from gridlens.groundtruth import iit
from gridlens.groundtruth.spec import get_benchmark


def test_widths_reach_the_model_and_survive_save_and_load(tmp_path, capsys):
    assert get_benchmark("left_greater").config.d_model == 64
    out = tmp_path / "run"
    try:
        main(["groundtruth", "train", "--bench", "left_greater", "--out", str(out),
              "--max-epochs", "1", "--n-train", "64", "--n-val", "32", "--batch-size", "32",
              "--d-model", "32", "--d-mlp", "48", "--detach-sources", "--no-resume"])  # fmt: skip
    except SystemExit as exit_:
        assert exit_.code in (0, None), capsys.readouterr().err
    model, bench, meta = iit.load_run(out)
    assert (model.cfg.d_model, model.cfg.d_mlp) == (32, 48)
    assert (bench.config.d_model, bench.config.d_mlp) == (32, 48)
    assert meta["model_overrides"] == {"d_model": 32, "d_mlp": 48}
    assert meta["train"]["source_grad"] is False


def test_init_continues_a_runs_weights_and_refuses_another_benchmark(tmp_path, capsys):
    def train(out, *extra):
        try:
            main(["groundtruth", "train", "--bench", "left_greater", "--out", str(out),
                  "--max-epochs", "1", "--n-train", "64", "--n-val", "32", "--batch-size", "32",
                  "--d-model", "32", "--d-mlp", "48", "--no-resume", *extra])  # fmt: skip
        except SystemExit as exit_:
            assert exit_.code in (0, None), capsys.readouterr().err

    train(tmp_path / "a")
    train(tmp_path / "b", "--init", str(tmp_path / "a"), "--lr", "1e-9", "--lr-end", "0")
    first, _, _ = iit.load_run(tmp_path / "a")
    second, _, meta = iit.load_run(tmp_path / "b")
    assert meta["init"] == str(tmp_path / "a")
    for (name, p), q in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert (p - q).abs().max() < 1e-6, name  # one epoch at lr 1e-9 moves nothing
    fresh = iit.make_model(get_benchmark("left_greater", d_model=32, d_mlp=48), seed=0)
    pairs = zip(fresh.parameters(), second.parameters(), strict=True)
    assert any((p - q).abs().max() > 1e-3 for p, q in pairs)
    try:
        main(["groundtruth", "train", "--bench", "left_greater", "--out", str(tmp_path / "c"),
              "--init", str(tmp_path / "a")])  # fmt: skip
    except SystemExit as exit_:
        assert exit_.code == 2
    assert "differs" in capsys.readouterr().err
