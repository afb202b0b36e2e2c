"""`kvscope` command line: a dispatcher that imports each subcommand's module only when it runs.

Each subcommand module exposes `add_arguments(parser)` and `run(args) -> int`.
Any KVScopeError (bad recipe, bad model file, bad arguments) becomes one line on
stderr, `kvscope: error: ...`, and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from kvscope.engine.errors import KVScopeError
from kvscope.version import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("kvscope.cli.run", "run a recipe: live TUI, or --headless summary"),
    "trace": ("kvscope.cli.trace", "run a recipe and write Perfetto / Nsight / JSONL timelines"),
    "replay": ("kvscope.cli.replay", "open the TUI over a recorded events.jsonl"),
    "kv": ("kvscope.cli.kv", "one-shot KV-cache memory estimate for a model"),
    "roofline": ("kvscope.cli.roofline", "one-shot roofline table for a model on a GPU"),
    "bench": ("kvscope.cli.bench", "run a recipe's variants and compare them"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(2, f"kvscope: error: {message}\n")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = _Parser(prog="kvscope", description="See what an LLM inference engine does with memory and time.")
    parser.add_argument("--version", action="version", version=f"kvscope {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, (module, help_text) in COMMANDS.items():
        sub = subs.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            importlib.import_module(module).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except KVScopeError as exc:
        print(f"kvscope: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `kvscope ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
