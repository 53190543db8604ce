"""Crosscoders: one sparse dictionary read from several activation sources at once.

A source is a (model, hook) pair. Several layers of one model give a cross-layer crosscoder;
the same site in several models (members of a culture population, say) gives a model-diffing
crosscoder (Lindsey et al., "Sparse Crosscoders for Cross-Layer Features and Model Diffing",
2024). Latent i has an encoder and a decoder vector for each source s:

    f      = act(sum_s (c_s x_s - b_dec_s) @ W_enc[s] + b_enc)        act: relu or topk
    x_hat_s = (f @ W_dec[:, s] + b_dec_s) / c_s

where c_s scales source s to a mean squared norm of d_in (so a layer with a larger residual norm
does not dominate the loss or the decoder norms). Training minimises the reconstruction error
summed over sources plus, for relu, l1 * sum_i f_i * sum_s |W_dec[i, s]| (the penalty that lets a
latent drop the sources it does not need).

Where a latent writes is read from its decoder norms: share[i, s] = |W_dec[i, s]| / sum_s'
|W_dec[i, s']|. With two models, a latent whose shares are both >= 0.1 is shared; one whose share
in a model is >= 0.9 is specific to it. The fraction of live latents that are shared is the
universality question of the culture investigation, measured.

Saved in gridlens's own format (SAELens has no crosscoder): `crosscoder.safetensors`
(checksummed; its metadata holds the config) in an output directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from gridlens.errors import CheckpointError, ConfigError
from gridlens.integrity import seal_safetensors, verify_safetensors
from gridlens.io import atomic_write
from gridlens.plotting import finish, pyplot

CROSSCODER_FILE = "crosscoder.safetensors"
FORMAT_NAME = "gridlens.crosscoder"
ARCHITECTURES = ("relu", "topk")
SHARED_FLOOR = 0.1  # a latent is shared when every source's decoder share is at least this
SPECIFIC_SHARE = 0.9  # ... and specific to a source whose share is at least this


@dataclass(frozen=True)
class CrosscoderConfig:
    """The dictionary's shape; `sources` names each source, e.g. "a:blocks.1.hook_resid_post"."""

    sources: tuple[str, ...]
    d_in: int
    d_sae: int
    architecture: str = "relu"
    k: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        if len(self.sources) < 2:
            raise ConfigError(f"a crosscoder needs >= 2 sources, got {len(self.sources)}")
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"crosscoder architecture must be one of {ARCHITECTURES}")
        if self.d_in < 1 or self.d_sae < 1:
            raise ConfigError(f"d_in and d_sae must be >= 1, got {self.d_in}, {self.d_sae}")
        if self.architecture == "topk" and not 1 <= self.k <= self.d_sae:
            raise ConfigError(f"k must lie in [1, d_sae={self.d_sae}], got {self.k}")

    @property
    def n_sources(self) -> int:
        return len(self.sources)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CrosscoderConfig:
        known = {f.name for f in fields(cls)}
        if set(data) - known:
            raise ConfigError(f"unknown crosscoder config fields {sorted(set(data) - known)}")
        return cls(**data)


class Crosscoder(nn.Module):
    """Encoders W_enc [S, d_in, d_sae], decoders W_dec [d_sae, S, d_in], per-source scales."""

    def __init__(self, cfg: CrosscoderConfig, seed: int = 0, init_norm: float = 0.1):
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(seed)
        s, d, m = cfg.n_sources, cfg.d_in, cfg.d_sae
        dec = torch.randn(m, s, d, generator=g)
        dec *= init_norm / dec.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(dec)
        self.W_enc = nn.Parameter(dec.permute(1, 2, 0).clone())
        self.b_enc = nn.Parameter(torch.zeros(m))
        self.b_dec = nn.Parameter(torch.zeros(s, d))
        self.register_buffer("scales", torch.ones(s))

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """x [n, S, d_in] in the sources' own units -> encoder pre-activations [n, d_sae]."""
        if x.ndim != 3 or x.shape[1:] != self.b_dec.shape:
            raise ConfigError(
                f"crosscoder input must be [n, {self.cfg.n_sources}, "
                f"{self.cfg.d_in}], got {list(x.shape)}"
            )
        centred = x * self.scales[:, None] - self.b_dec
        return torch.einsum("nsd,sdm->nm", centred, self.W_enc) + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        acts = torch.relu(self.pre_activation(x))
        if self.cfg.architecture == "topk":
            top = acts.topk(self.cfg.k, dim=-1)
            acts = torch.zeros_like(acts).scatter(-1, top.indices, top.values)
        return acts

    def decode_scaled(self, latents: torch.Tensor) -> torch.Tensor:
        """Reconstruction in the scaled units training works in, [n, S, d_in]."""
        return torch.einsum("nm,msd->nsd", latents, self.W_dec) + self.b_dec

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decode_scaled(latents) / self.scales[:, None]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latents = self.encode(x)
        return self.decode(latents), latents

    def decoder_norms(self) -> torch.Tensor:
        """|W_dec[i, s]| in scaled units, [d_sae, S]."""
        return self.W_dec.detach().norm(dim=-1)

    def shares(self) -> torch.Tensor:
        """Each latent's decoder norm per source as a share of its total, [d_sae, S]."""
        norms = self.decoder_norms()
        return norms / norms.sum(-1, keepdim=True).clamp_min(1e-12)


