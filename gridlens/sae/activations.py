"""Activations for sparse autoencoders: which positions, collected from fixed quizzes, or
streamed from the world generator through the model into a shuffled buffer.

Positions index tokens (as everywhere in gridlens: the activation at position p is the one whose
logits predict token p). "grid" = the predicted (last) grid's cells, "no_markers" = every
position whose token is not one of the 4 grid markers (so position 0, where the model reads the
BOS token, is dropped too), "all" = every position.

The store runs the model only up to the block holding the site (`stop_at_layer`), in eval mode
and without gradients, in batches of `model_batch` quizzes; that forward pass is what costs.
Its buffer is SAELens's mixing buffer: it holds `buffer_quizzes` quizzes' rows, shuffled; it
yields batches from the front until only half of it is left, then adds the rows of
`buffer_quizzes / 2` fresh quizzes and reshuffles. Every generated row is yielded exactly once.
Quiz chunk c comes from a seed derived from (seed, c) alone, and the shuffling from one
torch.Generator, so `state_dict()` (buffer, cursor, chunk count, generator state) restores the
stream exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from gridlens.errors import ConfigError, GridlensError, unknown_name
from gridlens.models.hooks import PATTERN_SITES
from gridlens.world import generate
from gridlens.world.tasks import resolve_tasks

POSITION_MASKS = ("all", "grid", "no_markers")
_STORE_TAG = 0x73616573  # "saes": the quiz stream of activation stores


class ActivationError(GridlensError):
    """Activations that cannot be used (NaN or infinite values)."""


def position_mask(kind: str, length: int = 404) -> torch.Tensor:
    """Bool [length]: the positions of a quiz of `length` tokens that `kind` keeps."""
    if kind not in POSITION_MASKS:
        raise unknown_name("position mask", kind, POSITION_MASKS)
    if length % 4 or length < 8:
        raise ConfigError(f"a quiz has 4 x (1 + H*W) tokens; {length} is not of that form")
    mask = torch.ones(length, dtype=torch.bool)
    grid = length // 4
    if kind == "grid":
        mask[: length - (grid - 1)] = False
    elif kind == "no_markers":
        mask[::grid] = False
    return mask


def check_site(model, hook_name: str) -> int:
    """Validate a hook site for SAEs; return the `stop_at_layer` that computes it."""
    if hook_name not in model.hook_names:
        raise unknown_name("hook", hook_name, model.hook_names)
    if any(hook_name.endswith(p) for p in PATTERN_SITES):
        raise ConfigError(
            f"hook {hook_name!r} is an attention pattern [batch, head, query, key], not a "
            "per-position activation; choose a site like blocks.L.hook_resid_post"
        )
    if hook_name.startswith("blocks."):
        return int(hook_name.split(".")[1]) + 1
    return 0


def site_width(model, hook_name: str) -> int:
    """d_in of an SAE at `hook_name` (per-head sites are flattened over heads)."""
    check_site(model, hook_name)
    tokens = torch.zeros(1, model.cfg.n_ctx, dtype=torch.long, device=model.device)
    return _forward(model, tokens[:, :8], hook_name).shape[-1]


@contextlib.contextmanager
def _eval_mode(model) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _forward(
    model, tokens: torch.Tensor, hook_name: str, autocast_dtype=None, target_hook=None
) -> torch.Tensor:
    """The site's activation [batch, pos, d] (trailing axes flattened), as float32; with
    `target_hook`, that site's activation concatenated after it (a transcoder's pair)."""
    names = [hook_name] + ([target_hook] if target_hook else [])
    stop = max(check_site(model, name) for name in names)
    autocast = (
        torch.autocast(model.device.type, dtype=autocast_dtype)
        if autocast_dtype not in (None, torch.float32)
        else contextlib.nullcontext()
    )
    with torch.no_grad(), autocast:
        _, cache = model.run_with_cache(tokens, names=names, stop_at_layer=stop)
    acts = [cache[name].reshape(*tokens.shape[:2], -1).float() for name in names]
    return torch.cat(acts, -1) if target_hook else acts[0]


def _check_finite(acts: torch.Tensor, hook_name: str, where: str) -> None:
    if not torch.isfinite(acts).all():
        bad = int((~torch.isfinite(acts)).any(-1).sum())
        raise ActivationError(
            f"{bad} activation rows at {hook_name} hold NaN or inf values ({where}); "
            "check the model weights (or use float32 instead of bf16 autocast)"
        )


def collect(
    model,
    tokens: torch.Tensor,
    hook_name: str,
    positions: str = "grid",
    batch_size: int = 64,
    with_index: bool = False,
    device: str | torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    target_hook: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The site's activations at the kept positions of every quiz, [rows, d_in], quiz-major.

    with_index=True also returns (quiz_index [rows], position [rows]), so each row can be
    traced back to its quiz (row i of `tokens`) and token position. target_hook: a second
    site whose activations follow the first's in each row (a transcoder's input and target).
    """
    check_site(model, hook_name)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    tokens = model.check_tokens(tokens.to(model.device))
    mask = position_mask(positions, tokens.shape[1]).to(model.device)
    out_device = torch.device(device) if device is not None else model.device
    chunks = []
    with _eval_mode(model):
        for lo in range(0, len(tokens), batch_size):
            act = _forward(
                model, tokens[lo : lo + batch_size], hook_name, autocast_dtype, target_hook
            )
            chunks.append(act[:, mask].reshape(-1, act.shape[-1]).to(out_device))
    acts = torch.cat(chunks)
    _check_finite(acts, hook_name, f"quizzes 0..{len(tokens) - 1}")
    if not with_index:
        return acts
    kept = mask.cpu().nonzero().flatten()
    quiz = torch.arange(len(tokens)).repeat_interleave(len(kept))
    return acts, quiz, kept.repeat(len(tokens))


