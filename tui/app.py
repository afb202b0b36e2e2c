"""The kvscope Textual app: a live run (engine in a worker thread, steered by a SessionController)
or a replay of a JSONL recording (a ReplayCursor), drawn by the same panels.

The UI thread pulls events at a steady refresh rate (REFRESH_HZ), folds them into a UIModel (EngineView,
Metrics, StepHistory, BatchTimeline, TokenStream) and redraws; the engine never waits for it. The app only
reads and steers: the cli builds the session or the cursor, measures the device's peaks and records
(kvscope.cli.commands.live, kvscope.cli.commands.replay).
"""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import Footer

from kvscope.costmodel.roofline_bound import Peaks
from kvscope.inspector.live.controller import FAILED, FINISHED, LOADING, PAUSED, RUNNING
from kvscope.inspector.live.device_stats import DeviceSampler
from kvscope.tui.model import UIModel
from kvscope.tui.panels.device_panel import DevicePanel
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
from kvscope.tui.widgets.text_lines import TextLines

if TYPE_CHECKING:
    from kvscope.inspector.export.replay import ReplayCursor
    from kvscope.inspector.live.controller import SessionController

REFRESH_HZ = 15
STATS_REFRESH_S = 0.25  # the statistics panels (latency, roofline) while a live run streams: 4 Hz is plenty
DELAYS_S = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
LIVE_ONLY = {"toggle_pause", "step_once", "slower", "faster", "restart"}
REPLAY_ONLY = {"forward", "back", "goto", "first", "last", "toggle_play"}
PLAYING = "playing"  # a replay moving on by itself
_STATE_STYLE = {RUNNING: "bold green", PAUSED: "bold yellow", FINISHED: "bold cyan", FAILED: "bold red",
                LOADING: "bold magenta", PLAYING: "bold green"}


def _panel(widget: Widget, title: str) -> Widget:
    """`widget` framed as one of the screen's panels, titled."""
    widget.add_class("panel")
    widget.border_title = title
    return widget


