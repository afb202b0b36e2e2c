"""A request's output text as deltas, for streaming: incremental detokenization that honours stop strings.

The engine finds a stop string by decoding the whole output after each token (kvscope.engine.core.stop_check)
and cuts the final text before it. A stream cannot take text back, so OutputTextStream never sends text
that could still turn out to be the start of a stop string: while the request runs it holds back the last
len(longest stop) - 1 characters, and at the end it cuts at the first stop string, as output_text does.
The concatenated deltas are therefore the text the request ends with, whatever the token boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvscope.engine.core.stop_check import stop_string_at
from kvscope.engine.model.tokenizer import IncrementalDetokenizer, Tokenizer


class OutputTextStream:
    """push(new output ids) -> the text it is now safe to send; finish() -> the rest, cut at a stop string."""

    __slots__ = ("_detok", "_hold", "_stops", "sent")

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self._detok: IncrementalDetokenizer = tokenizer.incremental_detokenizer()
        self._stops = list(stop)
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self.sent = 0  # characters of the text already handed out

    @property
    def num_tokens(self) -> int:
        return len(self._detok.ids)

    def push(self, new_ids: Sequence[int]) -> str:
        """Take the step's new output tokens; return the text they make safe to send (maybe "")."""
        self._detok.push(new_ids)
        text = self._detok.text
        end = len(text) - self._hold
        if self._stops:
            cut = stop_string_at(text, self._stops)
            if cut >= 0:
                end = min(end, cut)
        return self._take(text, end)

    def finish(self) -> str:
        """The request ended: the text not yet sent, up to its first stop string."""
        self._detok.flush()
        text = self._detok.text
        cut = stop_string_at(text, self._stops) if self._stops else -1
        return self._take(text, len(text) if cut < 0 else cut)

    def _take(self, text: str, end: int) -> str:
        if end <= self.sent:
            return ""
        delta = text[self.sent:end]
        self.sent = end
        return delta
