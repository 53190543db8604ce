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
