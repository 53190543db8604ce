"""run_with_cache accepts TransformerLens's keyword `names_filter` as well as `names`."""

import pytest
import torch

from gridlens.errors import ConfigError
from gridlens.models import GridGPT


def test_names_filter_is_an_alias_of_names():
    model = GridGPT("tiny", seed=0).eval()
    tokens = torch.randint(0, 11, (2, 404), generator=torch.Generator().manual_seed(0))
    tokens[:, ::101] = torch.tensor([11, 12, 13, 14])
    _, by_names = model.run_with_cache(tokens, names="blocks.1.hook_mlp_out")
    _, by_filter = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("mlp_out"))
    assert list(by_filter) == ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]
    assert torch.equal(by_names["blocks.1.hook_mlp_out"], by_filter["blocks.1.hook_mlp_out"])
    with pytest.raises(ConfigError, match="not both"):
        model.run_with_cache(tokens, names="hook_embed", names_filter="hook_embed")
