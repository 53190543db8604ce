"""End-to-end (KL) fine-tuning of a trained SAE (Braun et al. 2024, "e2e + downstream"; GDM 2024).

An SAE trained on reconstruction alone spends capacity on directions the model ignores; spliced
in, it can still cost much of the loss. Fine-tuning splices it into the frozen model (at its
site, on `positions`) and trains only the SAE so that the model's prediction of the last grid
matches the clean model's, while staying a reconstruction of the site:

    loss = KL(p_clean || p_spliced)             mean over the predicted grid's cells and quizzes
         + recon_coefficient * FVU               ||x - x_hat||^2 / ||x - mean x||^2 at the site
         + sparsity_coefficient * L1 / L1_start  relu, jumprelu, gated only (TopK keeps its k)

Every term is scale-free, so the coefficients carry across sites. Quizzes are drawn fresh each
step (seed `seed`); the KL is reported on held-out quizzes before and after.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from gridlens.analysis.core import QuizSet, predicted_cells
from gridlens.errors import ConfigError
from gridlens.plotting import finish, pyplot
from gridlens.sae.activations import position_mask
from gridlens.sae.model import SparseAutoencoder
from gridlens.sae.splice import splice_hooks
from gridlens.world import generate

FORMAT = "gridlens.sae_finetune"
VERSION = 1
PENALISED = ("relu", "jumprelu", "gated")  # architectures whose sparsity is a loss term


@dataclass(frozen=True)
class FinetuneConfig:
    """The fine-tuning recipe (defaults: about a minute on a CPU for the shipped SAE)."""

    steps: int = 60
    batch_quizzes: int = 16
    lr: float = 5e-4
    recon_coefficient: float = 0.1
    sparsity_coefficient: float = 0.1
    positions: str = "grid"
    tasks: str = "default"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_quizzes < 1:
            raise ConfigError(
                f"steps and batch_quizzes must be >= 1, got {self.steps}, {self.batch_quizzes}"
            )
        if self.lr <= 0 or self.recon_coefficient < 0 or self.sparsity_coefficient < 0:
            raise ConfigError("lr must be > 0 and the coefficients >= 0")


@dataclass
class SpliceScore:
    """Held-out quizzes with the SAE spliced in: mean KL to the clean model on the predicted
    grid, fraction of variance unexplained at the site, mean L0."""

    kl: float
    fvu: float
    l0: float


@dataclass
class FinetuneResult:
    """The fine-tuned SAE (a copy), the held-out scores before and after, and each step's
    training-batch KL, FVU and L0."""

    sae: SparseAutoencoder = field(repr=False)
    config: FinetuneConfig
    before: SpliceScore
    after: SpliceScore
    history: list[dict[str, float]]

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "hook_name": self.sae.cfg.hook_name,
            "architecture": self.sae.cfg.architecture,
            "config": asdict(self.config),
            "held_out_before": asdict(self.before),
            "held_out_after": asdict(self.after),
            "history": self.history,
        }

    def findings(self) -> list[str]:
        b, a = self.before, self.after
        return [
            f"Held-out spliced KL {b.kl:.4f} -> {a.kl:.4f} nats per cell after "
            f"{self.config.steps} steps; FVU {b.fvu:.3f} -> {a.fvu:.3f}; L0 {b.l0:.1f} -> "
            f"{a.l0:.1f}."
        ]

    def plot(self, path: str | Path | None = None):
        """KL and FVU of the training batches against the step."""
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(5, 3))
        steps = [h["step"] for h in self.history]
        ax.plot(steps, [h["kl"] for h in self.history], label="KL (train batch)")
        ax.plot(steps, [h["fvu"] for h in self.history], label="FVU (train batch)")
        ax.axhline(self.after.kl, color="gray", ls=":", label="KL held out, after")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.set_title(f"KL fine-tuning at {self.sae.cfg.hook_name}", fontsize=9)
        fig.tight_layout()
        return finish(fig, path)


def _spliced_pass(model, sae, tokens: torch.Tensor, mask: torch.Tensor):
    """(clean logits, spliced logits, site rows x, reconstruction, latents) of one batch;
    gradients reach the SAE only."""
    seen: dict[str, torch.Tensor] = {}

    def capture(act, hook):
        seen["x"] = act.reshape(*act.shape[:2], -1)[:, mask.to(act.device)].detach()

    def keep(latents):
        seen["latents"] = latents
        return latents

    with torch.no_grad():
        clean = model(tokens)
    hooks = [(sae.cfg.hook_name, capture), *splice_hooks(sae, edit=keep, positions=mask)]
    spliced = model.run_with_hooks(tokens, fwd_hooks=hooks)
    x = seen["x"].reshape(-1, sae.cfg.d_in).to(sae.W_dec.dtype)
    latents = seen["latents"].reshape(-1, sae.cfg.d_sae)
    return clean, spliced, x, sae.decode(latents), latents


def grid_kl(clean: torch.Tensor, spliced: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[n] KL(p_clean || p_spliced) per predicted-grid cell, averaged over the cells."""
    cells = predicted_cells(tokens)
    log_p = F.log_softmax(clean[:, cells].float(), -1)
    log_q = F.log_softmax(spliced[:, cells].float(), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean(1)


def _fvu(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    return (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)


def _l1(sae, latents: torch.Tensor) -> torch.Tensor:
    return (latents.abs() * sae.W_dec.norm(dim=1)).sum(-1).mean()


@torch.no_grad()
def splice_score(
    model, sae, quizzes: QuizSet, positions: str = "grid", batch_size: int = 32
) -> SpliceScore:
    """KL, FVU and L0 of `sae` spliced into `model` on `quizzes` (see SpliceScore)."""
    mask = position_mask(positions, quizzes.tokens.shape[1])
    kls, xs, recons, l0 = [], [], [], []
    for chunk in quizzes.tokens.split(batch_size):
        chunk = chunk.to(model.device)
        clean, spliced, x, recon, latents = _spliced_pass(model, sae, chunk, mask)
        kls.append(grid_kl(clean, spliced, chunk))
        xs.append(x)
        recons.append(recon)
        l0.append((latents != 0).sum(-1).float())
    x, recon = torch.cat(xs), torch.cat(recons)
    return SpliceScore(
        float(torch.cat(kls).mean()), float(_fvu(x, recon)), float(torch.cat(l0).mean())
    )


def _step(model, sae, optimizer, tokens, mask, cfg: FinetuneConfig, l1_start) -> dict:
    clean, spliced, x, recon, latents = _spliced_pass(model, sae, tokens, mask)
    kl = grid_kl(clean, spliced, tokens).mean()
    fvu = _fvu(x, recon)
    loss = kl + cfg.recon_coefficient * fvu
    if sae.cfg.architecture in PENALISED:
        loss = loss + cfg.sparsity_coefficient * _l1(sae, latents) / l1_start
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if sae.cfg.architecture != "relu":  # relu weights its L1 by the decoder norms instead
        sae.normalize_decoder()
    if sae.cfg.architecture == "jumprelu":
        with torch.no_grad():
            sae.threshold.clamp_(min=0.0)
    kl, fvu = kl.detach(), fvu.detach()
    return {"kl": float(kl), "fvu": float(fvu), "l0": float((latents != 0).sum(-1).float().mean())}


def finetune_sae(
    model,
    sae: SparseAutoencoder,
    cfg: FinetuneConfig,
    held_out: QuizSet,
    progress: bool = True,
) -> FinetuneResult:
    """A copy of `sae` fine-tuned on the KL to the clean model (see module docstring), scored
    on `held_out` before and after; `model` and `sae` are left unchanged."""
    tuned = copy.deepcopy(sae).eval()
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        before = splice_score(model, tuned, held_out, cfg.positions)
        mask = position_mask(cfg.positions, held_out.tokens.shape[1])
        with torch.no_grad():  # the sparsity term is relative to the SAE's starting L1
            start = _spliced_pass(model, tuned, held_out.tokens.to(model.device), mask)[4]
            l1_start = max(float(_l1(tuned, start)), 1e-8)
        optimizer = torch.optim.Adam(tuned.parameters(), lr=cfg.lr)
        history = []
        for step in _steps(cfg.steps, progress):
            seed = cfg.seed * 100_003 + step
            tokens = generate(cfg.tasks, cfg.batch_quizzes, seed=seed, structure="mix").tokens
            record = _step(model, tuned, optimizer, tokens.to(model.device), mask, cfg, l1_start)
            if not all(math.isfinite(v) for v in record.values()):
                raise ConfigError(f"fine-tuning diverged at step {step} ({record}); lower lr")
            history.append({"step": step, **record})
        after = splice_score(model, tuned, held_out, cfg.positions)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return FinetuneResult(tuned, cfg, before, after, history)


def _steps(n: int, progress: bool):
    from tqdm import tqdm

    return tqdm(range(n), desc="finetune", unit="step", disable=not progress)
