"""The kvscope Textual app: a live run (engine in a worker thread, steered through a RunController)
or a replay of a JSONL recording (a ReplayCursor), drawn by the same panels.

The app's state is reactive: the model shown (`model`, the current view), the selected request, the run state,
the delay between steps, the replay's position and whether it plays, an engine error. Actions change a
reactive; its watchers steer the run or the cursor and redraw the widgets that show it (the status line is
bound to the state, the delay and the error with data_bind). The UI thread pulls the controller's events at a
steady refresh rate (REFRESH_HZ, `sync`) and folds them into a UIModel (EngineView, Metrics, StepHistory,
BatchTimeline, TokenStream); the engine never waits for it. The app only reads and steers: the cli builds the
session or the cursor, measures the device's peaks and records (kvscope.cli.commands.live,
kvscope.cli.commands.replay).
"""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.reactive import var
from textual.widget import Widget
from textual.widgets import Footer

from kvscope.costmodel.roofline_bound import Peaks
from kvscope.inspector.human_units import human_bytes
from kvscope.inspector.live.controller import FINISHED, LOADING, PAUSED, RUNNING
from kvscope.inspector.live.device_stats import DeviceSampler
from kvscope.tui.model import UIModel
from kvscope.tui.panels.device_panel import DevicePanel
from kvscope.tui.panels.engine_maps import EngineMaps
from kvscope.tui.panels.info_panel import InfoPanel
from kvscope.tui.panels.latency_panel import LatencyPanel
from kvscope.tui.panels.roofline_panel import RooflinePanel
from kvscope.tui.panels.scheduler_panel import SchedulerPanel
from kvscope.tui.panels.spec_panel import SpecDecodePanel
from kvscope.tui.peaks import peaks_for
from kvscope.tui.screens import GotoScreen, HelpScreen
from kvscope.tui.widgets.batch_timeline import LEGEND, BatchTimelineView
from kvscope.tui.widgets.block_map import BlockMap
from kvscope.tui.widgets.meters import FragmentationMeters
from kvscope.tui.widgets.request_list import RequestList
from kvscope.tui.widgets.status_line import PLAYING, StatusLine

if TYPE_CHECKING:
    from kvscope.inspector.export.replay import ReplayCursor
    from kvscope.inspector.live.controller import RunController

REFRESH_HZ = 15
STATS_REFRESH_S = 0.25  # the statistics panels (latency, roofline) while a live run streams: 4 Hz is plenty
DELAYS_S = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
LIVE_ONLY = {"toggle_pause", "step_once", "slower", "faster", "restart"}
REPLAY_ONLY = {"forward", "back", "goto", "first", "last", "toggle_play"}


def _panel(widget: Widget, title: str) -> Widget:
    """`widget` framed as one of the screen's panels, titled."""
    widget.add_class("panel")
    widget.border_title = title
    return widget


def next_delay(current: float, direction: int) -> float:
    """The delay of DELAYS_S `direction` places from the one nearest `current` (clamped to the ends)."""
    index = min(range(len(DELAYS_S)), key=lambda i: abs(DELAYS_S[i] - current))
    return DELAYS_S[min(max(index + direction, 0), len(DELAYS_S) - 1)]


