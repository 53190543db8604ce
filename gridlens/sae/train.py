"""Training sparse autoencoders on activations streamed from a model.

Losses (per row, summed over d_in, averaged over the batch, on normalised activations):
    relu:            MSE + l1_coefficient * sum_i f_i * ||W_dec_i||    (L1 warmed up linearly)
    gated:           MSE + l1_coefficient * L1 of the gate + its auxiliary loss (gated.py)
    topk, batchtopk: MSE + aux_coefficient * AuxK                      (Gao et al. 2024)
    jumprelu:        MSE + l0_coefficient * sum_i H(pre_i - threshold_i) (via model.jump_step)
AuxK: the k_aux largest pre-activations among dead latents reconstruct the residual x - x_hat
(detached), scaled by min(dead / k_aux, 1) as SAELens does, so dead latents get gradients.
Ghost grads (`ghost_grads`, any architecture; for TopK/BatchTopK it replaces AuxK): see
`ghost_grads_loss`.
Transcoders (gridlens.sae.transcoder) train here too: their store yields the input site's
and the target site's rows side by side, the losses above compare the prediction with the
target instead of the input, and each site gets its own normalising scale (`target_scale`).
Except for relu, decoder rows are kept at unit norm (the gradient's radial part is removed
before each step, the rows renormalised after it).

Input normalisation: activations are multiplied by s = sqrt(d_in / E||x||^2), estimated on the
store's first buffer, so E||x_scaled||^2 = d_in whatever the site (SAELens's
"expected_average_only_in"); hyper-parameters then transfer between sites. The returned and
saved SAE has s folded into its weights (W_enc * s, W_dec / s, b_dec / s; pre-activations and
thresholds unchanged), so it reads and writes activations in model units; s is recorded in
training.json. Checkpoints hold the unfolded weights.

An output directory holds:
    cfg.json, sae_weights.safetensors   the SAE (gridlens.sae.io.save_sae; SAELens's format)
    training.json                       both configs, the scale, final metrics, speeds
    log.jsonl                           one JSON object per logged step
    checkpoints/step_NNNNNNNN.pt        the newest few training states (atomic)
A resumed run ends with the same weights as an uninterrupted one: the checkpoint holds the
SAE, the optimiser, the activation store (its unread buffer, chunk count and shuffling
generator), the dead-latent counters, the scale and the batchtopk threshold statistics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gridlens.errors import CheckpointError, ConfigError, unknown_name
from gridlens.io import atomic_write
from gridlens.sae.activations import ActivationStore, site_width
from gridlens.sae.cache import ActivationCache, CachedStore
from gridlens.sae.gated import GatedSAE, build_sae, gated_latents, sparse_gated_terms
from gridlens.sae.model import SAEConfig, SparseAutoencoder, jump_step
from gridlens.sae.sparse import batch_topk_encode, sparse_decode, topk_encode
from gridlens.sae.transcoder import Transcoder, TranscoderConfig, fold_transcoder_scales
from gridlens.sae.transcoder_io import save_transcoder
from gridlens.training import checkpoint as ckpt
from gridlens.training import distributed as dd
from gridlens.training.trainer import resolve_device

LOG_FILE = "log.jsonl"
TRAINING_FILE = "training.json"
DECAYS = ("linear", "cosine", "constant")
DTYPES = ("auto", "float32", "bfloat16")
GHOST_GRADS = ("off", "original", "improved")
# Fields that may change between a checkpoint and its resumed run without changing the result.
RESUME_FREE_FIELDS = frozenset(
    {
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "device",
        "progress",
        "model_batch",
        "extra",
    }
)


@dataclass(frozen=True)
class SAETrainConfig:
    """Everything about an SAE's training except its shape (SAEConfig) and the model."""

    tokens: int = 2_000_000  # activation rows seen in training
    batch_size: int = 4096
    lr: float = 1e-3
    warmup_steps: int = 50
    decay: str = "linear"  # over the last decay_fraction of the steps, to min_lr_ratio * lr
    decay_fraction: float = 0.3
    min_lr_ratio: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    l1_coefficient: float = 5.0  # relu
    l0_coefficient: float = 1.0  # jumprelu
    sparsity_warmup_steps: int = 100  # L1 / L0 coefficient ramps up linearly over these
    aux_k: int | None = None  # topk/batchtopk: dead latents used by AuxK (None: d_in // 2)
    aux_coefficient: float = 1.0  # SAELens's default (Gao et al. use 1/32 of a normalised MSE)
    dead_after_tokens: int = 100_000  # a latent not fired for this many rows is dead
    resample_every: int = 0  # relu: reinitialise dead latents every this many steps (0: off)
    ghost_grads: str = "off"  # "original" (Anthropic, Jan 2024) or "improved" (GDM 2024)
    threshold_fraction: float = 0.25  # batchtopk: threshold averaged over this last share
    b_dec_init: str = "geometric_median"  # or "mean" or "zeros"
    normalize_activations: bool = True
    # the activation stream
    tasks: tuple[str, ...] | str = "default"
    positions: str = "grid"
    structure: str = "mix"
    noise: float = 0.0
    buffer_quizzes: int = 512
    model_batch: int = 128
    seed: int = 0
    cache: str | None = None  # read activations from this cache (gridlens.sae.cache) instead
    # running
    device: str = "auto"
    dtype: str = "auto"  # autocast of the model forward: bf16 by default on CUDA
    log_every: int = 20
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tokens < self.batch_size or self.batch_size < 1:
            raise ConfigError(
                f"tokens ({self.tokens}) must be >= batch_size ({self.batch_size}) >= 1"
            )
        if self.decay not in DECAYS:
            raise unknown_name("lr decay", self.decay, DECAYS)
        if self.dtype not in DTYPES:
            raise unknown_name("dtype", self.dtype, DTYPES)
        if self.b_dec_init not in ("geometric_median", "mean", "zeros"):
            raise unknown_name("b_dec init", self.b_dec_init, ("geometric_median", "mean", "zeros"))
        if not 0 <= self.decay_fraction <= 1 or not 0 < self.threshold_fraction <= 1:
            raise ConfigError("decay_fraction must lie in [0, 1] and threshold_fraction in (0, 1]")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.ghost_grads not in GHOST_GRADS:
            raise unknown_name("ghost grads variant", self.ghost_grads, GHOST_GRADS)

    @property
    def steps(self) -> int:
        return self.tokens // self.batch_size

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["tasks"] = self.tasks if isinstance(self.tasks, str) else list(self.tasks)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAETrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown SAE training fields {unknown}; known: {sorted(known)}")
        data = dict(data)
        if isinstance(data.get("tasks"), list):
            data["tasks"] = tuple(data["tasks"])
        return cls(**data)

    def replace(self, **changes: Any) -> SAETrainConfig:
        return dataclasses.replace(self, **changes)


