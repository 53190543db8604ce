"""Feature splitting: a family built so that every latent splits in two is matched back to its
parents; the in-memory row store serves every row once an epoch and resumes; the tree figure
draws the chosen roots' descendants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sae_feature_helpers import HOOK

from gridlens.analysis.core import quiz_set
from gridlens.models.checkpoints import load
from gridlens.sae.model import SAEConfig, SparseAutoencoder
from gridlens.sae.splitting import RowStore, decoder_cosines, feature_splitting, train_family
from gridlens.sae.train import SAETrainConfig


def _relu_sae(w_dec: torch.Tensor) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(w_dec.shape[1], w_dec.shape[0], "relu", hook_name=HOOK))
    with torch.no_grad():
        sae.W_dec.copy_(w_dec)
        sae.W_enc.copy_(w_dec.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


@pytest.fixture(scope="module")
def split_family():
    """16 random unit directions; the larger SAE has w +- 0.5 u (u a unit vector orthogonal
    to w) for each, so latent j's children are 2j and 2j + 1 at cosine 1 / sqrt(1.25)."""
    g = torch.Generator().manual_seed(0)
    w = torch.nn.functional.normalize(torch.randn(16, 128, generator=g), dim=1)
    u = torch.randn(16, 128, generator=g)
    u = torch.nn.functional.normalize(u - (u * w).sum(1, keepdim=True) * w, dim=1)
    children = torch.stack([w + 0.5 * u, w - 0.5 * u], 1).reshape(32, 128)
    return _relu_sae(w), _relu_sae(torch.nn.functional.normalize(children, dim=1))


def test_every_latent_splits_into_its_two_children(split_family):
    small, large = split_family
    cos = decoder_cosines(small, large)
    assert cos.shape == (32, 16)
    result = feature_splitting(load("default"), [large, small], quiz_set("contact", 1, seed=4))
    assert result.sizes == [16, 32]
    np.testing.assert_array_equal(result.parent[1], np.arange(32) // 2)
    np.testing.assert_allclose(result.cosine[1], 1 / np.sqrt(1.25), rtol=1e-5)
    live_small = np.flatnonzero(result.fires[0] > 0)
    assert len(live_small) > 0
    for j in live_small:
        expected = [k for k in (2 * j, 2 * j + 1) if result.fires[1][k] > 0]
        assert sorted(result.children(0, int(j))) == expected
    summary = result.level_summary(0)
    both = sum(len(result.children(0, int(j))) == 2 for j in live_small)
    assert summary["split"] == both and summary["persisted"] == 0
    assert all(result.label[0][j] for j in live_small)
    fig = result.plot(roots=[int(live_small[0])])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts[-1].startswith(f"{live_small[0]}\n")  # the root is placed after its children
    assert result.to_json()["format"] == "gridlens.sae_splitting"


def test_row_store_epochs_and_resume():
    rows = torch.arange(40.0)[:, None].repeat(1, 3)
    store = RowStore(rows, batch_size=8, seed=2)
    epoch = torch.cat([next(store) for _ in range(5)])
    assert sorted(epoch[:, 0].tolist()) == list(range(40))
    state = store.state_dict()
    ahead = [next(store) for _ in range(3)]
    store.load_state_dict(state)
    for batch in ahead:
        torch.testing.assert_close(next(store), batch)


def test_train_family_sizes():
    rows = torch.randn(2048, 16, generator=torch.Generator().manual_seed(0))
    cfg = SAETrainConfig(tokens=2048, batch_size=512, warmup_steps=1, progress=False,
                         log_every=10**9, checkpoint_every=10**9, device="cpu")  # fmt: skip
    base = SAEConfig(16, 8, "topk", hook_name="s", k=4)
    family = train_family(rows, base, [8, 24], cfg)
    assert [s.cfg.d_sae for s in family] == [8, 24] and all(s.cfg.k == 4 for s in family)
    with pytest.raises(Exception, match="increasing"):
        train_family(rows, base, [24, 8], cfg)
