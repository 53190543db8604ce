"""Sparse training kernels for TopK, BatchTopK and gated SAEs: work proportional to the active
latents.

A TopK SAE keeps k of d_sae latents per row, yet the dense formulation (SAELens's) scatters them
into a [rows, d_sae] matrix, multiplies it by the whole decoder and back-propagates through that
product and the scatter. Here the active latents stay as (values, indices):

- decoding is an embedding bag (`F.embedding_bag(indices, W_dec, per_sample_weights=values)`):
  a weighted sum of k decoder rows per output row, whose backward only touches those rows;
- encoding computes the dense pre-activations once (the selection needs them) without autograd
  graph, selects, and its custom backward sends the gradient of the k values per row to the
  encoder through the same embedding-bag kernel (rows of W_enc^T), to b_enc by a bincount and to
  b_dec by one mat-vec, never materialising a dense [rows, d_sae] gradient.

A gated SAE's loss is zero off its open gates, gradient included, so once few gates open (a
trained gated SAE's L0 is tens of latents) it trains through the same kernels (`gated_encode`).

Values equal the dense `topk_rows` / `topk_batch` of gridlens.sae.model (up to ties) and so do
the gradients; tests/sae/test_sae_sparse.py checks both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gridlens.errors import ConfigError


def sparse_decode(
    values: torch.Tensor,
    indices: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    offsets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reconstruction from active latents: sum_j values[r, j] * W_dec[indices[r, j]] + b_dec.

    values, indices: [rows, k] (TopK), or flat [nnz] with `offsets` [rows] giving where each
    row's entries start (BatchTopK: entries sorted by row). Differentiable in values, W_dec and
    b_dec; the gradient of W_dec only touches the rows that were used.
    """
    if values.shape != indices.shape:
        raise ConfigError(f"values {tuple(values.shape)} and indices {tuple(indices.shape)} differ")
    if offsets is None and values.dim() != 2:
        raise ConfigError("sparse_decode takes [rows, k] values, or flat values with offsets")
    out = F.embedding_bag(
        indices, W_dec, offsets, mode="sum", per_sample_weights=values.to(W_dec.dtype)
    )
    return out + b_dec


class _SparseEncode(torch.autograd.Function):
    """Selected pre-activation values -> relu, with a backward over the selected entries only.

    Forward inputs: x [rows, d_in], W_enc, b_enc, b_dec, rows/cols [nnz] of the selection (the
    caller picked them from the dense pre-activations). Output: relu(pre[rows, cols]) [nnz].
    """

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, rows, cols, pre_selected):
        values = pre_selected.clamp_min(0.0)
        ctx.save_for_backward(x, W_enc, b_dec, rows, cols, values)
        return values

    @staticmethod
    def backward(ctx, grad_values):
        x, W_enc, b_dec, rows, cols, values = ctx.saved_tensors
        g = torch.where(values > 0, grad_values, torch.zeros_like(grad_values))
        d_sae = W_enc.shape[1]
        grad_b_enc = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, cols, g)
        grad_x = grad_W_enc = grad_b_dec = None
        n_rows = x.shape[0]
        offsets = _row_offsets(rows, n_rows)
        if ctx.needs_input_grad[1]:
            # dL/dW_enc[:, c] = sum over entries (r, c) of g * (x[r] - b_dec): the backward of an
            # embedding bag over the rows of W_enc^T with output gradient x - b_dec
            table = W_enc.detach().t().contiguous().requires_grad_(True)
            with torch.enable_grad():
                bag = F.embedding_bag(cols, table, offsets, mode="sum", per_sample_weights=g)
            (grad_table,) = torch.autograd.grad(bag, table, grad_outputs=x - b_dec)
            grad_W_enc = grad_table.t()
        if ctx.needs_input_grad[3]:
            grad_b_dec = -(W_enc @ grad_b_enc)
        if ctx.needs_input_grad[0]:
            table = W_enc.detach().t().contiguous()
            grad_x = F.embedding_bag(cols, table, offsets, mode="sum", per_sample_weights=g)
        return grad_x, grad_W_enc, grad_b_enc, grad_b_dec, None, None, None