def lr_at(cfg: SAETrainConfig, step: int) -> float:
    """Linear warm-up, constant, then decay over the last decay_fraction of the steps."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = int(cfg.steps * cfg.decay_fraction)
    start = cfg.steps - decay_steps
    if cfg.decay == "constant" or decay_steps == 0 or step < start:
        return cfg.lr
    progress = min(1.0, (step - start) / decay_steps)
    shape = 1 - progress if cfg.decay == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape)


def geometric_median(x: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of distances to the rows of x."""
    median = x.mean(0)
    for _ in range(iterations):
        weights = 1 / (x - median).norm(dim=1).clamp_min(1e-8)
        median = (weights[:, None] * x).sum(0) / weights.sum()
    return median


def explained_variance(x: torch.Tensor, recon: torch.Tensor) -> float:
    """Batch-level: 1 - sum||x - x_hat||^2 / sum||x - mean(x)||^2."""
    residual = (x - recon).pow(2).sum()
    total = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
    return float(1 - residual / total)


@dataclass
class StepResult:
    """What one training step measured (loss terms as tensors, to read once per log)."""

    total: torch.Tensor
    mse: torch.Tensor
    sparsity: torch.Tensor  # the penalty or auxiliary term, before its coefficient
    recon: torch.Tensor  # [rows, d_in], detached
    l0: torch.Tensor  # mean active latents per row
    fired: torch.Tensor  # bool [d_sae]: latents active on some row of the batch
    min_active: torch.Tensor | None  # batchtopk: the smallest positive activation kept
    ghost: torch.Tensor | None = None  # the ghost grads term, when on


def sae_losses(
    sae: SparseAutoencoder,
    x: torch.Tensor,
    cfg: SAETrainConfig,
    dead: torch.Tensor | None,
    sparsity_scale: float = 1.0,
    target: torch.Tensor | None = None,
) -> StepResult:
    """The training loss of one batch of (normalised) activations. TopK and BatchTopK use the
    sparse kernels of gridlens.sae.sparse (work proportional to the active latents), and so
    does a gated SAE once few of its gates open.
    target: what to reconstruct (a transcoder's output site; default x itself)."""
    target = x if target is None else target
    skip = sae.skip_out(x) if isinstance(sae, Transcoder) else 0.0
    arch = sae.cfg.architecture
    min_active = None
    if arch in ("topk", "batchtopk"):
        recon, values, index = _topk_decode(sae, x)
        recon = recon + skip
        l0, fired = _sparse_activity(values, index, sae.cfg.d_sae, x.shape[0])
        positive = values.detach()[values.detach() > 0]
        if arch == "batchtopk" and positive.numel():
            min_active = positive.min()
        mse = (recon - target).pow(2).sum(-1).mean()
        use_ghost = cfg.ghost_grads != "off"
        sparsity = (
            x.new_zeros(()) if use_ghost else aux_k_loss(sae, x, recon, dead, cfg.aux_k, target)
        )
        total = mse + cfg.aux_coefficient * sparsity
    else:
        sparse = sparse_gated_terms(sae, x) if isinstance(sae, GatedSAE) else None
        if sparse is not None:
            recon, sparsity, aux, values, index = sparse
            coefficient = cfg.l1_coefficient
            l0, fired = _sparse_activity(values, index, sae.cfg.d_sae, x.shape[0])
        else:
            latents, sparsity, coefficient, aux = _dense_terms(sae, x, cfg)
            recon = sae.decode(latents)
            active = latents.detach() > 0
            l0, fired = active.sum(-1).float().mean(), active.any(0)
        recon = recon + skip
        mse = (recon - target).pow(2).sum(-1).mean()
        total = mse + coefficient * sparsity_scale * sparsity + aux
    result = StepResult(total, mse, sparsity.detach(), recon.detach(), l0, fired, min_active)
    if cfg.ghost_grads != "off":
        ghost = ghost_grads_loss(sae, x, recon, mse, dead, cfg.ghost_grads, target)
        result.total, result.ghost = total + ghost, ghost.detach()
    return result


