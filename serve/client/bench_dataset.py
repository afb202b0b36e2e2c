"""Prompts for `kvscope bench serve`, as `vllm bench serve` builds them: `random` (input / output lengths drawn
uniformly within ±range_ratio of the targets, an optional shared prefix) and `prefix_repetition` (a few
shared prefixes, each followed by unique suffixes: what a prefix cache is for).

The server's tokenizer is not on the client (the server may be any OpenAI-compatible one), so a prompt is
built from words and, when the server offers vLLM's /tokenize and /detokenize (kvscope and vLLM do), cut
to exactly the target number of tokens on the server's own tokenizer; otherwise the target is a word count.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

WORDS = ("the of and to in is was for on that with as it by at from his an were are which this be has or had "
         "one first new after who their they have two been its but also more not time during all other only year "
         "city can over most later into some school such many may world there then where out used when three "
         "team game work state part both between up season known where under each well no film while county "
         "river family life would series since called album war including number made music early being before "
         "north high south several her population played band national same these four area through music "
         "around about system country against major end however him house second group early name five").split()


@dataclass(slots=True)
class SampleRequest:
    prompt: str
    prompt_len: int  # tokens when the server could count them, else words
    expected_output_len: int


Tokenize = Callable[[str], list[int]] | None
Detokenize = Callable[[list[int]], str] | None


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(n, 1)))


def _fit(text: str, n: int, tokenize: Tokenize, detokenize: Detokenize) -> tuple[str, int]:
    """`text` cut to n tokens of the server's tokenizer (or n words without one)."""
    if tokenize is None or detokenize is None:
        words = text.split()[:n]
        return " ".join(words), len(words)
    ids = tokenize(text)[:n]
    return detokenize(ids), len(ids)


def _lengths(rng: random.Random, target: int, ratio: float) -> int:
    lo, hi = max(int(target * (1 - ratio)), 1), max(int(target * (1 + ratio)), 1)
    return rng.randint(lo, hi)


def random_dataset(num_prompts: int, input_len: int, output_len: int, range_ratio: float, prefix_len: int,
                   seed: int, tokenize: Tokenize = None, detokenize: Detokenize = None) -> list[SampleRequest]:
    rng = random.Random(seed)
    prefix = _fit(_words(rng, prefix_len * 2), prefix_len, tokenize, detokenize)[0] if prefix_len else ""
    out = []
    for _ in range(num_prompts):
        n_in = _lengths(rng, input_len, range_ratio)
        body, n = _fit(_words(rng, n_in * 2), n_in, tokenize, detokenize)
        prompt = f"{prefix} {body}" if prefix else body
        out.append(SampleRequest(prompt, n + prefix_len, _lengths(rng, output_len, range_ratio)))
    return out


def prefix_repetition_dataset(num_prompts: int, prefix_len: int, suffix_len: int, num_prefixes: int,
                              output_len: int, seed: int, tokenize: Tokenize = None,
                              detokenize: Detokenize = None) -> list[SampleRequest]:
    rng = random.Random(seed)
    prefixes = [_fit(_words(rng, prefix_len * 2), prefix_len, tokenize, detokenize)[0]
                for _ in range(max(num_prefixes, 1))]
    out = []
    for i in range(num_prompts):
        suffix, n = _fit(_words(rng, suffix_len * 2), suffix_len, tokenize, detokenize)
        out.append(SampleRequest(f"{prefixes[i % len(prefixes)]} {suffix}", prefix_len + n, output_len))
    rng.shuffle(out)
    return out