def source_scales(x: torch.Tensor) -> torch.Tensor:
    """Per-source factors c_s giving rows of mean squared norm d_in (x: [n, S, d_in])."""
    mean_sq = x.pow(2).sum(-1).mean(0)
    return (x.shape[-1] / mean_sq.clamp_min(1e-12)).sqrt()


def explained_variance(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Per source: 1 - |x - recon|^2 / |x - mean x|^2 over the rows, [S]."""
    residual = (x - recon).pow(2).sum((0, 2))
    total = (x - x.mean(0)).pow(2).sum((0, 2)).clamp_min(1e-12)
    return 1 - residual / total


def crosscoder_loss(
    cc: Crosscoder, x: torch.Tensor, l1: float
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """The training loss on a batch x [n, S, d_in] (sources' own units), its parts, latents."""
    scaled = x * cc.scales[:, None]
    latents = cc.encode(x)
    mse = (cc.decode_scaled(latents) - scaled).pow(2).sum((1, 2)).mean()
    sparsity = (latents * cc.W_dec.norm(dim=-1).sum(-1)).sum(-1).mean()
    loss = mse + (l1 * sparsity if cc.cfg.architecture == "relu" else 0.0)
    parts = {
        "mse": mse.item(),
        "sparsity": sparsity.item(),
        "l0": float((latents > 0).sum(-1).float().mean()),
    }
    return loss, parts, latents


# --------------------------------------------------------------------------- activations


def paired_activations(
    sources: Sequence[tuple[Any, str]],
    tokens: torch.Tensor,
    positions: str = "grid",
    batch_size: int = 64,
) -> torch.Tensor:
    """Every source's activations on the same quizzes and positions, [rows, S, d_in]; each
    model runs once per batch, up to the deepest of its sites."""
    from gridlens.sae.activations import check_site, position_mask

    mask = position_mask(positions, tokens.shape[1])
    models = {id(model): model for model, _ in sources}
    rows: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(sources))}
    for key, model in models.items():
        mine = [i for i, (m, _) in enumerate(sources) if id(m) == key]
        hooks = [sources[i][1] for i in mine]
        stop = max(check_site(model, hook) for hook in hooks)
        chunk_tokens = model.check_tokens(tokens.to(model.device))
        with torch.no_grad():
            for lo in range(0, len(tokens), batch_size):
                chunk = chunk_tokens[lo : lo + batch_size]
                _, cache = model.run_with_cache(chunk, names=hooks, stop_at_layer=stop)
                for i, hook in zip(mine, hooks, strict=True):
                    act = cache[hook][:, mask.to(model.device)]
                    rows[i].append(act.reshape(-1, act[0, 0].numel()).float().cpu())
    acts = [torch.cat(rows[i]) for i in range(len(sources))]
    widths = {a.shape[-1] for a in acts}
    if len(widths) != 1:
        raise ConfigError(f"crosscoder sources must have one width, got {sorted(widths)}")
    return torch.stack(acts, 1)


