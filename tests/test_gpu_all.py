"""benchmarks/gpu_all.py --smoke: every part runs on the CPU at tiny sizes and writes its numbers;
a part that cannot run (here: no original mygpt.py) records why and the others go on."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script():
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("gpu_all", BENCHMARKS / "gpu_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_run_writes_every_part(tmp_path):
    gpu_all = load_script()
    out = tmp_path / "out"
    argv = ["--smoke", "--out", str(out), "--work", str(tmp_path), "--original", "/nowhere"]
    returned = gpu_all.main(argv)
    saved = json.loads((out / "gpu_all.json").read_text())
    assert saved["format"] == "gridlens-gpu-bench" and saved["settings"]["smoke"]
    assert json.loads(json.dumps(returned)) == saved
    assert saved["train"]["tiny"]["tokens_per_s"] > 0 and saved["train"]["tiny"]["mfu"] is None
    forward = saved["forward"]
    assert forward["forward_ours_s"] > 0 and forward["generate_ours_s"] > 0
    assert forward["forward_transformer_lens_s"] > 0
    assert "original" in forward["errors"] and "forward_original_s" not in forward
    for arch in gpu_all.SAE_ARCHS:
        assert saved["sae"][arch]["ours_step_s"] > 0 and saved["sae"][arch]["saelens_step_s"] > 0
    assert saved["sae"]["e2e_ours_tokens_per_s"] > 0 < saved["sae"]["e2e_saelens_tokens_per_s"]
    assert saved["store"]["rows_per_s"] > 0 and saved["store"]["rows"] >= 1024
    log = (out / "gpu_all.log").read_text()
    assert "== store" in log and "sae step jumprelu" in log
    assert sorted(p.name for p in out.iterdir()) == ["gpu_all.json", "gpu_all.log"]


def test_smoke_defaults_are_tiny_and_full_ones_fit_an_h200_lease():
    gpu_all = load_script()
    smoke = gpu_all.parse(["--smoke", "--out", "x"])
    full = gpu_all.parse(["--out", "x", "--device", "cpu", "--batch", "8"])
    assert smoke.device == "cpu" and smoke.model == "tiny" and not smoke.compile
    assert full.model == "37m" and full.train_presets == "cpu,gpu,37m" and full.batch == 8