def _topk_decode(sae: SparseAutoencoder, x: torch.Tensor):
    """TopK / BatchTopK through the sparse kernels: (reconstruction, values, indices)."""
    if sae.cfg.architecture == "topk":
        values, index = topk_encode(x, sae.W_enc, sae.b_enc, sae.b_in, sae.cfg.k)
        return sparse_decode(values, index, sae.W_dec, sae.b_dec), values, index
    values, index, offsets = batch_topk_encode(x, sae.W_enc, sae.b_enc, sae.b_in, sae.cfg.k)
    return sparse_decode(values, index, sae.W_dec, sae.b_dec, offsets), values, index


def _sparse_activity(values: torch.Tensor, index: torch.Tensor, d_sae: int, n_rows: int):
    """(mean active latents per row, bool [d_sae] fired) of latents held as (values, indices)."""
    positive = values.detach().reshape(-1) > 0
    fired = torch.bincount(index.reshape(-1)[positive], minlength=d_sae) > 0
    return positive.sum() / n_rows, fired


def _dense_terms(
    sae: SparseAutoencoder, x: torch.Tensor, cfg: SAETrainConfig
) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
    """relu, jumprelu, gated: (latents, sparsity penalty, its coefficient, auxiliary loss)."""
    arch = sae.cfg.architecture
    if arch == "gated":  # L1 on the gate's relu, and the gate's frozen-decoder reconstruction
        pi_gate, pi_mag = sae.gate_and_magnitude(x)
        sparsity = (torch.relu(pi_gate) * sae.W_dec.norm(dim=1)).sum(-1).mean()
        aux = sae.auxiliary_loss(x, pi_gate)
        return gated_latents(pi_gate, pi_mag), sparsity, cfg.l1_coefficient, aux
    pre = sae.pre_activation(x)
    if arch == "relu":
        latents = torch.relu(pre)
        sparsity = (latents * sae.W_dec.norm(dim=1)).sum(-1).mean()
        return latents, sparsity, cfg.l1_coefficient, x.new_zeros(())
    # jumprelu, with its straight-through threshold gradient
    sparsity = jump_step(pre, sae.threshold, sae.cfg.jumprelu_bandwidth).sum(-1).mean()
    return sae.activate(pre), sparsity, cfg.l0_coefficient, x.new_zeros(())


