"""Verification of draft tokens (speculative decoding): exact, so the output is the target's own.

Greedy requests accept drafts while each equals the target's argmax at its position. Sampled requests
use rejection sampling (Leviathan et al. 2023; Chen et al. 2023): draft x at position i is accepted with
probability min(1, p_i(x) / q_i(x)); at the first rejection the token is drawn from max(0, p_i - q_i)
renormalised; when every draft is accepted one bonus token is drawn from p_k. The emitted tokens are then
distributed exactly as tokens sampled from the target one at a time. p is the target's distribution
after temperature, top-k and top-p (sampling.target_probs); q is the drafter's (a point mass on the draft
when the drafter gives none, as prompt lookup does). Draws use the request's own generator, so a seeded
request is reproducible.
"""

from __future__ import annotations

import torch

from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.worker.sampler import greedy_ids, target_probs


def accept_greedy(target_ids: list[int], drafts: list[int]) -> list[int]:
    """target_ids: the target's argmax at each of the 1 + k positions. Returns the accepted drafts and the
    target's token at the first mismatch (or its bonus token after the last draft)."""
    out: list[int] = []
    for i, draft in enumerate(drafts):
        out.append(target_ids[i])
        if draft != target_ids[i]:
            return out
    out.append(target_ids[len(drafts)])
    return out


def rejection_sample(p: torch.Tensor, drafts: list[int], q: torch.Tensor | None,
                     generator: torch.Generator | None) -> list[int]:
    """p: [k + 1, vocab] target probabilities; q: [k, vocab] draft probabilities or None (point masses on
    the drafts). Returns the accepted drafts and one token drawn from the residual (or bonus) distribution."""
    out: list[int] = []
    for i, x in enumerate(drafts):
        px = float(p[i, x])
        qx = 1.0 if q is None else float(q[i, x])
        u = float(torch.rand((), generator=generator))
        if u * qx < px:  # accept with probability min(1, px / qx); never when px == 0
            out.append(x)
            continue
        if q is None:
            residual = p[i].clone()
            residual[x] = 0.0
        else:
            residual = (p[i] - q[i]).clamp_(min=0.0)
        total = float(residual.sum())
        if total <= 0.0:  # p <= q everywhere yet x was rejected: only rounding gets here
            residual, total = p[i], float(p[i].sum())
        out.append(int(torch.multinomial(residual / total, 1, generator=generator)))
        return out
    out.append(int(torch.multinomial(p[len(drafts)], 1, generator=generator)))
    return out


def verify(logits: torch.Tensor, drafts: list[int], params: SamplingParams, q: torch.Tensor | None,
           generator: torch.Generator | None) -> list[int]:
    """One request's emitted tokens from its 1 + k logits rows ([k + 1, vocab], float32)."""
    if params.greedy:
        return accept_greedy(greedy_ids(logits), drafts)
    return rejection_sample(target_probs(logits, params), drafts, q, generator)
