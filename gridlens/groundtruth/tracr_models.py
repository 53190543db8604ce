"""Tracr-compiled transformers as exact ground truth (optional extra ``tracr``).

Tracr (Lindner et al. 2023) compiles a RASP program into transformer weights whose residual
stream is a labelled basis: every direction is one value of one program variable (``hist:3``),
so what each head and MLP computes is known exactly. :func:`compile_program` compiles one of a
few library programs (needs ``pip install 'gridlens[tracr]'``: tracr-pypi, JAX, dm-haiku; CPU is
enough), :func:`from_tracr` imports the weights into :class:`TracrModel`, a hooked PyTorch model
with TransformerLens hook names, and :func:`save_tracr` / :func:`load_tracr` keep it as
safetensors + JSON so that nothing downstream needs JAX. The architecture is tracr's, not
GridGPT's: no LayerNorm, learned (compiled) positions, attention that is not causal unless
compiled so, ReLU MLPs, a linear readout onto the output variable's directions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from gridlens.errors import CheckpointError, ConfigError, GridlensError, unknown_name
from gridlens.models.hooks import ActivationCache, HookPoint, NameFilter, resolve_names

TRACR_FORMAT = "gridlens-tracr-1"
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "tracr"
_SITES = (
    "hook_resid_pre",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_pattern",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "mlp.hook_pre",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)


@dataclass
class TracrConfig:
    d_model: int
    n_layers: int
    n_heads: int
    d_head: int
    d_mlp: int
    n_ctx: int
    causal: bool
    residual_labels: list[str]  # one name per residual dimension, e.g. "hist:2"
    input_map: dict[str, int]  # input value (as text) -> token id; holds BOS (and pad)
    bos: str
    output: str  # the program's output variable
    output_values: list[str]  # class names (categorical) or [] (numerical: one output)


class TracrModel(nn.Module):
    """A compiled tracr transformer with TransformerLens-named hooks (``blocks.L.attn.hook_z``,
    per-head tensors [batch, pos, head, d]). ``forward`` returns the readout [batch, pos,
    n_out]: the output variable's residual directions (argmax = tracr's answer)."""

    def __init__(self, cfg: TracrConfig):
        super().__init__()
        self.cfg = cfg
        d, h, k, m = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp
        self.W_E = nn.Parameter(torch.zeros(len(cfg.input_map), d))
        self.W_pos = nn.Parameter(torch.zeros(cfg.n_ctx, d))
        shapes = {
            "W_Q": (h, d, k), "b_Q": (h, k), "W_K": (h, d, k), "b_K": (h, k),
            "W_V": (h, d, k), "b_V": (h, k), "W_O": (h, k, d), "b_O": (d,),
            "W_in": (d, m), "b_in": (m,), "W_out": (m, d), "b_out": (d,),
        }  # fmt: skip
        self.blocks = nn.ModuleList(
            nn.ParameterDict({n: nn.Parameter(torch.zeros(s)) for n, s in shapes.items()})
            for _ in range(cfg.n_layers)
        )
        n_out = max(1, len(cfg.output_values))
        self.register_buffer("W_U", torch.zeros(d, n_out))
        self.hook_names = ["hook_embed", "hook_pos_embed"] + [
            f"blocks.{layer}.{site}" for layer in range(cfg.n_layers) for site in _SITES
        ]

    def tokens(self, rows: Sequence[Sequence]) -> torch.Tensor:
        """Token ids [batch, pos] of input rows (values as tracr takes them, BOS first)."""
        try:
            return torch.tensor([[self.cfg.input_map[str(v)] for v in row] for row in rows])
        except KeyError as error:
            raise unknown_name(
                "tracr input value", str(error.args[0]), self.cfg.input_map
            ) from None

    def forward(self, tokens: torch.Tensor, fwd_hooks=()) -> torch.Tensor:
        active: dict[str, list[Callable]] = {}
        for selector, fn in fwd_hooks:
            for name in resolve_names(selector, self.hook_names):
                active.setdefault(name, []).append(fn)

        def site(name: str, x: torch.Tensor) -> torch.Tensor:
            for fn in active.get(name, ()):
                out = fn(x, HookPoint(name))
                x = x if out is None else out
            return x

        b, t = tokens.shape
        if t > self.cfg.n_ctx:
            raise ConfigError(f"tracr model takes at most {self.cfg.n_ctx} positions, got {t}")
        x = site("hook_embed", self.W_E[tokens]) + site("hook_pos_embed", self.W_pos[:t])[None]
        pad = self.cfg.input_map.get("compiler_pad")
        keep = torch.ones(b, 1, t, t, dtype=torch.bool)
        if pad is not None:
            keep = keep & (tokens != pad)[:, None, None, :]
        if self.cfg.causal:
            keep = keep & torch.ones(t, t, dtype=torch.bool).tril()
        for layer, w in enumerate(self.blocks):
            x = self._block(x, w, f"blocks.{layer}.", keep, site)
        return x @ self.W_U

    def _block(self, x, w, p: str, keep: torch.Tensor, site) -> torch.Tensor:
        x = site(p + "hook_resid_pre", x)
        q = site(p + "attn.hook_q", torch.einsum("bpd,hdk->bphk", x, w["W_Q"]) + w["b_Q"])
        k = site(p + "attn.hook_k", torch.einsum("bpd,hdk->bphk", x, w["W_K"]) + w["b_K"])
        v = site(p + "attn.hook_v", torch.einsum("bpd,hdk->bphk", x, w["W_V"]) + w["b_V"])
        scores = torch.einsum("bqhk,bshk->bhqs", q, k) / self.cfg.d_head**0.5
        pattern = site(p + "attn.hook_pattern", scores.masked_fill(~keep, -1e30).softmax(-1))
        z = site(p + "attn.hook_z", torch.einsum("bhqs,bshk->bqhk", pattern, v))
        attn = site(p + "hook_attn_out", torch.einsum("bqhk,hkd->bqd", z, w["W_O"]) + w["b_O"])
        x = site(p + "hook_resid_mid", x + attn)
        pre = site(p + "mlp.hook_pre", x @ w["W_in"] + w["b_in"])
        post = site(p + "mlp.hook_post", torch.relu(pre))
        x = x + site(p + "hook_mlp_out", post @ w["W_out"] + w["b_out"])
        return site(p + "hook_resid_post", x)

    def run_with_hooks(self, tokens: torch.Tensor, fwd_hooks=()) -> torch.Tensor:
        return self(tokens, fwd_hooks)

    def run_with_cache(
        self, tokens: torch.Tensor, names: NameFilter = None
    ) -> tuple[torch.Tensor, ActivationCache]:
        store: dict[str, torch.Tensor] = {}

        def record(x: torch.Tensor, hook: HookPoint) -> None:
            store[hook.name] = x.detach()

        chosen = resolve_names(names, self.hook_names)
        out = self(tokens, [(n, record) for n in chosen])
        return out, ActivationCache(
            {n: store[n] for n in self.hook_names if n in store}, self.hook_names
        )

    def decode(self, tokens: torch.Tensor) -> list[list]:
        """tracr's answer per position (class names, or floats for a numerical output)."""
        with torch.no_grad():
            out = self(tokens)
        if not self.cfg.output_values:
            return out[..., 0].tolist()
        return [[self.cfg.output_values[i] for i in row] for row in out.argmax(-1).tolist()]


