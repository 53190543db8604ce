"""Tracr import: the weight layout against a numpy re-statement of tracr's forward pass, the
shipped compiled models against tracr's own answers, and scoring on them. Compiling needs the
optional extra (`pip install 'gridlens[tracr]'`); those tests are skipped without it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gridlens.errors import CheckpointError
from gridlens.groundtruth.tracr_models import PROGRAMS, from_tracr, load_tracr, save_tracr
from gridlens.groundtruth.tracr_scoring import all_inputs, circuit_scores, sae_scores

SHIPPED = Path(__file__).resolve().parents[2] / "gridlens" / "data" / "tracr"


def fake_assembled(rng: np.random.Generator, causal: bool):
    """An object shaped like tracr's AssembledTransformerModel: 2 layers, 2 heads of size 3,
    d_model 5 (labels a..., out:x, out:y), random weights, haiku's parameter names."""
    d, h, k, m, layers = 5, 2, 3, 4, 2
    p = {"token_embed": {"embeddings": 0.5 * rng.normal(size=(5, d))}}
    p["pos_embed"] = {"embeddings": 0.5 * rng.normal(size=(6, d))}
    for layer in range(layers):
        a, mm = f"transformer/layer_{layer}/attn/", f"transformer/layer_{layer}/mlp/"
        for key in ("query", "key", "value"):
            p[a + key] = {"w": 0.5 * rng.normal(size=(d, h * k)), "b": 0.5 * rng.normal(size=h * k)}
        p[a + "linear"] = {"w": 0.5 * rng.normal(size=(h * k, d)), "b": 0.5 * rng.normal(size=d)}
        p[mm + "linear_1"] = {"w": 0.5 * rng.normal(size=(d, m)), "b": 0.5 * rng.normal(size=m)}
        p[mm + "linear_2"] = {"w": 0.5 * rng.normal(size=(m, d)), "b": 0.5 * rng.normal(size=d)}
    config = SimpleNamespace(
        num_layers=layers, num_heads=h, key_size=k, mlp_hidden_size=m, causal=causal
    )
    return SimpleNamespace(
        params=p,
        model_config=config,
        residual_labels=["one", "tokens:a", "tokens:b", "out:x", "out:y"],
        input_encoder=SimpleNamespace(
            encoding_map={"BOS": 0, "a": 1, "b": 2, "c": 3, "compiler_pad": 4}, bos_token="BOS"
        ),
        output_encoder=SimpleNamespace(encoding_map={"x": 0, "y": 1}),
    )


def tracr_forward(asm, tokens: np.ndarray) -> np.ndarray:
    """tracr.transformer.model's forward (no LayerNorm), restated in numpy, before unembedding."""
    p, c = asm.params, asm.model_config
    t = tokens.shape[1]
    x = p["token_embed"]["embeddings"][tokens] + p["pos_embed"]["embeddings"][np.arange(t)]
    for layer in range(c.num_layers):
        a = f"transformer/layer_{layer}/attn/"

        def proj(name, x=x, a=a):
            y = x @ p[a + name]["w"] + p[a + name]["b"]
            return y.reshape(*x.shape[:2], c.num_heads, c.key_size)

        logits = np.einsum("bthd,bThd->bhtT", proj("query"), proj("key")) / np.sqrt(c.key_size)
        keep = (tokens != 4)[:, None, None, :]  # padding is never attended to
        if c.causal:
            keep = keep & (np.tril(np.ones((t, t))) > 0)
        logits = np.where(keep, logits, -1e30)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        z = np.einsum("bhtT,bThd->bthd", w, proj("value")).reshape(*x.shape[:2], -1)
        x = x + z @ p[a + "linear"]["w"] + p[a + "linear"]["b"]
        mm = f"transformer/layer_{layer}/mlp/"
        hidden = np.maximum(x @ p[mm + "linear_1"]["w"] + p[mm + "linear_1"]["b"], 0)
        x = x + hidden @ p[mm + "linear_2"]["w"] + p[mm + "linear_2"]["b"]
    return x


@pytest.mark.parametrize("causal", [False, True])
def test_import_matches_tracrs_forward(causal, tmp_path):
    asm = fake_assembled(np.random.default_rng(0), causal)
    model = from_tracr(asm, "out")
    tokens = np.array([[0, 1, 3, 2, 2], [0, 3, 3, 4, 4]])
    want = tracr_forward(asm, tokens)
    out, cache = model.run_with_cache(torch.from_numpy(tokens), "blocks.1.hook_resid_post")
    got = cache["blocks.1.hook_resid_post"].numpy()
    assert np.allclose(got, want, rtol=1e-4, atol=1e-3)
    assert np.allclose(
        out.detach().numpy(), want[..., 3:5], rtol=1e-4, atol=1e-3
    )  # the readout: out:x, out:y
    save_tracr(model, tmp_path / "m", {"inputs": [], "answers": []})
    again, _ = load_tracr(tmp_path / "m")
    assert torch.equal(again(torch.from_numpy(tokens)), model(torch.from_numpy(tokens)))
    with pytest.raises(CheckpointError, match="not found"):
        load_tracr(tmp_path / "missing")


@pytest.mark.parametrize("name", PROGRAMS)
def test_shipped_models_give_tracrs_answers(name):
    model, examples = load_tracr(SHIPPED / name)
    got = model.decode(model.tokens(examples["inputs"]))
    for row, want in zip(got, examples["answers"], strict=True):
        if model.cfg.output_values:
            assert [str(v) for v in row[1:]] == want
        else:
            assert np.allclose(row[1:], want, atol=1e-4)


def test_circuit_and_sae_scores_on_a_compiled_model():
    model, _ = load_tracr(SHIPPED / "reverse")
    tokens = all_inputs(model)
    assert len(tokens) == sum(3**n for n in range(1, 6))  # every length, padded
    c = circuit_scores(model, tokens)
    patching = np.array(c["activation_patching"])
    truth = np.array(c["in_circuit"])
    assert truth.sum() == 5 and (patching[~truth] == 0).all()  # weightless parts do nothing
    # every compiled part matters once lengths differ; AtP misses the length computation,
    # whose MLPs are flat step functions (zero gradient) away from their thresholds
    assert c["recall_activation_patching"] == 1.0 and c["recall_atp"] < 1.0
    s = sae_scores(model, tokens, steps=50)
    assert s["features"] > 0 and 0 <= s["mean_best_f1"] <= 1 and s["mean_max_cosine"] <= 1 + 1e-6


@pytest.mark.slow
def test_compiling_with_tracr_matches_the_import():
    pytest.importorskip("tracr")
    from gridlens.groundtruth.tracr_models import compile_program

    assembled, model = compile_program("reverse")
    row = ["BOS", "a", "b", "c", "c"]
    assert model.decode(model.tokens([row]))[0][1:] == assembled.apply(row).decoded[1:]


def test_tracr_command_writes_its_scores(tmp_path):
    from click.testing import CliRunner

    from gridlens.groundtruth.commands import groundtruth

    out = tmp_path / "s.json"
    args = ["tracr", "--model", "frac_prevs", "--sae-steps", "20", "--json", str(out)]
    result = CliRunner().invoke(groundtruth, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["format"] == "gridlens-tracr-scores" and data["circuit"]["recall_atp"] == 1.0
    bad = CliRunner().invoke(groundtruth, ["tracr", "--model", "nope"])
    assert bad.exit_code != 0 and "nope" in str(bad.exception)
