"""Splicing SAEs into the default model: an exact identity SAE and keep_error leave the model
unchanged; edits act only where asked, also through KV-cached generation (hook.start)."""

from __future__ import annotations

import pytest
import torch
from sae_feature_helpers import identity_sae

from gridlens.analysis.core import quiz_set
from gridlens.errors import ConfigError
from gridlens.models.checkpoints import load
from gridlens.models.generate import generate, last_grid_positions
from gridlens.models.hooks import HookPoint
from gridlens.sae.model import SAEConfig, SparseAutoencoder
from gridlens.sae.splice import splice_hooks

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return load("default")


@pytest.fixture(scope="module")
def tokens():
    return quiz_set(["frame", "translate"], n_per_task=1, seed=3).tokens


def random_sae(d: int = 128, arch: str = "topk") -> SparseAutoencoder:
    return SparseAutoencoder(SAEConfig(d, 256, arch, hook_name=SITE, k=8), seed=7).eval()


def test_identity_sae_leaves_logits_unchanged(model, tokens):
    clean = model(tokens)
    spliced = model.run_with_hooks(tokens, fwd_hooks=splice_hooks(identity_sae(128, SITE)))
    torch.testing.assert_close(spliced, clean, atol=1e-5, rtol=1e-5)


def test_identity_sae_on_hook_z_flattens_heads(model, tokens):
    site = "blocks.0.attn.hook_z"  # [batch, pos, 4 heads, 32]
    spliced = model.run_with_hooks(tokens, fwd_hooks=splice_hooks(identity_sae(128, site)))
    torch.testing.assert_close(spliced, model(tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu"])
def test_keep_error_without_edit_changes_nothing(model, tokens, arch):
    hooks = splice_hooks(random_sae(arch=arch), keep_error=True)
    assert torch.equal(model.run_with_hooks(tokens, fwd_hooks=hooks), model(tokens))


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu", "relu"])
def test_keep_error_adds_back_the_error_of_an_edited_reconstruction(model, tokens, arch):
    """With keep_error the SAE runs: the result is decode(edit(latents)) + (x - decode(latents)),
    checked on an edit that removes every latent (so the output must differ from x), and an
    identity edit must leave the logits unchanged."""
    sae = random_sae(arch=arch)
    x = 3.0 * torch.randn(2, 7, 128, generator=torch.Generator().manual_seed(1))
    [(_, zero_all)] = splice_hooks(sae, keep_error=True, edit=torch.zeros_like)
    with torch.no_grad():
        out = zero_all(x, HookPoint(SITE))
        error = x - sae.decode(sae.encode(x))
        expected = sae.decode(torch.zeros(2, 7, 256)) + error
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    assert (out - x).abs().max() > 1e-2
    hooks = splice_hooks(sae, keep_error=True, edit=lambda latents: latents)
    spliced = model.run_with_hooks(tokens, fwd_hooks=hooks)
    torch.testing.assert_close(spliced, model(tokens), atol=1e-5, rtol=1e-5)


def test_a_random_sae_changes_the_logits(model, tokens):
    spliced = model.run_with_hooks(tokens, fwd_hooks=splice_hooks(random_sae()))
    assert (spliced - model(tokens)).abs().max() > 1e-2


def test_edit_with_keep_error_acts_only_at_chosen_positions(model, tokens):
    sae = random_sae()

    def steer(latents):
        return latents + 5.0 * torch.nn.functional.one_hot(torch.tensor(3), 256)

    hooks = splice_hooks(sae, keep_error=True, edit=steer, positions="grid")
    clean, edited = model(tokens), model.run_with_hooks(tokens, fwd_hooks=hooks)
    grid = last_grid_positions(tokens.shape[1])
    assert torch.equal(edited[:, : grid.start], clean[:, : grid.start])  # causal: before the grid
    assert (edited[:, grid] - clean[:, grid]).abs().max() > 1e-3
    # the change is exactly 5 * W_dec[3] added at the site: compare with a direct hook
    added = 5.0 * sae.W_dec[3].detach()

    def direct(act, hook):
        out = act.clone()
        out[:, grid] += added
        return out

    torch.testing.assert_close(
        edited, model.run_with_hooks(tokens, fwd_hooks=[(SITE, direct)]), atol=1e-5, rtol=1e-5
    )


def test_positions_follow_hook_start_during_cached_generation(model, tokens):
    """With the KV cache a hook sees one position at a time; the spliced generation must equal
    the one recomputing every prefix in full (where positions are absolute by construction)."""
    hooks = splice_hooks(random_sae(), positions=torch.arange(310, 404))
    grid, tokens = (304, 324), tokens[:2]  # 20 decoded cells, the SAE acting from the 7th
    with model.hooks(hooks):
        cached = generate(model, tokens, grid, use_cache=True)
        full = generate(model, tokens, grid, use_cache=False)
    assert torch.equal(cached, full)
    assert not torch.equal(cached, generate(model, tokens, grid))  # the SAE mattered


def test_edit_must_keep_the_shape(model, tokens):
    hooks = splice_hooks(random_sae(), edit=lambda latents: latents[:, :10])
    with pytest.raises(ConfigError, match="edit must return latents of shape"):
        model.run_with_hooks(tokens, fwd_hooks=hooks)


def test_wrong_width_is_reported(model, tokens):
    sae = SparseAutoencoder(SAEConfig(64, 128, "relu", hook_name=SITE))
    with pytest.raises(ConfigError, match="d_in=64"):
        model.run_with_hooks(tokens, fwd_hooks=splice_hooks(sae))