def ghost_grads_loss(
    sae: SparseAutoencoder,
    x: torch.Tensor,
    recon: torch.Tensor,
    mse: torch.Tensor,
    dead: torch.Tensor | None,
    variant: str = "improved",
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ghost grads (Jermyn & Templeton, Anthropic's January 2024 update): the dead latents,
    with exp instead of their activation function, reconstruct the residual x - x_hat (detached);
    their output is rescaled (constant) to half the residual's norm and the loss (constant) to
    equal the MSE. "improved" (Google DeepMind's 2024 variant) multiplies it by the share of
    dead latents and uses exp(min(pre, 0)) against divergence from falsely dead latents. b_dec
    enters detached, so only the dead latents' encoder columns, biases and decoder rows get
    gradients. Zero when nothing is dead."""
    dead_index = dead.nonzero().flatten() if dead is not None else None
    if dead_index is None or len(dead_index) == 0:
        return x.new_zeros(())
    bias = sae.b_gate if sae.cfg.architecture == "gated" else sae.b_enc  # what decides firing
    pre = (x - sae.b_in.detach()) @ sae.W_enc[:, dead_index] + bias[dead_index]
    ghost = torch.exp(pre if variant == "original" else pre.clamp_max(0.0)) @ sae.W_dec[dead_index]
    residual = ((x if target is None else target) - recon).detach()
    scale = residual.norm(dim=-1) / (2 * ghost.norm(dim=-1) + 1e-6)
    loss = (ghost * scale[:, None].detach() - residual).pow(2).sum(-1).mean()
    loss = loss * (mse.detach() / (loss.detach() + 1e-6))
    if variant == "improved":
        loss = loss * (len(dead_index) / sae.cfg.d_sae)
    return loss


def aux_k_loss(
    sae: SparseAutoencoder,
    x: torch.Tensor,
    recon: torch.Tensor,
    dead: torch.Tensor | None,
    aux_k: int | None,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """AuxK: the dead latents with the k_aux largest pre-activations reconstruct the residual
    x - x_hat (detached) with those pre-activations as they are (no ReLU, as SAELens: a latent
    whose pre-activation went negative still gets a gradient); scaled by min(dead / k_aux, 1).
    Zero when nothing is dead. Only the dead latents' pre-activations are computed."""
    dead_index = dead.nonzero().flatten() if dead is not None else None
    if dead_index is None or len(dead_index) == 0:
        return x.new_zeros(())
    n_dead = len(dead_index)
    k_aux = aux_k if aux_k is not None else max(1, x.shape[-1] // 2)
    scale = min(n_dead / k_aux, 1.0)
    pre = (x - sae.b_in) @ sae.W_enc[:, dead_index] + sae.b_enc[dead_index]
    values, index = pre.topk(min(k_aux, n_dead), dim=-1)
    aux = sparse_decode(values, index, sae.W_dec[dead_index], torch.zeros_like(sae.b_dec))
    residual = ((x if target is None else target) - recon).detach()
    return scale * (aux - residual).pow(2).sum(-1).mean()


def train_step(
    sae: SparseAutoencoder,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    cfg: SAETrainConfig,
    dead: torch.Tensor | None = None,
    sparsity_scale: float = 1.0,
    reduce_gradients: Callable[[], None] | None = None,
    target: torch.Tensor | None = None,
) -> StepResult:
    """One optimiser step on a batch of normalised activations, keeping the constraints:
    unit decoder rows (not relu, which weights its L1 by them), thresholds >= 0 (jumprelu).
    reduce_gradients: called after the backward pass (torchrun: average over the ranks).
    target: a transcoder's target rows (default: x)."""
    result = sae_losses(sae, x, cfg, dead, sparsity_scale, target)
    optimizer.zero_grad(set_to_none=True)
    result.total.backward()
    if reduce_gradients is not None:
        reduce_gradients()
    result.total, result.mse = result.total.detach(), result.mse.detach()
    arch = sae.cfg.architecture
    if arch != "relu":
        _project_decoder_grad(sae)
    optimizer.step()
    if arch != "relu":
        sae.normalize_decoder()
    if arch == "jumprelu":
        with torch.no_grad():
            sae.threshold.clamp_(min=0.0)
    return result


def _project_decoder_grad(sae: SparseAutoencoder) -> None:
    """Remove the part of W_dec's gradient that only changes row norms (renormalised anyway)."""
    if sae.W_dec.grad is None:
        return
    w = sae.W_dec.data / sae.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-8)
    sae.W_dec.grad -= (sae.W_dec.grad * w).sum(1, keepdim=True) * w


@torch.no_grad()
def _resample_dead(
    sae: SparseAutoencoder,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    recon: torch.Tensor,
    dead: torch.Tensor,
    generator: torch.Generator,
) -> int:
    """relu: point dead latents at badly reconstructed inputs (Anthropic 2023, simplified),
    and clear their Adam moments."""
    index = dead.nonzero().flatten()
    if len(index) == 0:
        return 0
    errors = (x - recon).pow(2).sum(-1)
    chosen = torch.multinomial(errors.cpu() + 1e-12, len(index), True, generator=generator)
    directions = x[chosen.to(x.device)] - sae.b_dec
    directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-8)
    alive = ~dead
    enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
    sae.W_dec[index] = directions * 0.1
    sae.W_enc[:, index] = directions.t() * enc_norm * 0.2
    sae.b_enc[index] = 0.0
    for p, rows in (
        (sae.W_dec, (index,)),
        (sae.W_enc, (slice(None), index)),
        (sae.b_enc, (index,)),
    ):
        state = optimizer.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][rows] = 0.0
    return len(index)


@torch.no_grad()
def fold_scale(sae: SparseAutoencoder, scale: float) -> SparseAutoencoder:
    """Make an SAE trained on activations * scale work on raw activations (same latents)."""
    sae.W_enc *= scale
    sae.W_dec /= scale
    sae.b_dec /= scale
    return sae


def _autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return torch.bfloat16 if name == "bfloat16" else None


def _config_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return [
        f"{k}: {saved.get(k)!r} (checkpoint) vs {now.get(k)!r} (now)"
        for k in sorted(set(saved) | set(now))
        if k not in RESUME_FREE_FIELDS and saved.get(k) != now.get(k)
    ]


def _write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda h: h.write((json.dumps(data, indent=2) + "\n").encode()))


