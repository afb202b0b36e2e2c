"""Linear layers on a CPU: weights stored input-major, and a split-K path for the few-token matmuls of decode.

A decode step multiplies a handful of activation rows by every weight matrix once: it is bound by how
fast the weights stream from memory, and how a BLAS walks them decides that speed. On the CPUs we measured,
MKL's single-row product (sgemv) over a row-major [out, in] weight runs on one thread at about a third of the
memory bandwidth, while the same product over the transposed, [in, out] storage and split over the
reduction dimension into one batch entry per thread (one `bmm`, summed) streams at the copy bandwidth.

- `input_major(w)`: the same [out, in] matrix, its storage laid out [in, out] (w.t().contiguous().t()).
  Everything that reads the weight as an [out, in] tensor still works (F.linear, F.embedding, .t()).
- `linear_torch(x, w)`: x [T, in] @ w.T. Input-major weights and few tokens (T <= SPLIT_K_MAX_TOKENS)
  take the split-K path; anything else goes to F.linear (a plain GEMM, where the layout does not matter).

The split changes only the order of the float32 additions (two partial sums of in/2 terms each, added).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SPLIT_K_MAX_TOKENS = 64  # above this a GEMM keeps both threads busy on its own


def input_major(weight: torch.Tensor) -> torch.Tensor:
    """[out, in] with strides (1, out): the transposed storage split-K reads as views."""
    return weight.t().contiguous().t()


def is_input_major(weight: torch.Tensor) -> bool:
    return weight.dim() == 2 and weight.stride(0) == 1 and weight.stride(1) == weight.shape[0]


def linear_torch(x: torch.Tensor, weight: torch.Tensor, chunks: int | None = None) -> torch.Tensor:
    """x [T, in] @ weight[out, in].T -> [T, out]. `chunks`: the split of `in` (default: torch's thread count)."""
    tokens, in_features = x.shape[0], weight.shape[1]
    if x.dim() == 2 and 1 <= tokens <= SPLIT_K_MAX_TOKENS and x.device.type == "cpu" and is_input_major(weight):
        chunks = torch.get_num_threads() if chunks is None else chunks
        if chunks > 1 and in_features % chunks == 0:
            part = in_features // chunks
            parts = torch.bmm(x.reshape(tokens, chunks, part).transpose(0, 1), weight.t().view(chunks, part, -1))
            return parts.sum(0)
    return F.linear(x, weight)
