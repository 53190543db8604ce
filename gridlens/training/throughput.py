"""Keeping an accelerator busy, and saying how busy it is.

- `flops_per_token`: the model FLOPs of one training token (forward and backward), the
  numerator of MFU (model FLOPs utilisation, as in the PaLM paper and nanoGPT).
- `peak_flops`: the dense bf16 matrix rate of known GPUs (datasheet numbers); MFU is only
  reported where it is known.
- `Prefetcher`: generates the next batches in worker processes, so the quiz generator runs
  while the GPU computes; it measures generation time and the time the training loop waited
  for data, the two numbers that say whether the generator stalls the GPU.
"""

from __future__ import annotations

import time

import torch

from gridlens.models import GridGPTConfig

# Dense bf16 tensor-core FLOP/s by the vendors' datasheets (no sparsity), matched against
# torch.cuda.get_device_name. H200 and H100 SXM share the chip, hence the rate.
PEAK_BF16_FLOPS: dict[str, float] = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "RTX 4090": 165e12,
}


def flops_per_token(cfg: GridGPTConfig) -> float:
    """Training FLOPs per token: 6 per weight of the matrices the token goes through (forward
    2, backward 4), plus causal attention's scores and mixing (on average n_ctx / 2 keys)."""
    d, layers = cfg.d_model, cfg.n_layers
    d_attn = cfg.n_heads * cfg.d_head
    d_value = cfg.n_heads * cfg.d_value
    per_layer = d * (2 * d_attn + 2 * d_value) + 2 * d * cfg.d_mlp
    matrices = layers * per_layer + d * cfg.d_vocab_out
    attention = layers * cfg.n_ctx * (d_attn + d_value)  # 2 matmuls x 2 FLOP x ctx/2 keys
    return 6.0 * matrices + 3.0 * attention


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The bf16 peak of the device's GPU, or None (CPU, fp32, or a GPU not in the table)."""
    if device.type != "cuda" or dtype != torch.bfloat16:
        return None
    name = torch.cuda.get_device_name(device)
    for key, rate in PEAK_BF16_FLOPS.items():
        if key in name:
            return rate
    return None


class _Batches(torch.utils.data.Dataset):
    """Batch k of a QuizStream as item k, with the quizzes it dropped (they are in the test
    pool) and the seconds its generation took."""

    def __init__(self, stream):
        self.stream = stream

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int, float]:
        began = time.perf_counter()
        before = self.stream.dropped
        tokens = self.stream.batch(k)
        return tokens, self.stream.dropped - before, time.perf_counter() - began


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)


class Prefetcher:
    """Batches `stream.batch(k)` for k = start, ..., end - 1, generated ahead by `workers`
    processes (a torch DataLoader, forked: they start in milliseconds) while the GPU computes.

    `get(k)` returns batch k on `device`. Batch k depends on k alone, so prefetching changes
    no result. `gen_s` sums the workers' generation seconds and `wait_s` the seconds `get`
    blocked: the generator stalls the GPU when `wait_s` grows. Call `close()` when done."""

    def __init__(self, stream, start: int, end: int, device: torch.device, workers: int = 4):
        import multiprocessing

        self.stream, self.device = stream, device
        self.gen_s = 0.0
        self.wait_s = 0.0
        loader = torch.utils.data.DataLoader(
            _Batches(stream),
            batch_size=None,
            sampler=range(start, end),
            num_workers=workers,
            prefetch_factor=2,
            pin_memory=device.type == "cuda",
            worker_init_fn=_one_thread,
            multiprocessing_context=multiprocessing.get_context("fork"),
        )
        self._batches = iter(loader)
        self._next = start

    def get(self, k: int) -> torch.Tensor:
        if k != self._next:
            raise RuntimeError(f"prefetcher: batch {self._next} is next, not {k}")
        began = time.perf_counter()
        tokens, dropped, seconds = next(self._batches)
        self.wait_s += time.perf_counter() - began
        self.gen_s += seconds
        self.stream.dropped += dropped
        self._next += 1
        return tokens.to(self.device, non_blocking=True)

    def close(self) -> None:
        self._batches = None  # the DataLoader iterator stops its workers when deleted


__all__ = ["PEAK_BF16_FLOPS", "Prefetcher", "flops_per_token", "peak_flops"]
