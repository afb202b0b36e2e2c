"""Regenerate docs/cli-roofline.svg: `kvscope roofline llama-3.1-8b --batch 8 --context 2048` as rich draws it
on a terminal (colours, the unicode rule, the plot coloured by bound), recorded by rich's own SVG export.

    .venv/bin/python docs/make_cli_screenshot.py [--out docs/cli-roofline.svg]
"""

from __future__ import annotations

import argparse
import io
import sys

from rich.console import Console, Group
from rich.text import Text

from kvscope.cli.commands.roofline import render_plot, render_report
from kvscope.config.model_presets import get_preset
from kvscope.costmodel.devices import get_device
from kvscope.costmodel.roofline_report import analyze_step

COMMAND = "kvscope roofline llama-3.1-8b --batch 8 --context 2048"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:  # the house style draws for a terminal
        return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/cli-roofline.svg")
    args = ap.parse_args()
    sys.stdout = _Terminal()
    report = analyze_step(get_preset("llama-3.1-8b"), get_device("H100-80GB"), batch=8, context=2048,
                          phase="decode")
    console = Console(record=True, width=118, force_terminal=True, color_system="truecolor", file=io.StringIO())
    console.print(Text(f"$ {COMMAND}", style="bold"))
    console.print(Group(render_report(report), Text(""), render_plot(report)))
    console.save_svg(args.out, title=COMMAND)
    sys.stdout = sys.__stdout__
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
