"""`kvscope replay EVENTS.jsonl`: the TUI over a recording (step forward / back, jump to step N)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("events", metavar="EVENTS.jsonl", help="a recording from `kvscope run --record` or trace")
    parser.add_argument("--strict", action="store_true",
                        help="fail on the first corrupt line instead of replaying up to it")


def run(args: argparse.Namespace) -> int:
    from kvscope.inspector.replay import load_timeline

    if not sys.stdout.isatty():
        # no terminal to draw on: check the file and say what it holds
        recording = load_timeline(args.events, strict=args.strict)
        steps = recording.steps
        span = f"steps {steps[0]}..{steps[-1]}" if steps else "no complete step"
        print(f"{args.events}: {len(recording.events)} events, {len(steps)} steps ({span})")
        if recording.damage:
            print(f"kvscope: replay stopped at damage: {recording.damage}", file=sys.stderr)
        print("kvscope: standard output is not a terminal; the replay TUI needs one", file=sys.stderr)
        return 0
    from kvscope.tui.app import run_replay

    return run_replay(args.events, strict=args.strict)
