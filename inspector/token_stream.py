"""The token stream: each request's prompt and generated text so far, folded from TokenText events
(kvscope.events; a probe beside the engine emits them, kvscope.cli.text_probe). The TUI shows
the selected request's, live and in replay; a run or recording without those events has no text.
Pure python.
"""

from __future__ import annotations

from kvscope.events.records import RunInfo, TokenText
from kvscope.inspector.event_fold import EventFold

KEEP_REQUESTS = 1024  # the oldest requests' text is forgotten past this many


class TokenStream(EventFold):
    """prompt and output text per request id; `version` changes with every text that arrives.
    `drafted[rid]`: (start, end) character spans of the output that are accepted draft tokens."""

    def __init__(self, keep: int = KEEP_REQUESTS) -> None:
        self.keep = keep
        self.prompts: dict[int, str] = {}
        self.pieces: dict[int, list[str]] = {}  # output text, as it came step by step
        self.tokens: dict[int, int] = {}
        self.lengths: dict[int, int] = {}  # characters of output so far
        self.drafted: dict[int, list[tuple[int, int]]] = {}
        self.version = 0

    def has(self, request_id: int) -> bool:
        return request_id in self.prompts or request_id in self.pieces

    def prompt(self, request_id: int) -> str:
        return self.prompts.get(request_id, "")

    def output(self, request_id: int) -> str:
        pieces = self.pieces.get(request_id)
        if not pieces:
            return ""
        if len(pieces) > 1:  # join once; later pieces append to the joined text
            pieces[:] = ["".join(pieces)]
        return pieces[0]

    # ------------------------------------------------------------------ events
    def on_run_info(self, ev: RunInfo) -> None:
        self.prompts.clear()
        self.pieces.clear()
        self.tokens.clear()
        self.lengths.clear()
        self.drafted.clear()
        self.version += 1

    def on_text(self, ev: TokenText) -> None:
        rid = ev.request_id
        if ev.prompt:
            self.prompts[rid] = ev.prompt
            if len(self.prompts) > self.keep:
                self._forget(next(iter(self.prompts)))
        if ev.text:
            self.pieces.setdefault(rid, []).append(ev.text)
            start = self.lengths.get(rid, 0)
            self.lengths[rid] = start + len(ev.text)
            if ev.drafted:
                self.drafted.setdefault(rid, []).append((start, start + len(ev.text)))
        if ev.tokens:
            self.tokens[rid] = self.tokens.get(rid, 0) + ev.tokens
        self.version += 1

    def _forget(self, request_id: int) -> None:
        self.prompts.pop(request_id, None)
        self.pieces.pop(request_id, None)
        self.tokens.pop(request_id, None)
        self.lengths.pop(request_id, None)
        self.drafted.pop(request_id, None)
