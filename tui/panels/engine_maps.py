"""A disaggregated deployment's other engines under the main block map: one block-map panel per engine but the
focus one (which the main map shows), ⇄ marking blocks pinned for a KV transfer.

`engines` is a reactive that recomposes the panel: the maps follow the deployment's engines as they are
announced, each map made once when its engine is first seen. Hidden while there is none (a single engine).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive

from kvscope.tui.widgets.block_map import BlockMap

if TYPE_CHECKING:
    from kvscope.tui.model import UIModel


class EngineMaps(Vertical):
    """As tall as `len(engines)` main maps (each engine's map gets one share of the column, like the main one)."""

    engines: reactive[tuple[str, ...]] = reactive((), recompose=True, init=False)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.maps: dict[str, BlockMap] = {}
        self.display = False

    def compose(self) -> ComposeResult:
        self.maps = {name: BlockMap(id=f"block-map-{name}") for name in self.engines}
        for name, block_map in self.maps.items():
            panel = Vertical(block_map, classes="panel engine-map")
            panel.border_title = f"{name}: KV blocks (⇄ pinned for a transfer)"
            yield panel

    def watch_engines(self, engines: tuple[str, ...]) -> None:
        self.display = bool(engines)
        self.styles.height = f"{len(engines)}fr" if engines else None

    def show(self, model: UIModel) -> None:
        """Every engine of `model` but the focus one gets a map; a map is filled once mounted (from the refresh
        after its engine was first seen), then only with the blocks its view touched."""
        self.engines = tuple(name for name, view in model.engines.items() if view is not model.view)
        for name, block_map in self.maps.items():
            view = model.engines.get(name)
            if view is not None and block_map.is_mounted:
                block_map.show_view(view, view.take_touched_blocks())
