"""The text probe: TokenText events (kvscope.events) for a running session's requests.

The engine's events carry token counts, not text; the TUI's token stream and a recording that replays it
need the text. The probe sits beside the engine as a bus subscriber: when a request arrives it decodes the
prompt, and after each step it decodes the tokens the step appended (the tokenizer's incremental
detokenizer, which holds back a character whose bytes are not all there yet) and emits the new text on
the same bus. Special tokens are kept (`<|im_start|>`, an end-of-sequence token): the stream shows what
the model read and wrote. With speculative decoding, the accepted drafts of a step come as their own text
(`drafted`), before the step's last token. It reads the engine's requests and tokenizer (any EngineClient: a
session's engine, one engine of a deployment, a server's), so it lives in the cli, which may import the engine;
the TUI only folds the events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvscope.events.bus import EventBus, now_ns
from kvscope.events.records import RequestEvent, RunInfo, SpecDecode, StepEnd, TokenText
from kvscope.events.vocabulary import ARRIVED, FINISHED
from kvscope.inspector.event_fold import EventFold

if TYPE_CHECKING:
    from kvscope.engine.engine_client import EngineClient
    from kvscope.engine.session import RunSession


class TextProbe(EventFold):
    """Subscribe it last (`attach_text_probe`): the events it emits reach the subscribers before it at once,
    and those after it before the event that caused them."""

    def __init__(self, engine: EngineClient, bus: EventBus) -> None:
        """The text of `engine`'s requests, on `bus` (the bus their events are on)."""
        self.engine = engine
        self.bus = bus
        self._decoders: dict[int, Any] = {}
        self._finished: list[int] = []  # their decoders go once the step's last text is out
        self._accepted: dict[int, int] = {}  # request id -> drafts accepted in this step

    def on_run_info(self, ev: RunInfo) -> None:  # a new run (a restart): new requests, new ids
        self._decoders.clear()
        self._finished.clear()

    def on_request(self, ev: RequestEvent) -> None:
        if ev.what == ARRIVED:
            request = self.engine.requests.get(ev.request_id)
            if request is not None:
                prompt = self.engine.tokenizer.decode(request.prompt_token_ids, skip_special_tokens=False)
                self.bus.emit(TokenText(now_ns(), ev.step, ev.request_id, "", prompt, 0))
        elif ev.what == FINISHED:
            self._finished.append(ev.request_id)

    def on_spec_decode(self, ev: SpecDecode) -> None:
        if ev.num_accepted:
            self._accepted[ev.request_id] = ev.num_accepted

    def on_step_end(self, ev: StepEnd) -> None:
        requests = self.engine.requests
        for rid, _ in ev.sampled:
            request = requests.get(rid)
            if request is None:
                continue
            decoder = self._decoders.get(rid)
            if decoder is None:
                decoder = self._decoders[rid] = self.engine.tokenizer.incremental_detokenizer(
                    skip_special_tokens=False)
            new_ids = request.output_token_ids[len(decoder.ids):]
            drafted = min(self._accepted.pop(rid, 0), len(new_ids))
            if drafted:
                self.bus.emit(TokenText(now_ns(), ev.step, rid, decoder.push(new_ids[:drafted]), "", drafted, True))
                new_ids = new_ids[drafted:]
            if new_ids:
                self.bus.emit(TokenText(now_ns(), ev.step, rid, decoder.push(new_ids), "", len(new_ids)))
        for rid in self._finished:
            decoder = self._decoders.pop(rid, None)
            rest = decoder.flush() if decoder is not None else ""
            if rest:
                self.bus.emit(TokenText(now_ns(), ev.step, rid, rest, "", 0))
        self._finished.clear()
        self._accepted.clear()


def attach_engine_text_probes(session: RunSession) -> list[TextProbe]:
    """A deployment: a TextProbe on each decode engine's own bus, in this process (the TUI's text panel follows
    the first decode engine, under its request ids). Engines in Ray actors get none: their requests live there."""
    assert session.deployment is not None, "attach_engine_text_probes: the session runs no deployment"
    probes = []
    for name, handle in session.deployment.engines.items():
        engine = handle.engine  # an in-process handle's LLMEngine
        if engine is None or not name.startswith("decode"):
            continue
        probe = TextProbe(engine, handle.bus)
        handle.bus.subscribe(probe)
        probes.append(probe)
    return probes


def attach_text_probe(session: RunSession) -> TextProbe:
    """Subscribe a TextProbe to the session's bus (after everything else already on it)."""
    probe = TextProbe(session.engine, session.bus)
    session.bus.subscribe(probe)
    return probe