# ----------------------------------------------------------------------------- import


def from_tracr(assembled, output: str) -> TracrModel:
    """Import an ``AssembledTransformerModel`` (``compile_rasp_to_model``'s result; ``output``
    is the program's label) into a :class:`TracrModel`. Needs only its numpy-convertible
    parameters and encoders, not a JAX call."""
    mc = assembled.model_config
    params = {k: {kk: np.asarray(vv) for kk, vv in v.items()} for k, v in assembled.params.items()}
    labels = list(assembled.residual_labels)
    enc = assembled.input_encoder.encoding_map
    out_enc = getattr(assembled.output_encoder, "encoding_map", None)
    values = [str(v) for v, _ in sorted(out_enc.items(), key=lambda kv: kv[1])] if out_enc else []
    pos = params["pos_embed"]["embeddings"]
    cfg = TracrConfig(
        d_model=len(labels),
        n_layers=mc.num_layers,
        n_heads=mc.num_heads,
        d_head=mc.key_size,
        d_mlp=mc.mlp_hidden_size,
        n_ctx=len(pos),
        causal=bool(mc.causal),
        residual_labels=labels,
        input_map={str(k): int(v) for k, v in enc.items()},
        bos=str(assembled.input_encoder.bos_token),
        output=output,
        output_values=values,
    )
    model = TracrModel(cfg)
    state = {"W_E": params["token_embed"]["embeddings"], "W_pos": pos}
    h, k = cfg.n_heads, cfg.d_head
    for layer in range(cfg.n_layers):
        a, m = f"transformer/layer_{layer}/attn/", f"transformer/layer_{layer}/mlp/"
        for name, key in (("Q", "query"), ("K", "key"), ("V", "value")):
            w, bias = params[a + key]["w"], params[a + key]["b"]
            state[f"blocks.{layer}.W_{name}"] = w.reshape(-1, h, k).transpose(1, 0, 2)
            state[f"blocks.{layer}.b_{name}"] = bias.reshape(h, k)
        state[f"blocks.{layer}.W_O"] = params[a + "linear"]["w"].reshape(h, k, -1)
        state[f"blocks.{layer}.b_O"] = params[a + "linear"]["b"]
        state[f"blocks.{layer}.W_in"] = params[m + "linear_1"]["w"]
        state[f"blocks.{layer}.b_in"] = params[m + "linear_1"]["b"]
        state[f"blocks.{layer}.W_out"] = params[m + "linear_2"]["w"]
        state[f"blocks.{layer}.b_out"] = params[m + "linear_2"]["b"]
    unembed = np.zeros((cfg.d_model, max(1, len(values))), dtype=np.float32)
    outs = [f"{output}:{v}" for v in values] if values else [output]
    for j, name in enumerate(outs):
        unembed[labels.index(name), j] = 1.0
    state["W_U"] = unembed
    model.load_state_dict(
        {k: torch.tensor(np.array(v, dtype=np.float32)) for k, v in state.items()}
    )
    return model.eval()


