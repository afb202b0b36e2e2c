"""When a request stops: EOS, a stop token id, a stop string in its text, or its output limit.

Pure functions of the request and the tokenizer; the scheduler calls check_stop after appending
each sampled token, and the engine cuts a finished request's text at its first stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvscope.engine.core.request import Request
    from kvscope.engine.model.tokenizer import Tokenizer


def check_stop(request: Request, tokenizer: Tokenizer) -> str:
    """Why `request` ends after its newest token: "stop", "length", or "" while it goes on."""
    token = request.token_ids[-1]
    params = request.params
    if not params.ignore_eos and token in tokenizer.eos_token_ids:
        return "stop"
    if token in params.stop_token_ids:
        return "stop"
    if params.stop and stop_string_at(tokenizer.decode(request.output_token_ids), params.stop) >= 0:
        return "stop"
    if request.num_output_tokens >= request.max_tokens:
        return "length"
    return ""


def stop_string_at(text: str, stops: Sequence[str]) -> int:
    """Where the earliest of `stops` begins in `text`; -1 if none occurs."""
    return min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)


def output_text(request: Request, tokenizer: Tokenizer) -> str:
    """The request's output as text, ending before its first stop string (stop strings are not returned)."""
    text = tokenizer.decode(request.output_token_ids)
    cut = stop_string_at(text, request.params.stop) if request.params.stop else -1
    return text if cut < 0 else text[:cut]