def _row_offsets(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Start of each row's entries in a row-sorted COO list (empty rows allowed)."""
    counts = torch.bincount(rows, minlength=n_rows)
    return torch.cumsum(counts, 0) - counts


def _pre_activation(x, W_enc, b_enc, b_dec) -> torch.Tensor:
    with torch.no_grad():
        return torch.addmm(b_enc, x - b_dec, W_enc)


def topk_encode(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """TopK latents of x [rows, d_in] as (values [rows, k], indices [rows, k]): relu of each
    row's k largest pre-activations (zeros where fewer than k are positive)."""
    pre = _pre_activation(x, W_enc, b_enc, b_dec)
    top, indices = pre.topk(k, dim=-1, sorted=False)
    n_rows = x.shape[0]
    rows = torch.arange(n_rows, device=x.device).repeat_interleave(k)
    values = _SparseEncode.apply(x, W_enc, b_enc, b_dec, rows, indices.reshape(-1), top.reshape(-1))
    return values.view(n_rows, k), indices


def batch_topk_encode(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BatchTopK latents (the k * rows largest positive pre-activations of the whole batch) as a
    row-sorted COO list: (values [nnz], indices [nnz], offsets [rows]) for `sparse_decode`."""
    pre = _pre_activation(x, W_enc, b_enc, b_dec)
    n_rows = pre.shape[0]
    threshold = _batch_threshold(pre.reshape(-1), min(k * n_rows, pre.numel()))
    rows, cols = (pre > threshold).nonzero(as_tuple=True)
    values = _SparseEncode.apply(x, W_enc, b_enc, b_dec, rows, cols, pre[rows, cols])
    return values, cols, _row_offsets(rows, n_rows)


def _batch_threshold(flat: torch.Tensor, n_keep: int) -> torch.Tensor:
    """A cut-off t such that the entries > t are the n_keep largest, positive ones (ties at the
    cut-off are all kept).

    Selection by value instead of a full top-k: a strided sample brackets the cut-off, and only
    the entries above the bracket are ranked exactly (all entries when the bracket misses).
    """
    candidates = flat
    stride = 16
    if flat.numel() >= 1 << 16 and n_keep < flat.numel():
        sample = flat[::stride]
        keep_sample = int(1.25 * n_keep / stride) + 16
        if keep_sample < sample.numel():
            low = sample.kthvalue(sample.numel() - keep_sample + 1).values
            above = flat[flat >= low]
            if above.numel() >= n_keep:
                candidates = above
    cut = candidates.kthvalue(candidates.numel() - n_keep + 1).values
    below_cut = torch.nextafter(cut, cut.new_tensor(float("-inf")))
    return torch.maximum(below_cut, cut.new_zeros(()))


def gated_encode(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_gate: torch.Tensor,
    r_mag: torch.Tensor,
    b_mag: torch.Tensor,
    b_dec: torch.Tensor,
    max_density: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """A gated SAE's open gates as a row-sorted COO list: (pi_gate [nnz] > 0, relu(pi_mag) [nnz],
    indices [nnz], offsets [rows]); None when more than ``max_density`` of them are open. Every
    term of the gated loss (the decode, the L1 of relu(pi_gate), the auxiliary decode) is zero
    off the open gates, and so is its gradient."""
    pi_gate = _pre_activation(x, W_enc, b_gate, b_dec)
    open_gates = pi_gate > 0
    if int(open_gates.count_nonzero()) > max_density * open_gates.numel():
        return None
    rows, cols = open_gates.nonzero(as_tuple=True)
    # the open gates' pi_gate is positive, so _SparseEncode's relu keeps it as it is
    gate = _SparseEncode.apply(x, W_enc, b_gate, b_dec, rows, cols, pi_gate[rows, cols])
    magnitude = torch.relu((gate - b_gate[cols]) * r_mag.exp()[cols] + b_mag[cols])
    return gate, magnitude, cols, _row_offsets(rows, x.shape[0])
