"""RequestSelected: the message a widget posts when the user picks a request in it (a block of the map, a
row of the request list or of the batch timeline). Each widget subclasses it as its own `Selected`, so the
app's handler names say where the pick came from (`on_block_map_selected`, ...); `control` is the widget."""

from __future__ import annotations

from textual.message import Message
from textual.widget import Widget


class RequestSelected(Message):
    """`request_id` was picked in `widget` (-1: something that belongs to no request)."""

    def __init__(self, widget: Widget, request_id: int) -> None:
        super().__init__()
        self.widget = widget
        self.request_id = request_id

    @property
    def control(self) -> Widget:
        """The widget the pick was made in."""
        return self.widget