class KVScopeApp(App[int]):
    """One app for both sources: pass a SessionController (live) or a ReplayCursor over a UIModel (replay).

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

    def __init__(self, *, controller: SessionController | None = None, replay: ReplayCursor | None = None,
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
        self._live_model = UIModel() if controller is not None else None
        self.selected: int | None = None
        self.playing = False
        self._dirty = True
        self._sampler: DeviceSampler | None = None
        self._peaks_key: tuple[str, str] | None = None
        self._stats_at = 0.0
        self._frozen_after_load = False
        self.exit_error: BaseException | None = None

    # -- the model ------------------------------------------------------------------------------
    @property
    def model(self) -> UIModel:
        return self._live_model if self.replay is None else self.replay.sink

    # -- layout ---------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield TextLines(id="status")
        with Horizontal(id="body"):
            with Vertical(id="left"):
                with Vertical(id="map-panel", classes="panel") as panel:
                    panel.border_title = "KV blocks"
                    yield BlockMap(id="block-map")
                timeline = _panel(BatchTimelineView(id="timeline"), "batch timeline: requests × steps")
                timeline.border_subtitle = LEGEND
                yield timeline
                yield _panel(InfoPanel(id="info"), "selection")
            with VerticalScroll(id="right"):
                yield _panel(FragmentationMeters(id="meters"), "fragmentation: paged vs contiguous")
                yield _panel(SchedulerPanel(id="scheduler"), "scheduler")
                yield _panel(LatencyPanel(frozen=self.deterministic, id="latency"), "latency & throughput")
                yield _panel(SpecDecodePanel(id="spec"), "speculative decoding")
                peaks = self.peaks or peaks_for("cpu", "float32")
                yield _panel(RooflinePanel(peaks, frozen=self.deterministic, id="roofline"), "roofline")
                yield _panel(DevicePanel(frozen=self.deterministic, id="device"), "device")
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

    def on_unmount(self) -> None:
        gc.unfreeze()  # what was frozen at load may be garbage now (the model, the widgets): collectable again
        if self.controller is not None:
            self.controller.stop()
        if self._sampler is not None:
            self._sampler.close()

    # -- refresh --------------------------------------------------------------------------------
    def _tick(self) -> None:
        if not self.is_running:  # a timer that fires while the app shuts down
            return
        if self.replay is not None and self.playing:
            if self.replay.position >= self.replay.last_position:
                self.playing = False
            else:
                self.replay.forward()
            self._dirty = True
        self.sync()

    def sync(self) -> None:
        """Pull pending events and redraw what changed (tests call this after the engine went idle)."""
        controller = self.controller
        if controller is not None:
            if controller.drain(self._live_model):
                self._dirty = True
            if controller.error is not None and self.exit_error is None:
                self.exit_error = controller.error
                if controller.session is None:  # failed while loading: nothing to look at
                    self.exit(2)
                    return
                self.notify(f"engine stopped: {controller.error}", severity="error", timeout=30)
                self._dirty = True
        self._update_status()
        if not self._frozen_after_load and (controller is None or controller.state != LOADING):
            self._frozen_after_load = True  # a replay's timeline, or the live model and tokenizer, are loaded
            self._freeze_long_lived()
        if self._dirty:
            self._dirty = False
            self.refresh_panels()

    @staticmethod
    def _freeze_long_lived() -> None:
        """Move every object alive now (torch, the model, Textual's widgets, a replay's timeline) out of the
        collector's reach. A full collection walks every tracked object: ~30 ms for the 90,000 of a 10,000-block
        replay, a dropped frame each time; after the freeze it walks only what the run creates."""
        gc.collect()
        gc.freeze()

    def refresh_panels(self) -> None:
        model = self.model
        view = model.view
        info = view.info
        if info is not None and self._peaks_key != (info.device, info.dtype):
            self._peaks_key = (info.device, info.dtype)
            self.query_one(RooflinePanel).peaks = self.peaks or peaks_for(info.device, info.dtype, self.gpu_name)
        if self.selected is not None and self.selected not in view.requests:
            self.selected = None
        highlight = frozenset(view.tables.get(self.selected, ())) if self.selected is not None else frozenset()
        self.query_one("#block-map", BlockMap).show_view(view, view.take_touched_blocks(), highlight)
        if model.engines:
            self._engine_maps(model)
        self.query_one(BatchTimelineView).show(model.timeline, self.selected)
        self.query_one(FragmentationMeters).update_from(view)
        self.query_one(SchedulerPanel).update_from(view, self.selected)
        finished = self._run_finished()
        if self._stats_due(finished):
            self.query_one(LatencyPanel).update_from(model.metrics, model.history)
            self.query_one(SpecDecodePanel).update_from(model.metrics)
            self.query_one(RooflinePanel).update_from(model.history)
        summary = model.metrics.summary() if finished else None
        self.query_one(InfoPanel).show(view, self.selected, summary, frozen=self.deterministic, text=model.text)
        if info is not None:
            title = (f"{f'{model.focus}: ' if model.focus else ''}KV blocks: {info.num_blocks} × "
                     f"{info.block_size} tokens · {info.kv_bytes_per_block / 1024:.0f} KiB each")
            map_panel = self.query_one("#map-panel")
            if map_panel.border_title != title:  # setting it repaints the whole panel, so only on change
                map_panel.border_title = title

    def _engine_maps(self, model: UIModel) -> None:
        """A deployment: a block map under the main one for every engine but the focus (which the main map
        shows), mounted the first time the engine is seen; ⇄ marks blocks pinned for a KV transfer."""
        for name, view in model.engines.items():
            if view is model.view:
                continue
            maps = self.query(f"#block-map-{name}")
            if not maps:
                panel = Vertical(BlockMap(id=f"block-map-{name}"), classes="panel engine-map")
                panel.border_title = f"{name}: KV blocks (⇄ pinned for a transfer)"
                self.query_one("#left").mount(panel, after="#map-panel")
                continue  # shown from the next refresh on, once mounted
            maps.first(BlockMap).show_view(view, view.take_touched_blocks())

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
        return self.replay.position >= self.replay.last_position

    def _state_word(self) -> str:
        if self.controller is not None:
            return self.controller.state
        if self.playing:
            return PLAYING
        return FINISHED if self._run_finished() else PAUSED

    def _update_status(self) -> None:
        view = self.model.view
        info = view.info
        text = Text()
        text.append(" kvscope ", style="bold reverse")
        text.append(f" {self.run_title} ", style="bold")
        if info is not None:
            text.append(f"· {info.model} · {info.device}/{info.backend} · {info.dtype} · {info.policy} ",
                        style="dim")
        text.append("│ ")
        text.append(f"step {view.step}", style="bold")
        if self.replay is not None:
            text.append(f" ({self.replay.position}/{self.replay.last_position})", style="dim")
        text.append(" │ ")
        state = self._state_word()
        text.append(state, style=_STATE_STYLE.get(state, "bold"))
        if self.controller is not None and self.controller.delay_s:
            text.append(f" │ delay {self.controller.delay_s:g} s")
        if self.replay is not None and self.replay.timeline.damage:
            text.append(f" │ stopped at damage: {self.replay.timeline.damage}", style="bold red")
        if self.exit_error is not None:
            text.append(f" │ {self.exit_error}", style="bold red")
        self.query_one("#status", TextLines).set_text(text)

    def _sample_device(self) -> None:
        if self._sampler is not None:
            self.query_one(DevicePanel).show(self._sampler.sample())

    # -- selection ------------------------------------------------------------------------------
    def select_request(self, request_id: int | None) -> None:
        self.selected = request_id
        self._dirty = True
        self.sync()

    def on_block_map_selected(self, message: BlockMap.Selected) -> None:
        self.select_request(message.request_id if message.request_id >= 0 else None)

    def on_request_list_selected(self, message: RequestList.Selected) -> None:
        self.select_request(message.request_id)

    def on_batch_timeline_view_selected(self, message: BatchTimelineView.Selected) -> None:
        self.select_request(message.request_id)

    def action_deselect(self) -> None:
        self.select_request(None)

    # -- controls -------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in LIVE_ONLY:
            return self.controller is not None
        if action in REPLAY_ONLY:
            return self.replay is not None
        return True

    def action_toggle_pause(self) -> None:
        self.controller.toggle_pause()
        self.sync()

    def action_step_once(self) -> None:
        if not self.controller.step_once():
            self.notify("pause first (space): n runs one step while paused", timeout=3)

    def _change_delay(self, direction: int) -> None:
        current = self.controller.delay_s
        index = min(range(len(DELAYS_S)), key=lambda i: abs(DELAYS_S[i] - current))
        index = min(max(index + direction, 0), len(DELAYS_S) - 1)
        self.controller.set_delay(DELAYS_S[index])
        self.sync()

    def action_slower(self) -> None:
        self._change_delay(+1)

    def action_faster(self) -> None:
        self._change_delay(-1)

    def action_restart(self) -> None:
        self.selected = None
        self.controller.restart()

    def _replay_move(self, fn: Any, *args: Any) -> None:
        self.playing = False
        fn(*args)
        self._dirty = True
        self.sync()

    def action_forward(self) -> None:
        self._replay_move(self.replay.forward)

    def action_back(self) -> None:
        self._replay_move(self.replay.back)

    def action_first(self) -> None:
        self._replay_move(self.replay.goto, 0)

    def action_last(self) -> None:
        self._replay_move(self.replay.goto, self.replay.last_position)

    def action_toggle_play(self) -> None:
        if self.replay.position >= self.replay.last_position:
            self.replay.goto(0)
        self.playing = not self.playing
        self.sync()

    def action_goto(self) -> None:
        steps = self.replay.timeline.steps
        first, last = (steps[0], steps[-1]) if steps else (-1, -1)

        def done(step: int | None) -> None:
            if step is not None:
                self._replay_move(self.replay.goto_step, step)

        self.push_screen(GotoScreen(first, last), done)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(replay=self.replay is not None))
