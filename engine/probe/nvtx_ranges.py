"""Live NVTX ranges for the engine (domain "kvscope"), so `nsys profile kvscope run ...` shows
every step, phase and kernel by the same names as the other timelines.

The engine calls hook.push(name, category, payload) / hook.pop() around the step (category
RangeCategory.STEP), each phase (Phase.ORDER, category RangeCategory.PHASE; payload = the batch's
token count) and each op (category RangeCategory.KERNEL). The domain, its category ids and one
EventAttributes object per (name, category) are created once and reused, so a push costs a dict
lookup and one call.
Without a tool attached the nvtx package hands out a dummy domain whose every call is a no-op;
then, as without the nvtx package, `nvtx_range_hook()` returns None (the engine's "no ranges").
"""

from __future__ import annotations

from typing import Any

from kvscope.events.vocabulary import Phase, RangeCategory

DOMAIN = "kvscope"
CATEGORIES = (RangeCategory.STEP, RangeCategory.PHASE, RangeCategory.KERNEL)
COLORS = {
    RangeCategory.STEP: 0xFF4C78A8,  # blue
    Phase.SCHEDULE: 0xFFF2CF5B,      # yellow
    Phase.PREPARE: 0xFF72B7B2,       # teal
    Phase.FORWARD: 0xFF54A24B,       # green
    Phase.SAMPLE: 0xFFB279A2,        # purple
    RangeCategory.KERNEL: 0xFF9ECAE9,  # light blue
}


class NvtxRanges:
    """The engine's range hook backed by an nvtx.Domain (cached attributes per name)."""

    __slots__ = ("_attrs", "_categories", "_pop", "_push", "depth", "domain")

    def __init__(self, nvtx_module: Any, domain: str = DOMAIN) -> None:
        self.domain = nvtx_module.get_domain(domain)
        self._push = self.domain.push_range
        self._pop = self.domain.pop_range
        self._categories = {c: self.domain.get_category_id(c) for c in CATEGORIES}
        self._attrs: dict[tuple[str, str], Any] = {}
        self.depth = 0

    def _attributes(self, name: str, category: str) -> Any:
        color = COLORS.get(name) or COLORS.get(category) or COLORS[RangeCategory.KERNEL]
        attrs = self.domain.get_event_attributes(message=name, color=color,
                                                 category=self._categories.get(category, 0) or None)
        self._attrs[(name, category)] = attrs
        return attrs

    def push(self, name: str, category: str, payload: int = 0) -> None:
        attrs = self._attrs.get((name, category))
        if attrs is None:
            attrs = self._attributes(name, category)
        if payload and attrs is not None:
            self._push(attrs, payload=payload)  # updates the cached object for this push
        else:
            self._push(attrs)
        self.depth += 1

    def pop(self) -> None:
        self._pop()
        self.depth -= 1


def nvtx_range_hook(domain: str = DOMAIN) -> NvtxRanges | None:
    """A live NVTX range hook; None when the nvtx package is not installed, or when no tool (nsys, ncu)
    is attached to record ranges: nvtx then hands out a do-nothing domain, and the engine is better
    off not calling it at all."""
    try:
        import nvtx
    except ImportError:
        return None
    ranges = NvtxRanges(nvtx, domain)
    dummy = getattr(getattr(nvtx, "_lib", None), "DummyDomain", None)
    if dummy is not None and isinstance(ranges.domain, dummy):
        return None
    return ranges
