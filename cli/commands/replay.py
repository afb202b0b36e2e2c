"""`kvscope replay EVENTS.jsonl`: the TUI over a recording (step forward / back, jump to step N).

replay_app() builds the app over a ReplayCursor of the recording; the TUI (imported only when there
is a terminal to draw on) reads the cursor and moves it, nothing more.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvscope.tui.app import KVScopeApp


def run_replay_command(events: str, *, strict: bool = False) -> int:
    """`kvscope replay`: the TUI on a terminal; otherwise check the file and say what it holds."""
    from kvscope.inspector.export.replay import load_timeline

    if not sys.stdout.isatty():
        recording = load_timeline(events, strict=strict)
        steps = recording.steps
        span = f"steps {steps[0]}..{steps[-1]}" if steps else "no complete step"
        print(f"{events}: {len(recording.events)} events, {len(steps)} steps ({span})")
        if recording.damage:
            print(f"kvscope: replay stopped at damage: {recording.damage}", file=sys.stderr)
        print("kvscope: standard output is not a terminal; the replay TUI needs one", file=sys.stderr)
        return 0
    return run_replay(events, strict=strict)


def replay_app(path: str, *, strict: bool = False, deterministic: bool = False,
               refresh_hz: float | None = None) -> KVScopeApp:
    """The app over a recording, positioned at its last step (refresh_hz None: the app's default).
    Raises RecordingError for a bad file."""
    from kvscope.inspector.export.replay import ReplayCursor, load_timeline
    from kvscope.tui.app import REFRESH_HZ, KVScopeApp
    from kvscope.tui.model import UIModel

    timeline = load_timeline(path, strict=strict)
    cursor = ReplayCursor(timeline, UIModel)
    cursor.goto(cursor.last_position)
    return KVScopeApp(replay=cursor, title=f"replay {Path(path).name}", deterministic=deterministic,
                      refresh_hz=refresh_hz or REFRESH_HZ)


def run_replay(path: str, strict: bool = False) -> int:
    """`kvscope replay EVENTS.jsonl` on a terminal. Damage in the file is shown in the status line (or,
    strict, an error)."""
    app = replay_app(path, strict=strict)
    app.run()
    assert app.replay is not None  # replay_app's app replays
    damage = app.replay.timeline.damage
    if damage:
        print(f"kvscope: replay stopped at damage: {damage}", file=sys.stderr)
    return 0