class KVScopeApp(App[int]):
    """One app for both sources: pass a RunController (live: a SessionController, or attach's RemoteController)
    or a ReplayCursor over a UIModel (replay).

    `peaks`: the roofs the roofline panel compares with (measured by the cli for a live run); None: the
    datasheet preset of the run's device (named after `gpu_name`, NVML's name of the GPU).
    """

    CSS_PATH = "kvscope.tcss"
    TITLE = "kvscope"
    BINDINGS = [
        Binding("space", "toggle_pause", "pause/resume"),
        Binding("n", "step_once", "step"),
        Binding("plus", "slower", "slower"),
        Binding("minus", "faster", "faster"),
        Binding("r", "restart", "restart"),
        Binding("space", "toggle_play", "play/pause"),
        Binding("left,h", "back", "◀ step"),
        Binding("right,l", "forward", "step ▶"),
        Binding("g", "goto", "go to step"),
        Binding("home", "first", "first", show=False),
        Binding("end", "last", "last", show=False),
        Binding("escape", "deselect", "deselect", show=False),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit", "quit"),
    ]

    model: var[UIModel] = var(UIModel, init=False)
    """The model the panels draw (the current view): the live run's, or the replay cursor's, which going back
    replaces. Assigned, or mutated (`mutate_reactive`) when events were folded into it: the panels redraw."""
    selected: var[int | None] = var(None, init=False)
    """The selected request (its blocks highlighted, its row marked, its table and text under the map)."""
    run_state: var[str] = var(LOADING, init=False)
    """loading / running / paused / finished / failed (the controller's), or playing in a replay."""
    delay_s: var[float] = var(0.0, init=False)
    """The live run's pause between steps (+ / -); its watcher tells the controller."""
    position: var[int] = var(0, init=False)
    """The replay cursor's position; its watcher moves the cursor."""
    playing: var[bool] = var(False, init=False)
    """A replay moving on by itself, a position per refresh."""
    exit_error: var[BaseException | None] = var(None, init=False)
    """The engine's error, once it stopped on one (shown, then re-raised by the cli)."""

    def __init__(self, *, controller: RunController | None = None, replay: ReplayCursor[UIModel] | None = None,
                 title: str = "", deterministic: bool = False, refresh_hz: float = REFRESH_HZ,
                 gpu_name: str = "", peaks: Peaks | None = None) -> None:
        super().__init__()
        if (controller is None) == (replay is None):
            raise ValueError("KVScopeApp needs exactly one of controller / replay")
        self.controller = controller
        self.replay = replay
        self.run_title = title
        self.deterministic = deterministic
        self.refresh_hz = refresh_hz
        self.gpu_name = gpu_name
        self.peaks = peaks
        self.set_reactive(KVScopeApp.model, UIModel() if replay is None else replay.sink)
        if replay is not None:
            self.set_reactive(KVScopeApp.position, replay.position)
        self._sampler: DeviceSampler | None = None
        self._peaks_key: tuple[str, str] | None = None
        self._stats_at = 0.0
        self._frozen_after_load = False

    @property
    def _live(self) -> RunController:
        """The controller, for what only a live run does (check_action keeps its keys from a replay)."""
        assert self.controller is not None, "a live run's action in a replay"
        return self.controller

    @property
    def _cursor(self) -> ReplayCursor[UIModel]:
        """The cursor, for what only a replay does (its keys, its position, playing)."""
        assert self.replay is not None, "a replay's action in a live run"
        return self.replay

    # -- layout ---------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        """The screen, and a reference to every widget the app draws into (made once, here)."""
        replay = self.replay
        self._status = StatusLine(self.run_title, last_position=replay.last_position if replay else None,
                                  damage=replay.timeline.damage if replay else "", id="status")
        yield self._status.data_bind(state=KVScopeApp.run_state, delay_s=KVScopeApp.delay_s,
                                     error=KVScopeApp.exit_error)
        with Horizontal(id="body"):
            with Vertical(id="left"):
                with Vertical(id="map-panel", classes="panel") as self._map_panel:
                    self._map_panel.border_title = "KV blocks"
                    self._block_map = BlockMap(id="block-map")
                    yield self._block_map
                self._engine_maps = EngineMaps(id="engine-maps")
                yield self._engine_maps
                self._timeline = BatchTimelineView(id="timeline")
                yield _panel(self._timeline, "batch timeline: requests × steps")
                self._timeline.border_subtitle = LEGEND
                self._info = InfoPanel(id="info")
                yield _panel(self._info, "selection")
            with VerticalScroll(id="right"):
                self._meters = FragmentationMeters(id="meters")
                yield _panel(self._meters, "fragmentation: paged vs contiguous")
                self._scheduler = SchedulerPanel(id="scheduler")
                yield _panel(self._scheduler, "scheduler")
                self._latency = LatencyPanel(frozen=self.deterministic, id="latency")
                yield _panel(self._latency, "latency & throughput")
                self._spec = SpecDecodePanel(id="spec")
                yield _panel(self._spec, "speculative decoding")
                self._roofline = RooflinePanel(self.peaks or peaks_for("cpu", "float32"), frozen=self.deterministic,
                                               id="roofline")
                yield _panel(self._roofline, "roofline")
                self._device = DevicePanel(frozen=self.deterministic, id="device")
                yield _panel(self._device, "device")
        yield Footer()

    def on_mount(self) -> None:
        if self.controller is not None:
            self.controller.start()
        if not self.deterministic:
            self._sampler = DeviceSampler()
            self._sample_device()
            self.set_interval(1.0, self._sample_device)
        self.set_interval(1.0 / self.refresh_hz, self._tick)
        self.sync()
        self.refresh_panels()  # the first picture; from here on the reactives' watchers redraw

    def on_unmount(self) -> None:
        gc.unfreeze()  # what was frozen at load may be garbage now (the model, the widgets): collectable again
        if self.controller is not None:
            self.controller.stop()
        if self._sampler is not None:
            self._sampler.close()

    # -- pulling from the run -------------------------------------------------------------------
    def _tick(self) -> None:
        if not self.is_running:  # a timer that fires while the app shuts down
            return
        if self.playing:
            if self.position >= self._cursor.last_position:
                self.playing = False
            else:
                self.position += 1
        self.sync()

    def sync(self) -> None:
        """Pull what changed off the UI thread into the reactives: the controller's queued events into the
        model, its state and its delay; or the cursor's position, when other hands moved it. The refresh timer
        calls it; tests and benchmarks call it after the engine went idle."""
        controller = self.controller
        if controller is None:
            self.position = self._cursor.position
            self.run_state = self._state_word()
        else:
            if controller.drain(self.model):
                self.mutate_reactive(KVScopeApp.model)
            if controller.error is not None and self.exit_error is None:
                self.exit_error = controller.error
                if controller.session is None:  # failed while loading: nothing to look at
                    self.exit(2)
                    return
                self.notify(f"engine stopped: {controller.error}", severity="error", timeout=30)
                self.refresh_panels()
            self.run_state = controller.state
            self.delay_s = controller.delay_s
        if not self._frozen_after_load and self.run_state != LOADING:
            self._frozen_after_load = True  # a replay's timeline, or the live model and tokenizer, are loaded
            self._freeze_long_lived()

    @staticmethod
    def _freeze_long_lived() -> None:
        """Move every object alive now (torch, the model, Textual's widgets, a replay's timeline) out of the
        collector's reach. A full collection walks every tracked object: ~30 ms for the 90,000 of a 10,000-block
        replay, a dropped frame each time; after the freeze it walks only what the run creates."""
        gc.collect()
        gc.freeze()

    # -- watchers -------------------------------------------------------------------------------
    def watch_model(self) -> None:
        self.refresh_panels()

    def watch_selected(self) -> None:
        self._show_selection(self.model)

    def watch_position(self, position: int) -> None:
        cursor = self._cursor
        cursor.goto(position)
        self.set_reactive(KVScopeApp.model, cursor.sink)  # a new one when the cursor went back
        self.mutate_reactive(KVScopeApp.model)
        self.run_state = self._state_word()

    def validate_position(self, position: int) -> int:
        return min(max(position, 0), self.replay.last_position) if self.replay is not None else 0

    def watch_playing(self) -> None:
        self.run_state = self._state_word()

    def watch_delay_s(self, delay_s: float) -> None:
        if self.controller is not None and self.controller.delay_s != delay_s:
            self.controller.set_delay(delay_s)

    # -- drawing --------------------------------------------------------------------------------
    def refresh_panels(self) -> None:
        """Redraw the panels from the model: the maps, meters, scheduler and selection on every call, the
        statistics when due (_stats_due), the status line's step."""
        model = self.model
        view = model.view
        info = view.info
        if info is not None and self._peaks_key != (info.device, info.dtype):
            self._peaks_key = (info.device, info.dtype)
            self._roofline.peaks = self.peaks or peaks_for(info.device, info.dtype, self.gpu_name)
        if self.selected is not None and self.selected not in view.requests:
            self.set_reactive(KVScopeApp.selected, None)  # its widgets are redrawn below, with the rest
        self._show_selection(model)
        self._engine_maps.show(model)
        self._meters.update_from(view)
        if self._stats_due(self._run_finished()):
            self._latency.update_from(model.metrics, model.history)
            self._spec.update_from(model.metrics)
            self._roofline.update_from(model.history)
        status = self._status
        status.info, status.step = info, view.step
        if self.replay is not None:
            status.position = self.replay.position
        if info is not None:
            title = (f"{f'{model.focus}: ' if model.focus else ''}KV blocks: {info.num_blocks} × "
                     f"{info.block_size} tokens · {human_bytes(info.kv_bytes_per_block, '.0f')} each")
            if self._map_panel.border_title != title:  # setting it repaints the whole panel, so only on change
                self._map_panel.border_title = title

    def _show_selection(self, model: UIModel) -> None:
        """What shows the selected request: its blocks in the map, its timeline row and request-list row, its
        table and text (or, with none selected and the run over, the run's summary)."""
        view = model.view
        selected = self.selected
        highlight = frozenset(view.tables.get(selected, ())) if selected is not None else frozenset()
        self._block_map.show_view(view, view.take_touched_blocks(), highlight)
        self._timeline.show(model.timeline, selected)
        self._scheduler.update_from(view, selected)
        summary = model.metrics.summary() if self._run_finished() else None
        self._info.show(view, selected, summary, frozen=self.deterministic, text=model.text)

    def _stats_due(self, finished: bool) -> bool:
        """Percentiles and sparklines are repainted at STATS_REFRESH_S while a live run streams (they are
        summaries, and repainting them is a third of a frame); at once when paused, stepped or done."""
        now = time.monotonic()
        streaming = (self.controller is not None and self.controller.state == RUNNING and not finished
                     and not self.deterministic)
        if streaming and now - self._stats_at < STATS_REFRESH_S:
            return False
        self._stats_at = now
        return True

    def _run_finished(self) -> bool:
        if self.controller is not None:
            return self.controller.finished
        cursor = self._cursor
        return cursor.position >= cursor.last_position

    def _state_word(self) -> str:
        if self.controller is not None:
            return self.controller.state
        if self.playing:
            return PLAYING
        return FINISHED if self._run_finished() else PAUSED

    def _sample_device(self) -> None:
        if self._sampler is not None:
            self._device.show(self._sampler.sample())

    # -- selection ------------------------------------------------------------------------------
    def select_request(self, request_id: int | None) -> None:
        self.selected = request_id

    def on_block_map_selected(self, message: BlockMap.Selected) -> None:
        self.selected = message.request_id if message.request_id >= 0 else None

    def on_request_list_selected(self, message: RequestList.Selected) -> None:
        self.selected = message.request_id

    def on_batch_timeline_view_selected(self, message: BatchTimelineView.Selected) -> None:
        self.selected = message.request_id

    def action_deselect(self) -> None:
        self.selected = None

    # -- controls -------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in LIVE_ONLY:
            return self.controller is not None
        if action in REPLAY_ONLY:
            return self.replay is not None
        return True

    def action_toggle_pause(self) -> None:
        self._live.toggle_pause()
        self.run_state = self._live.state

    def action_step_once(self) -> None:
        if not self._live.step_once():
            self.notify("pause first (space): n runs one step while paused", timeout=3)

    def action_slower(self) -> None:
        self.delay_s = next_delay(self.delay_s, +1)

    def action_faster(self) -> None:
        self.delay_s = next_delay(self.delay_s, -1)

    def action_restart(self) -> None:
        self.selected = None
        self._live.restart()

    def _move_to(self, position: int) -> None:
        self.playing = False
        self.position = position

    def action_forward(self) -> None:
        self._move_to(self._cursor.position + 1)

    async def action_back(self) -> None:  # App's own (back to the previous screen) is async: so is this one
        self._move_to(self._cursor.position - 1)

    def action_first(self) -> None:
        self._move_to(0)

    def action_last(self) -> None:
        self._move_to(self._cursor.last_position)

    def action_toggle_play(self) -> None:
        cursor = self._cursor
        if cursor.position >= cursor.last_position:
            self.position = 0
        self.playing = not self.playing

    def action_goto(self) -> None:
        cursor = self._cursor
        steps = cursor.timeline.steps
        first, last = (steps[0], steps[-1]) if steps else (-1, -1)

        def done(step: int | None) -> None:
            if step is not None:
                self.playing = False
                cursor.goto_step(step)
                self.position = cursor.position

        self.push_screen(GotoScreen(first, last), done)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(replay=self.replay is not None))