def _trim_log(path: Path, step: int) -> None:
    """Keep the records up to `step` (a killed run's later records would repeat on resume)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if step and record.get("step", 0) <= step:
            kept.append(line + "\n")
    path.write_text("".join(kept))


@dataclass
class SAERun:
    """One run's state from step to step: everything a checkpoint holds, and this process's
    place among the torchrun processes (`world`)."""

    sae: SparseAutoencoder
    optimizer: torch.optim.Optimizer
    store: Any
    since_fired: torch.Tensor  # [d_sae] rows since each latent last fired
    resample_gen: torch.Generator
    world: dd.Dist = field(default_factory=dd.Dist)
    scale: float = 1.0
    target_scale: float = 1.0  # a transcoder's target site (an SAE's equals `scale`)
    step: int = 0
    threshold_sum: float = 0.0
    threshold_count: int = 0
    timing: dict[str, float] = field(default_factory=lambda: {"store_s": 0.0, "sae_s": 0.0})


def make_store(model, sae_cfg: SAEConfig, train_cfg: SAETrainConfig, device, world=None):
    """The ActivationStore train_cfg describes (or, with `train_cfg.cache`, a CachedStore);
    under torchrun each rank streams its own quizzes (or shards) and yields its share of the
    batch."""
    world, device = world or dd.Dist(), torch.device(device)
    if isinstance(sae_cfg, TranscoderConfig):
        if train_cfg.cache is not None:
            raise ConfigError("transcoders stream their activations; a cache holds one site")
    elif train_cfg.cache is not None:
        return cached_store(sae_cfg, train_cfg, world)
    return ActivationStore(
        model,
        sae_cfg.hook_name,
        target_hook=getattr(sae_cfg, "target_hook_name", None),
        tasks=train_cfg.tasks,
        positions=train_cfg.positions,
        batch_size=train_cfg.batch_size // world.world_size,
        buffer_quizzes=train_cfg.buffer_quizzes,
        seed=train_cfg.seed,
        structure=train_cfg.structure,
        noise=train_cfg.noise,
        model_batch=train_cfg.model_batch,
        device=device,
        autocast_dtype=_autocast_dtype(train_cfg.dtype, device),
        rank=world.rank,
    )


def cached_store(sae_cfg: SAEConfig, train_cfg: SAETrainConfig, world=None) -> CachedStore:
    """The store reading `train_cfg.cache`, checked against the SAE's site and width."""
    world = world or dd.Dist()
    cache = ActivationCache(train_cfg.cache)
    if (cache.hook_name, cache.d_in) != (sae_cfg.hook_name, sae_cfg.d_in):
        raise ConfigError(
            f"{cache.path}: activations of {cache.hook_name} (width {cache.d_in}), but the SAE "
            f"reads {sae_cfg.hook_name} (width {sae_cfg.d_in})"
        )
    return cache.store(
        train_cfg.batch_size // world.world_size, rank=world.rank, world=world.world_size
    )


def _check_world(train_cfg: SAETrainConfig, world: dd.Dist) -> None:
    if not world.enabled:
        return
    if train_cfg.batch_size % world.world_size:
        raise ConfigError(
            f"batch_size {train_cfg.batch_size} is not divisible by the {world.world_size} "
            "torchrun processes"
        )
    if train_cfg.resample_every:
        raise ConfigError("resample_every (relu) is not supported under torchrun; use AuxK/ghost")


def new_run(
    sae_cfg: SAEConfig,
    train_cfg: SAETrainConfig,
    store,
    device: torch.device,
    world: dd.Dist | None = None,
    initial_state: dict[str, torch.Tensor] | None = None,
) -> SAERun:
    """A fresh run: the seeded SAE (or `initial_state`), Adam, zeroed dead-latent counters."""
    sae = build_sae(sae_cfg, seed=train_cfg.seed)
    if initial_state is not None:
        sae.load_state_dict(initial_state)
    sae.to(device)
    optimizer = torch.optim.Adam(
        sae.parameters(), lr=train_cfg.lr, betas=(train_cfg.beta1, train_cfg.beta2)
    )
    return SAERun(
        sae=sae,
        optimizer=optimizer,
        store=store,
        since_fired=torch.zeros(sae_cfg.d_sae, dtype=torch.long, device=device),
        resample_gen=torch.Generator().manual_seed(train_cfg.seed + 1),
        world=world or dd.Dist(),
    )


def restore_run(run: SAERun, state: dict[str, Any], path: str | Path = "checkpoint") -> None:
    """Load a checkpoint into `run`; under torchrun each rank takes its own store's state."""
    saved_world = int(state.get("world_size", 1))
    if saved_world != run.world.world_size:
        raise ConfigError(
            f"{path}: written by {saved_world} process(es), resumed with {run.world.world_size}"
        )
    ckpt.restore(run.sae, run.optimizer, state, "SAE/optimiser")
    stores = state.get("stores") or [state["store"]]
    run.store.load_state_dict(stores[run.world.rank])
    run.since_fired = state["since_fired"].to(run.since_fired.device)
    run.resample_gen.set_state(state["resample_rng"])
    run.threshold_sum, run.threshold_count = state["threshold_sum"], state["threshold_count"]
    run.scale, run.step = float(state["scale"]), int(state["step"])
    run.target_scale = float(state.get("target_scale", run.scale))
    run.timing.update(state.get("timing", {}))


def checkpoint_state(run: SAERun, sae_cfg: SAEConfig, train_cfg: SAETrainConfig) -> dict:
    """What a checkpoint holds; under torchrun every rank's store state (a collective call)."""
    state = {
        "config": {"sae": sae_cfg.to_dict(), "train": train_cfg.to_dict()},
        "step": run.step,
        "model": run.sae.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "since_fired": run.since_fired.cpu(),
        "resample_rng": run.resample_gen.get_state(),
        "threshold_sum": run.threshold_sum,
        "threshold_count": run.threshold_count,
        "scale": run.scale,
        "target_scale": run.target_scale,
        "timing": dict(run.timing),
    }
    if not run.world.enabled:
        return {**state, "store": run.store.state_dict()}
    stores: list[Any] = [None] * run.world.world_size
    torch.distributed.all_gather_object(stores, run.store.state_dict())
    return {**state, "stores": stores, "world_size": run.world.world_size}


