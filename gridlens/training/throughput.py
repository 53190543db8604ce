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
from concurrent.futures import Future

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


_WORKER_STREAM = None  # the QuizStream of a prefetch worker process


def _init_worker(stream) -> None:
    global _WORKER_STREAM
    torch.set_num_threads(1)
    _WORKER_STREAM = stream


def _make_batch(k: int) -> tuple[torch.Tensor, int, float]:
    """Batch k, the quizzes it dropped (test pool), and the seconds generation took."""
    began = time.perf_counter()
    before = _WORKER_STREAM.dropped
    tokens = _WORKER_STREAM.batch(k)
    return tokens, _WORKER_STREAM.dropped - before, time.perf_counter() - began


class Prefetcher:
    """Batches `stream.batch(k)` for k = start, ..., end - 1, generated `depth` ahead by
    `workers` processes while the GPU computes.

    `get(k)` returns batch k on `device`. Batch k depends on k alone, so prefetching changes
    no result. `gen_s` sums the workers' generation seconds and `wait_s` the seconds `get`
    blocked: the generator stalls the GPU when `wait_s` grows. Call `close()` when done."""

    def __init__(self, stream, start: int, end: int, device: torch.device, workers: int = 4):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.stream, self.device, self.end = stream, device, end
        self.gen_s = 0.0
        self.wait_s = 0.0
        self._pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(stream,),
        )
        self._pending: dict[int, Future] = {}
        self._next = start
        self._depth = 2 * workers
        for k in range(start, min(end, start + self._depth)):
            self._pending[k] = self._pool.submit(_make_batch, k)

    def get(self, k: int) -> torch.Tensor:
        if k not in self._pending:
            raise RuntimeError(f"prefetcher: batch {k} was not scheduled")
        began = time.perf_counter()
        tokens, dropped, seconds = self._pending.pop(k).result()
        self.wait_s += time.perf_counter() - began
        self.gen_s += seconds
        self.stream.dropped += dropped
        ahead = k + self._depth
        if ahead < self.end and ahead not in self._pending:
            self._pending[ahead] = self._pool.submit(_make_batch, ahead)
        if self.device.type == "cuda":
            tokens = tokens.pin_memory()
        return tokens.to(self.device, non_blocking=True)

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)


__all__ = ["PEAK_BF16_FLOPS", "Prefetcher", "flops_per_token", "peak_flops"]