# ----------------------------------------------------------------------------- programs


def _programs() -> dict[str, Callable[[], tuple]]:
    """name -> () -> (program, vocab, max_seq_len); tracr imported lazily."""
    from tracr.compiler import lib
    from tracr.rasp import rasp

    return {
        "reverse": lambda: (lib.make_reverse(rasp.tokens).named("reverse"), {"a", "b", "c"}, 5),
        "hist": lambda: (lib.make_hist().named("hist"), {"a", "b", "c"}, 5),
        "sort_unique": lambda: (
            lib.make_sort_unique(rasp.tokens, rasp.tokens).named("sort"),
            {1, 2, 3, 4},
            4,
        ),
        "frac_prevs": lambda: (
            lib.make_frac_prevs(rasp.tokens == "x").named("frac_prevs"),
            {"x", "y"},
            5,
        ),
    }


PROGRAMS = ("reverse", "hist", "sort_unique", "frac_prevs")


def compile_program(name: str):
    """(AssembledTransformerModel, TracrModel) for one of :data:`PROGRAMS` (about 30 s)."""
    if name not in PROGRAMS:
        raise unknown_name("tracr program", name, PROGRAMS)
    try:
        from tracr.compiler import compiling
    except ImportError:
        raise GridlensError(
            "tracr is not installed: pip install 'gridlens[tracr]' (tracr-pypi, JAX, dm-haiku)"
        ) from None
    program, vocab, max_len = _programs()[name]()
    assembled = compiling.compile_rasp_to_model(
        program, vocab=vocab, max_seq_len=max_len, compiler_bos="BOS"
    )
    return assembled, from_tracr(assembled, program.label)


# ----------------------------------------------------------------------------- files


def save_tracr(model: TracrModel, folder: Path, examples: dict | None = None) -> None:
    """``model.safetensors`` + ``config.json`` (with tracr's own answers on ``examples``)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors"
    )
    meta = {"format": TRACR_FORMAT, "config": asdict(model.cfg), "examples": examples or {}}
    (folder / "config.json").write_text(json.dumps(meta, indent=1) + "\n")


def load_tracr(folder: Path) -> tuple[TracrModel, dict]:
    """(model, examples) from a folder written by :func:`save_tracr`."""
    from safetensors.torch import load_file

    meta_file = Path(folder) / "config.json"
    if not meta_file.is_file():
        raise CheckpointError(f"{meta_file}: not found (expected a saved tracr model)")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != TRACR_FORMAT:
        raise CheckpointError(f"{meta_file}: field 'format' is not {TRACR_FORMAT!r}")
    model = TracrModel(TracrConfig(**meta["config"]))
    model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))
    return model.eval(), meta["examples"]


def resolve_tracr(name: str | Path) -> Path:
    """A saved tracr model's folder: ``name`` itself if it exists, else the shipped program."""
    path = Path(name)
    if path.exists():
        return path
    if str(name) not in PROGRAMS:
        raise unknown_name("tracr model (folder or shipped program)", str(name), PROGRAMS)
    return SHIPPED_DIR / str(name)