def save_run(run: SAERun, sae_cfg, train_cfg, out: Path | None) -> None:
    """Checkpoint the run into `out` (rank 0 writes; every rank must call it)."""
    if out is None:
        return
    state = checkpoint_state(run, sae_cfg, train_cfg)
    if run.world.main:
        ckpt.save_checkpoint(state, out, run.step, train_cfg.keep_checkpoints)
    dd.barrier(run.world)


def _average_gradients(sae: SparseAutoencoder, world: dd.Dist) -> None:
    """All-reduce the gradients to their mean over the ranks, in one flat buffer: each rank's
    loss is a mean over its rows, so this is the gradient of the mean over all of them."""
    grads = [p.grad for p in sae.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world.world_size
    for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(part.view_as(g))


def _merge_ranks(run: SAERun, losses: StepResult, metrics: dict[str, float]) -> dict:
    """Under torchrun: latents fired on any rank's rows, the smallest kept activation over all,
    and the logged metrics averaged over the ranks."""
    if not run.world.enabled:
        return metrics
    dist = torch.distributed
    fired = losses.fired.to(torch.int32)
    dist.all_reduce(fired, op=dist.ReduceOp.MAX)
    losses.fired = fired.bool()
    if losses.min_active is not None:
        smallest = losses.min_active.reshape(1).clone()
        dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
        losses.min_active = smallest[0]
    values = torch.tensor(list(metrics.values()), dtype=torch.float64, device=fired.device)
    dist.all_reduce(values)
    return dict(zip(metrics, (values / run.world.world_size).tolist(), strict=True))


def sae_step(run: SAERun, cfg: SAETrainConfig, end_of_threshold: int) -> dict[str, float]:
    """One training step of `run` on its store's next batch; returns the step's metrics."""
    t0 = time.perf_counter()
    x, target = split_batch(run, next(run.store).to(run.since_fired.device))
    t1 = time.perf_counter()
    lr = lr_at(cfg, run.step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    dead = run.since_fired >= cfg.dead_after_tokens
    warmup = cfg.sparsity_warmup_steps
    ramp = min(1.0, (run.step + 1) / warmup) if warmup else 1.0
    reduce = (lambda: _average_gradients(run.sae, run.world)) if run.world.enabled else None
    losses = train_step(
        run.sae, run.optimizer, x, cfg, dead, ramp, reduce_gradients=reduce, target=target
    )
    with torch.no_grad():
        metrics = {
            "loss": float(losses.total),
            "mse": float(losses.mse),
            "sparsity_loss": float(losses.sparsity),
            "explained_variance": explained_variance(x if target is None else target, losses.recon),
            "l0": float(losses.l0),
        }
        if losses.ghost is not None:
            metrics["ghost_loss"] = float(losses.ghost)
        metrics = _merge_ranks(run, losses, metrics)
        _count_firing(run, cfg, x, losses, end_of_threshold)
        metrics["dead"] = float((run.since_fired >= cfg.dead_after_tokens).float().mean())
    run.step += 1
    run.timing["store_s"] += t1 - t0
    run.timing["sae_s"] += time.perf_counter() - t1
    return {"lr": lr, **metrics}


def _count_firing(run: SAERun, cfg: SAETrainConfig, x, losses: StepResult, threshold_from: int):
    """Dead-latent counters (all ranks' rows), batchtopk threshold statistics, relu resampling."""
    run.since_fired += x.shape[0] * run.world.world_size
    run.since_fired[losses.fired] = 0
    if losses.min_active is not None and run.step >= threshold_from:
        run.threshold_sum += float(losses.min_active)
        run.threshold_count += 1
    if (
        run.sae.cfg.architecture == "relu"
        and cfg.resample_every
        and (run.step + 1) % cfg.resample_every == 0
    ):
        dead_now = run.since_fired >= cfg.dead_after_tokens
        if _resample_dead(run.sae, run.optimizer, x, losses.recon, dead_now, run.resample_gen):
            run.since_fired[dead_now] = 0


class _Progress:
    """The log window: averages metrics over log_every steps into log.jsonl and the bar."""

    def __init__(self, run: SAERun, cfg: SAETrainConfig, out: Path | None, show: bool):
        self.cfg, self.out = cfg, out if run.world.main else None
        self.window: dict[str, float] = {}
        self.steps = 0
        self.last: dict[str, float] = {}
        self.bar = None
        if show and cfg.progress and run.world.main:
            from tqdm import tqdm

            desc = f"sae {run.sae.cfg.architecture}"
            self.bar = tqdm(
                total=cfg.steps, initial=run.step, desc=desc, dynamic_ncols=True, unit="step"
            )

    def update(self, run: SAERun, metrics: dict[str, float], end: int) -> None:
        lr = metrics.pop("lr")
        for k, v in metrics.items():
            self.window[k] = self.window.get(k, 0.0) + v
        self.steps += 1
        step = run.step
        if step % self.cfg.log_every == 0 or step == end:
            self.last = {k: v / self.steps for k, v in self.window.items()}
            tokens = step * self.cfg.batch_size
            record = {"step": step, "tokens": tokens, "lr": lr, **self.last}
            record.update(_speeds(run.timing, tokens))
            if self.out is not None:
                with open(self.out / LOG_FILE, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
            if self.bar is not None:
                self.bar.set_postfix(
                    loss=f"{self.last['loss']:.3f}",
                    ev=f"{self.last['explained_variance']:.3f}",
                    l0=f"{self.last['l0']:.1f}",
                    dead=f"{100 * self.last['dead']:.1f}%",
                )
            self.window, self.steps = {}, 0
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def start_run(
    model,
    sae_cfg: SAEConfig,
    train_cfg: SAETrainConfig,
    out: Path | None,
    resume: bool | str | Path,
    store=None,
    initial_state: dict[str, torch.Tensor] | None = None,
) -> SAERun:
    """A run ready for its first (or next) step: the process group joined under torchrun, the
    model checked, the store built, and the state resumed or initialised from the data."""
    device = resolve_device(train_cfg.device, dd.env_world().local_rank)
    if model is None and store is None and train_cfg.cache is None:
        raise ConfigError(
            "train_sae needs a model (to stream activations from), a store or a cache"
        )
    world = dd.setup(device)
    _check_world(train_cfg, world)
    state = _prepare(out, sae_cfg, train_cfg, resume)
    if model is not None:
        model.to(device)
        width = site_width(model, sae_cfg.hook_name)
        if width != sae_cfg.d_in:
            raise ConfigError(f"SAE d_in={sae_cfg.d_in} but {sae_cfg.hook_name} has width {width}")
        if isinstance(sae_cfg, TranscoderConfig):
            out_width = site_width(model, sae_cfg.target_hook_name)
            if out_width != sae_cfg.d_out:
                raise ConfigError(
                    f"transcoder d_out={sae_cfg.d_out} but {sae_cfg.target_hook_name} has "
                    f"width {out_width}"
                )
    if store is None:
        store = make_store(model, sae_cfg, train_cfg, device, world)
    run = new_run(sae_cfg, train_cfg, store, device, world, initial_state)
    if state is not None:
        restore_run(run, state)
    else:
        run.scale, run.target_scale = _initialise(run.sae, store, train_cfg, device, world)
    if out is not None and world.main:
        out.mkdir(parents=True, exist_ok=True)
        _trim_log(out / LOG_FILE, run.step)
    return run


def finish_run(run: SAERun, sae_cfg, train_cfg, out: Path | None, final: dict) -> SparseAutoencoder:
    """The trained SAE in model units (batchtopk threshold set, scale folded), saved by rank 0."""
    sae = run.sae
    if sae_cfg.architecture == "batchtopk":
        with torch.no_grad():
            sae.threshold.fill_(run.threshold_sum / max(run.threshold_count, 1))
    if isinstance(sae, Transcoder):
        fold_transcoder_scales(sae, run.scale, run.target_scale)
    else:
        fold_scale(sae, run.scale)
    sae.eval()
    if out is not None and run.world.main:
        tokens = run.step * train_cfg.batch_size
        summary = {
            "sae": sae_cfg.to_dict(),
            "train": train_cfg.to_dict(),
            "steps": run.step,
            "tokens": tokens,
            "activation_scale": run.scale,
            "target_scale": run.target_scale,
            "final": final,
            "dead_latents": int((run.since_fired >= train_cfg.dead_after_tokens).sum()),
            **_speeds(run.timing, tokens),
            "store_seconds": run.timing["store_s"],
            "sae_seconds": run.timing["sae_s"],
            "processes": run.world.world_size,
        }
        if sae_cfg.architecture == "batchtopk":
            summary["threshold"] = float(sae.threshold)
        _write_json(out / TRAINING_FILE, summary)
        _save(sae, out, summary)
    dd.barrier(run.world)
    return sae


def train_sae(
    model,
    sae_cfg: SAEConfig,
    train_cfg: SAETrainConfig,
    out_dir: str | Path | None = None,
    resume: bool | str | Path = False,
    progress: bool = True,
    store=None,
    stop_after: int | None = None,
    initial_state: dict[str, torch.Tensor] | None = None,
) -> SparseAutoencoder:
    """Train an SAE at `sae_cfg.hook_name` of `model` on freshly generated quizzes.

    store: any iterator of [batch_size, d_in] batches with state_dict()/load_state_dict()
    (default: an ActivationStore built from train_cfg, or the cache train_cfg.cache names).
    stop_after: stop once this many steps are done, after checkpointing, as if killed there
    (tests; chunked runs); the SAE returned then is the unfolded training state. initial_state:
    SAE weights to start from instead of the seeded initialisation (b_dec is still initialised
    from the data). Returns the SAE (in model units, eval mode).

    Under torchrun (RANK/WORLD_SIZE set) every process streams its own quizzes through its own
    model replica, batch_size / world_size rows a step; gradients are averaged over the
    processes, so the run equals one process on the ranks' batches together (BatchTopK selects
    per process, ghost grads normalise per process). Rank 0 writes; resuming needs the same
    number of processes.
    """
    out = Path(out_dir) if out_dir is not None else None
    run = start_run(model, sae_cfg, train_cfg, out, resume, store, initial_state)
    steps = train_cfg.steps
    end = steps if stop_after is None else min(steps, stop_after)
    threshold_from = steps - max(1, int(steps * train_cfg.threshold_fraction))
    log = _Progress(run, train_cfg, out, progress)
    last_saved = run.step
    run.sae.train()
    try:
        while run.step < end:
            log.update(run, sae_step(run, train_cfg, threshold_from), end)
            every = train_cfg.checkpoint_every
            if out is not None and every and run.step % every == 0:
                save_run(run, sae_cfg, train_cfg, out)
                last_saved = run.step
    except KeyboardInterrupt:
        if run.step != last_saved and not run.world.enabled:
            save_run(run, sae_cfg, train_cfg, out)
        raise
    finally:
        log.close()
    if run.step != last_saved:
        save_run(run, sae_cfg, train_cfg, out)
    if run.step < steps:
        return run.sae
    return finish_run(run, sae_cfg, train_cfg, out, log.last)


def _speeds(timing: dict[str, float], tokens: int) -> dict[str, float]:
    total = timing["store_s"] + timing["sae_s"]
    return {
        "tokens_per_s": tokens / max(total, 1e-9),
        "store_tokens_per_s": tokens / max(timing["store_s"], 1e-9),
        "sae_tokens_per_s": tokens / max(timing["sae_s"], 1e-9),
    }


def _save(sae: SparseAutoencoder, out: Path, summary: dict[str, Any]) -> None:
    from gridlens.sae.io import save_sae

    if isinstance(sae, Transcoder):
        save_transcoder(sae, out, training=summary)
    else:
        save_sae(sae, out, training=summary)


def _prepare(
    out: Path | None, sae_cfg: SAEConfig, train_cfg: SAETrainConfig, resume: bool | str | Path
) -> dict[str, Any] | None:
    """Check the output directory against `resume`; return the state to resume from."""
    if out is None:
        if resume:
            raise ConfigError("resume needs an output directory")
        return None
    if resume:
        path = Path(resume) if isinstance(resume, str | Path) else ckpt.latest_checkpoint(out)
        if path is None:
            raise CheckpointError(
                f"{out}: resume asked for but no checkpoint in {out / 'checkpoints'}"
            )
        state = ckpt.load_checkpoint(path)
        for key in ("since_fired", "scale", "resample_rng"):
            if key not in state:
                raise CheckpointError(f"{path}: not an SAE training checkpoint (no {key!r})")
        if "store" not in state and "stores" not in state:
            raise CheckpointError(f"{path}: not an SAE training checkpoint (no store state)")
        saved = state["config"]
        diffs = _config_differences(saved.get("sae", {}), sae_cfg.to_dict())
        diffs += _config_differences(saved.get("train", {}), train_cfg.to_dict())
        if diffs:
            raise ConfigError(
                f"{path}: cannot resume, the configuration differs from the checkpoint's: "
                + "; ".join(diffs)
            )
        return state
    if ckpt.list_checkpoints(out) or (out / TRAINING_FILE).exists():
        raise ConfigError(
            f"{out}: already holds an SAE training run; pass --resume to continue it or "
            "choose another --out"
        )
    return None


def split_batch(run: SAERun, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(scaled input, scaled target or None): a transcoder's store yields both side by side."""
    if not isinstance(run.sae, Transcoder):
        return batch * run.scale, None
    d_in = run.sae.cfg.d_in
    return batch[:, :d_in] * run.scale, batch[:, d_in:] * run.target_scale


def _scale_of(sample: torch.Tensor, hook_name: str, normalize: bool) -> float:
    """s with E||sample * s||^2 = width (1 when not normalising)."""
    if not normalize:
        return 1.0
    mean_sq = float(sample.pow(2).sum(-1).mean())
    if not math.isfinite(mean_sq) or mean_sq <= 0:
        raise ConfigError(f"activations at {hook_name} are all zero or not finite")
    return math.sqrt(sample.shape[-1] / mean_sq)


@torch.no_grad()
def _initialise(
    sae: SparseAutoencoder, store, cfg: SAETrainConfig, device: torch.device, world=None
) -> tuple[float, float]:
    """The activation scales (input, target) and b_dec, from the store's first buffer (not
    consumed); under torchrun from every rank's share, gathered in rank order (all ranks then
    agree). b_dec starts at the target's centre."""
    world = world or dd.Dist()
    n = min(cfg.batch_size * 4, 16384) // world.world_size
    sample = store.peek(n) if hasattr(store, "peek") else None
    if sample is None:
        raise ConfigError("the activation store must offer peek(n) to initialise the SAE")
    sample = sample.to(device).float()
    if world.enabled:
        parts = [torch.empty_like(sample) for _ in range(world.world_size)]
        torch.distributed.all_gather(parts, sample)
        sample = torch.cat(parts)
    scale = _scale_of(sample[:, : sae.cfg.d_in], sae.cfg.hook_name, cfg.normalize_activations)
    target_scale = scale
    if isinstance(sae, Transcoder):
        sample = sample[:, sae.cfg.d_in :]
        name = sae.cfg.target_hook_name
        target_scale = _scale_of(sample, name, cfg.normalize_activations)
    sample = sample * target_scale
    if cfg.b_dec_init == "geometric_median":
        sae.b_dec.copy_(geometric_median(sample[:4096]))
    elif cfg.b_dec_init == "mean":
        sae.b_dec.copy_(sample.mean(0))
    if sae.cfg.architecture != "relu":
        sae.normalize_decoder()
    return scale, target_scale
