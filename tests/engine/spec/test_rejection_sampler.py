"""The rejection sampler reproduces the target's distribution exactly (statistical test).

A toy decoding process over a 4-token vocabulary: the target's distribution at position t is p_t, whatever
came before, and each step a drafter proposes two tokens drawn from q_t, q_{t+1} (or fixed tokens: a point
mass, as prompt lookup gives). Running verification step after step until two tokens are out, the pair
(x1, x2) must be distributed as p_0(x1) p_1(x2), the target's own.

Bound: each of the 16 cells' empirical frequency over N independent trials lies within
eps = sqrt(ln(2 * 16 / delta) / (2 N)) of its probability except with probability delta / 16 (Hoeffding),
so a correct sampler fails a case with probability at most delta = 1e-6; the module's seven statistical checks together
falsely fail with probability below 1e-5. A sampler that recovers from p instead of max(0, p - q), or
accepts with min(1, q(x) / p(x)) instead of min(1, p(x) / q(x)), is off by several eps and must fail.
"""

from __future__ import annotations

import math

import pytest
import torch

from kvscope.config.sampling_params import SamplingParams
from kvscope.engine.worker.rejection_sampler import rejection_sample, verify
from kvscope.engine.worker.sampler import target_probs

V = 4
N = 20_000
DELTA = 1e-6
EPS = math.sqrt(math.log(2 * V * V / DELTA) / (2 * N))

P = torch.tensor([[0.5, 0.3, 0.2, 0.0],     # p = 0 at token 3 where q has mass
                  [0.1, 0.0, 0.6, 0.3],
                  [0.25, 0.25, 0.25, 0.25],
                  [0.7, 0.1, 0.1, 0.1]])
Q = torch.tensor([[0.1, 0.1, 0.2, 0.6],     # q = 0 at token 0 where p has mass (only the residual reaches it)
                  [0.0, 0.5, 0.4, 0.1],
                  [0.4, 0.3, 0.2, 0.1]])
LOGITS = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 1.5, 1.4, -0.5], [0.3, 0.2, 0.1, 0.0], [1.0, 0.0, 0.0, 2.0]])


def empirical_pairs(step, seed: int = 0) -> torch.Tensor:
    """Frequencies of the first two emitted tokens over N runs of `step(t, generator) -> tokens`."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(V, V)
    for _ in range(N):
        out: list[int] = []
        while len(out) < 2:
            out += step(len(out), gen)
        counts[out[0], out[1]] += 1
    return counts / N


def full_q_step(sampler):
    def step(t: int, gen: torch.Generator) -> list[int]:
        q = Q[t:t + 2]
        drafts = torch.multinomial(q, 1, generator=gen).flatten().tolist()
        return sampler(P[t:t + 3], drafts, q, gen)
    return step


def point_mass_step(sampler, drafts_at=(3, 2, 0)):
    def step(t: int, gen: torch.Generator) -> list[int]:
        return sampler(P[t:t + 3], list(drafts_at[t:t + 2]), None, gen)
    return step


def joint(p0: torch.Tensor, p1: torch.Tensor) -> torch.Tensor:
    return p0[:, None] * p1[None, :]


def deviation(freq: torch.Tensor, expected: torch.Tensor) -> float:
    return float((freq - expected).abs().max())


def test_full_draft_distribution_matches_the_target():
    assert deviation(empirical_pairs(full_q_step(rejection_sample)), joint(P[0], P[1])) < EPS


def test_point_mass_drafts_match_the_target():
    """Drafts 3 then 2: the first is never accepted (p_0(3) = 0), the second accepted with p_1(2)."""
    assert deviation(empirical_pairs(point_mass_step(rejection_sample)), joint(P[0], P[1])) < EPS


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.7), SamplingParams(temperature=1.3, top_k=3),
                                    SamplingParams(temperature=1.0, top_p=0.8)], ids=["temperature", "top_k", "top_p"])
def test_warped_targets(params):
    """The target is the distribution after temperature, top-k and top-p (what verify() hands the sampler)."""
    p = target_probs(LOGITS, params)

    def step(t: int, gen: torch.Generator) -> list[int]:
        q = Q[t:t + 2]
        drafts = torch.multinomial(q, 1, generator=gen).flatten().tolist()
        return rejection_sample(p[t:t + 3], drafts, q, gen)

    assert deviation(empirical_pairs(step, seed=1), joint(p[0], p[1])) < EPS


def test_verify_samples_from_the_warped_target_with_the_requests_generator():
    params = SamplingParams(temperature=1.0, top_p=0.8, top_k=3)
    for seed in range(20):
        got = verify(LOGITS[:3], [2, 1], params, Q[:2], torch.Generator().manual_seed(seed))
        want = rejection_sample(target_probs(LOGITS[:3], params), [2, 1], Q[:2], torch.Generator().manual_seed(seed))
        assert got == want
    greedy = verify(LOGITS[:3], [0, 1], SamplingParams(), None, None)
    assert greedy == [0, 1, 0]  # argmaxes 0, 1, 0: both drafts match, then the bonus token


def recover_from_p(p, drafts, q, gen):
    """Wrong: on rejection, draws from p instead of max(0, p - q)."""
    out = []
    for i, x in enumerate(drafts):
        if float(torch.rand((), generator=gen)) * float(q[i, x]) < float(p[i, x]):
            out.append(x)
            continue
        return out + [int(torch.multinomial(p[i], 1, generator=gen))]
    return out + [int(torch.multinomial(p[len(drafts)], 1, generator=gen))]


def inverted_ratio(p, drafts, q, gen):
    """Wrong: accepts a draft with probability min(1, q(x) / p(x)) (the ratio upside down)."""
    out = []
    for i, x in enumerate(drafts):
        if float(torch.rand((), generator=gen)) * float(p[i, x]) < float(q[i, x]):
            out.append(x)
            continue
        residual = (p[i] - q[i]).clamp(min=0.0)
        return out + [int(torch.multinomial(residual / residual.sum(), 1, generator=gen))]
    return out + [int(torch.multinomial(p[len(drafts)], 1, generator=gen))]


@pytest.mark.parametrize("wrong", [recover_from_p, inverted_ratio])
def test_a_wrong_sampler_fails_the_same_check(wrong):
    assert deviation(empirical_pairs(full_q_step(wrong)), joint(P[0], P[1])) > 2 * EPS


def test_the_bound_is_tight_enough_to_matter():
    assert EPS < 0.025  # the wrong samplers are off by far more than this