def _stream_seed(seed: int, rank: int) -> int:
    """The shuffling generator's seed: `seed` itself for rank 0 (one process), another
    stream for each further torchrun rank."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([_STORE_TAG, seed, rank]).generate_state(1)[0])


class ActivationStore:
    """An endless iterator of shuffled [batch_size, d_in] activation batches.

    with_index=True yields (acts, quiz, position, task) instead, where quiz counts the quizzes
    the store generated (0, 1, ...) and task indexes `store.tasks`. rank: a torchrun process's
    own stream of quizzes and shuffling (rank 0 is the one-process stream). target_hook:
    rows hold that site's activations after `hook_name`'s (a transcoder's input and target).
    """

    def __init__(
        self,
        model,
        hook_name: str,
        tasks: str | Sequence[str] | None = "default",
        positions: str = "grid",
        batch_size: int = 4096,
        buffer_quizzes: int = 512,
        seed: int = 0,
        structure: str | Sequence[str] | None = "mix",
        noise: float = 0.0,
        model_batch: int = 128,
        device: str | torch.device | None = None,
        autocast_dtype: torch.dtype | None = None,
        with_index: bool = False,
        rank: int = 0,
        target_hook: str | None = None,
    ):
        self.stop_at_layer = check_site(model, hook_name)
        if target_hook is not None:
            self.stop_at_layer = max(self.stop_at_layer, check_site(model, target_hook))
        self.target_hook = target_hook
        position_mask(positions)  # validates the name
        self.tasks = tuple(resolve_tasks(tasks))
        if batch_size < 1 or model_batch < 1:
            raise ConfigError(
                f"batch_size and model_batch must be >= 1: {batch_size}, {model_batch}"
            )
        if buffer_quizzes < 2 or buffer_quizzes % 2:
            raise ConfigError(f"buffer_quizzes must be even and >= 2, got {buffer_quizzes}")
        self.model, self.hook_name, self.positions = model, hook_name, positions
        self.batch_size, self.buffer_quizzes, self.seed = batch_size, buffer_quizzes, seed
        self.structure, self.noise, self.model_batch = structure, noise, model_batch
        self.device = torch.device(device) if device is not None else model.device
        self.autocast_dtype, self.with_index = autocast_dtype, with_index
        self.mask = position_mask(positions, model.cfg.n_ctx)
        self.rows_per_quiz = int(self.mask.sum())
        refill_rows = buffer_quizzes // 2 * self.rows_per_quiz
        if refill_rows < batch_size:
            raise ConfigError(
                f"a refill of buffer_quizzes/2 = {buffer_quizzes // 2} quizzes gives "
                f"{refill_rows} rows ({self.rows_per_quiz} per quiz at positions={positions!r}), "
                f"fewer than batch_size {batch_size}: raise buffer_quizzes"
            )
        self.keep_rows = buffer_quizzes // 2 * self.rows_per_quiz
        self.rank = rank
        self.generator = torch.Generator().manual_seed(_stream_seed(seed, rank))
        self.buffer: torch.Tensor | None = None
        self.index: torch.Tensor | None = None  # [rows, 3] quiz, position, task
        self.cursor = 0
        self.chunks = 0  # quiz chunks of buffer_quizzes/2 generated so far
        self.rows_yielded = 0

    # ------------------------------------------------------------------ the quiz stream

    def _chunk(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows and index of quiz chunk c (a function of (seed, c) only)."""
        n = self.buffer_quizzes // 2
        entropy = [_STORE_TAG, self.seed, c] + ([self.rank] if self.rank else [])
        rng = np.random.default_rng(np.random.SeedSequence(entropy))
        batch = generate(self.tasks, n, seed=rng, structure=self.structure, noise=self.noise)
        acts = collect(
            self.model,
            batch.tokens,
            self.hook_name,
            self.positions,
            self.model_batch,
            device=self.device,
            autocast_dtype=self.autocast_dtype,
            target_hook=self.target_hook,
        )
        task_id = {t: i for i, t in enumerate(self.tasks)}
        tasks = torch.tensor([task_id[t] for t in batch.task.tolist()])
        quiz = torch.arange(c * n, (c + 1) * n).repeat_interleave(self.rows_per_quiz)
        position = self.mask.nonzero().flatten().repeat(n)
        index = torch.stack([quiz, position, tasks.repeat_interleave(self.rows_per_quiz)], 1)
        return acts, index

    def _refill(self) -> None:
        new = [self._chunk(self.chunks + i) for i in range(1 if self.buffer is not None else 2)]
        self.chunks += len(new)
        parts = (
            [] if self.buffer is None else [(self.buffer[self.cursor :], self.index[self.cursor :])]
        )
        acts = torch.cat([a for a, _ in parts + new])
        index = torch.cat([i for _, i in parts + new])
        order = torch.randperm(len(acts), generator=self.generator)
        self.buffer, self.index = acts[order.to(acts.device)], index[order]
        self.cursor = 0

    def __iter__(self) -> ActivationStore:
        return self

    def __next__(self) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.buffer is None or len(self.buffer) - self.cursor - self.batch_size < self.keep_rows:
            self._refill()
        lo, hi = self.cursor, self.cursor + self.batch_size
        self.cursor = hi
        self.rows_yielded += self.batch_size
        if not self.with_index:
            return self.buffer[lo:hi]
        index = self.index[lo:hi]
        return self.buffer[lo:hi], index[:, 0], index[:, 1], index[:, 2]

    def peek(self, n: int) -> torch.Tensor:
        """Up to n rows the store will yield next (filling the buffer if needed), not consumed:
        what the trainer estimates the activation scale and b_dec from."""
        if self.buffer is None:
            self._refill()
        return self.buffer[self.cursor : self.cursor + n].clone()

    @property
    def quizzes_generated(self) -> int:
        return self.chunks * (self.buffer_quizzes // 2)

    # ------------------------------------------------------------------ resuming

    def state_dict(self) -> dict[str, Any]:
        """Everything the stream's future depends on (the unread buffer included)."""
        state: dict[str, Any] = {
            "chunks": self.chunks,
            "rows_yielded": self.rows_yielded,
            "generator": self.generator.get_state(),
        }
        if self.buffer is not None:
            state["buffer"] = self.buffer[self.cursor :].cpu().clone()
            state["index"] = self.index[self.cursor :].clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.chunks = int(state["chunks"])
        self.rows_yielded = int(state["rows_yielded"])
        self.generator.set_state(state["generator"])
        self.cursor = 0
        if "buffer" in state:
            self.buffer = state["buffer"].to(self.device)
            self.index = state["index"]
        else:
            self.buffer = self.index = None