class PairedStream:
    """An endless iterator of shuffled [batch_size, S, d_in] batches: each refill generates
    `chunk_quizzes` fresh quizzes of `grid` (height, width) cells, from (seed, chunk) alone, and
    runs every source on them."""

    def __init__(
        self,
        sources: Sequence[tuple[Any, str]],
        tasks: str | Sequence[str] = "default",
        positions: str = "grid",
        batch_size: int = 1024,
        chunk_quizzes: int = 64,
        seed: int = 0,
        grid: tuple[int, int] = (10, 10),
    ):
        if batch_size < 1 or chunk_quizzes < 1:
            raise ConfigError(
                f"batch_size and chunk_quizzes must be >= 1: {batch_size}, {chunk_quizzes}"
            )
        self.sources, self.tasks, self.positions = list(sources), tasks, positions
        self.batch_size, self.chunk_quizzes, self.seed = batch_size, chunk_quizzes, seed
        self.height, self.width = grid
        self.generator = torch.Generator().manual_seed(seed)
        self.buffer = torch.empty(0)
        self.chunks = 0

    def _refill(self) -> None:
        from gridlens.world import generate

        rng = np.random.default_rng(np.random.SeedSequence([0x63726F73, self.seed, self.chunks]))
        batch = generate(
            self.tasks, self.chunk_quizzes, rng, "mix", height=self.height, width=self.width
        )
        fresh = paired_activations(self.sources, batch.tokens, self.positions)
        self.chunks += 1
        rows = torch.cat([self.buffer, fresh]) if len(self.buffer) else fresh
        self.buffer = rows[torch.randperm(len(rows), generator=self.generator)]

    def __iter__(self) -> PairedStream:
        return self

    def __next__(self) -> torch.Tensor:
        while len(self.buffer) < self.batch_size:
            self._refill()
        batch, self.buffer = self.buffer[: self.batch_size], self.buffer[self.batch_size :]
        return batch


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class CrosscoderTrainConfig:
    steps: int = 2000
    lr: float = 1e-3
    l1: float = 2.0  # relu only; in scaled units, so one value suits sites of any norm
    warmup_steps: int = 100  # learning rate and l1 both rise linearly over these
    decay_start: float = 0.8  # the learning rate falls linearly to 0 after this share of steps
    dead_window: int = 500  # a latent that fired in none of the last steps' batches is dead
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.l1 < 0 or self.warmup_steps < 0:
            raise ConfigError(f"invalid crosscoder training settings: {self}")

    def schedule(self, step: int) -> tuple[float, float]:
        """(learning rate, l1 coefficient) at `step`."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        start = int(self.decay_start * self.steps)
        decay = 1.0 if step < start else max(0.0, (self.steps - step) / (self.steps - start))
        return self.lr * warm * decay, self.l1 * warm


def initialise(cc: Crosscoder, first: torch.Tensor) -> None:
    """Source scales and b_dec (the mean scaled row) from a first batch."""
    with torch.no_grad():
        cc.scales.copy_(source_scales(first))
        cc.b_dec.copy_((first * cc.scales[:, None]).mean(0))


def train_crosscoder(
    batches: Iterator[torch.Tensor],
    cfg: CrosscoderConfig,
    train: CrosscoderTrainConfig = CrosscoderTrainConfig(),
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[Crosscoder, dict[str, Any]]:
    """Train a crosscoder on batches [n, S, d_in]; returns it and a summary measured on a
    held-out batch (explained variance per source, L0, dead latents, sharing)."""
    from tqdm.auto import tqdm

    cc = Crosscoder(cfg, seed=train.seed).to(device)
    first = next(batches).to(device)
    initialise(cc, first)
    optimizer = torch.optim.Adam(cc.parameters(), lr=train.lr, betas=(0.9, 0.999))
    last_fired = torch.full((cfg.d_sae,), -1, device=device)
    bar = tqdm(range(train.steps), desc="crosscoder", disable=not progress, leave=False)
    for step in bar:
        x = first if step == 0 else next(batches).to(device)
        lr, l1 = train.schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, parts, latents = crosscoder_loss(cc, x, l1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        last_fired[(latents > 0).any(0)] = step
        if step % 50 == 0:
            bar.set_postfix(mse=f"{parts['mse']:.3g}", l0=f"{parts['l0']:.1f}")
    alive = last_fired >= train.steps - train.dead_window
    return cc.cpu(), evaluate(cc.cpu(), next(batches), alive.cpu())


@torch.no_grad()
def evaluate(cc: Crosscoder, x: torch.Tensor, alive: torch.Tensor) -> dict[str, Any]:
    recon, latents = cc(x)
    ev = explained_variance(x, recon)
    return {
        "explained_variance": dict(zip(cc.cfg.sources, ev.tolist(), strict=True)),
        "l0": float((latents > 0).sum(-1).float().mean()),
        "dead_fraction": float(1 - alive.float().mean()),
        "live_latent_indices": alive.nonzero().flatten().tolist(),
        "sharing": Sharing.of(cc, alive).to_json(),
    }


# --------------------------------------------------------------------------- sharing


@dataclass
class Sharing:
    """Where each live latent writes: its decoder shares per source and their classes."""

    sources: tuple[str, ...]
    shares: np.ndarray  # [live latents, S]
    latent: np.ndarray  # the live latents' indices in the dictionary
    cosine: np.ndarray  # [live latents]: mean cosine between the sources' decoder directions

    @classmethod
    def of(cls, cc: Crosscoder, alive: torch.Tensor) -> Sharing:
        keep = alive.nonzero().flatten()
        dec = cc.W_dec.detach()[keep]  # [live, S, d]
        unit = dec / dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        s = cc.cfg.n_sources
        cos = (torch.einsum("msd,mtd->mst", unit, unit).sum((1, 2)) - s) / (s * (s - 1))
        return cls(cc.cfg.sources, cc.shares()[keep].numpy(), keep.numpy(), cos.numpy())

    def shared(self) -> np.ndarray:
        return (self.shares >= SHARED_FLOOR).all(1)

    def specific(self) -> np.ndarray:
        """[live, S]: latent specific to source s."""
        return self.shares >= SPECIFIC_SHARE

    def to_json(self) -> dict[str, Any]:
        n = max(len(self.latent), 1)
        shared, specific = self.shared(), self.specific()
        return {
            "live_latents": len(self.latent),
            "shared_fraction": float(shared.sum() / n),
            "specific_fraction": dict(
                zip(self.sources, (specific.sum(0) / n).tolist(), strict=True)
            ),
            "partial_fraction": float(1 - (shared.sum() + specific.any(1).sum()) / n),
            "shared_decoder_cosine_median": (
                float(np.median(self.cosine[shared])) if shared.any() else None
            ),
            "thresholds": {"shared_floor": SHARED_FLOOR, "specific_share": SPECIFIC_SHARE},
        }

    def plot(self, path: str | Path | None = None):
        """Two sources: a histogram of the second source's share. More: latents (rows, by
        strongest source) x sources, coloured by share."""
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        if len(self.sources) == 2:
            ax.hist(self.shares[:, 1], bins=np.linspace(0, 1, 41), color="#4477aa")
            for edge in (1 - SPECIFIC_SHARE, SHARED_FLOOR, 1 - SHARED_FLOOR, SPECIFIC_SHARE):
                ax.axvline(edge, color="grey", lw=0.8, ls=":")
            ax.set_xlabel(f"decoder norm share of {self.sources[1]}  (0: only {self.sources[0]})")
            ax.set_ylabel("live latents")
        else:
            order = np.lexsort((-self.shares.max(1), self.shares.argmax(1)))
            image = ax.imshow(
                self.shares[order],
                aspect="auto",
                cmap="viridis",
                vmin=0,
                vmax=1,
                interpolation="nearest",
            )
            ax.set_xticks(range(len(self.sources)), self.sources, rotation=20, ha="right")
            ax.set_ylabel("live latents (by strongest source)")
            fig.colorbar(image, ax=ax, label="decoder norm share")
        summary = self.to_json()
        ax.set_title(
            f"{summary['live_latents']} live latents: {summary['shared_fraction']:.0%} shared",
            fontsize=10,
        )
        fig.tight_layout()
        return finish(fig, path)


# --------------------------------------------------------------------------- files


def save_crosscoder(
    cc: Crosscoder, path: str | Path, summary: dict[str, Any] | None = None
) -> Path:
    """Write `crosscoder.safetensors` (checksummed, config in its metadata) into `path`."""
    meta = {
        "format": FORMAT_NAME,
        "config": json.dumps(asdict(cc.cfg)),
        "summary": json.dumps(summary or {}),
    }
    state = {name: t.detach().contiguous().cpu() for name, t in cc.state_dict().items()}
    blob = seal_safetensors(state, meta)
    return atomic_write(Path(path) / CROSSCODER_FILE, lambda handle: handle.write(blob))


def load_crosscoder(path: str | Path) -> Crosscoder:
    """A crosscoder saved by `save_crosscoder` (a directory or the file itself)."""
    from safetensors import safe_open

    path = Path(path)
    file = path / CROSSCODER_FILE if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"{path}: no {CROSSCODER_FILE} here")
    verify_safetensors(file)
    try:
        with safe_open(str(file), framework="pt") as handle:
            meta = handle.metadata() or {}
            state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors raises its own error types for damaged headers
        raise CheckpointError(f"{file}: not a readable safetensors file ({error})") from error
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{file}: not a gridlens crosscoder (format {meta.get('format')!r})")
    cc = Crosscoder(CrosscoderConfig.from_dict(json.loads(meta["config"])))
    expected = {name: tuple(t.shape) for name, t in cc.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if found != expected:
        raise CheckpointError(f"{file}: tensors {found} do not match its config {expected}")
    cc.load_state_dict(state)
    return cc
