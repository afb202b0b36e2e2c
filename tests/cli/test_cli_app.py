"""The typer command line: help with examples, shell completion, no-argument and --version behaviour,
rich output (colour on a terminal, plain when piped or under NO_COLOR), and progress bars that show only
on a terminal."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

from kvscope.cli.main import main
from kvscope.events.records import RequestEvent, RunInfo, StepBegin, StepEnd
from kvscope.events.vocabulary import ARRIVED, FINISHED
from support.cli import KVSCOPE
from support.paths import REPO_ROOT

ROOT = REPO_ROOT
ANSI = re.compile(r"\x1b\[[0-9;]*m")
COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-9]|38|9[0-7])[;m]")


def kvscope(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*KVSCOPE, *args], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, **(env or {})})


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_help_lists_every_command_and_shows_examples() -> None:
    out = kvscope("--help")
    assert out.returncode == 0, out.stderr
    for command in ("run", "trace", "replay", "kv", "roofline", "bench"):
        assert re.search(rf"^\W*{command}\s", out.stdout, re.M), command
    assert "--install-completion" in out.stdout
    kv = kvscope("kv", "--help")
    assert kv.returncode == 0
    assert "Examples" in kv.stdout and "kvscope kv llama-2-7b --context 4096" in kv.stdout
    assert "--gpu-mem" in kv.stdout and "--context" in kv.stdout


def test_no_command_prints_help_and_exits_2(capsys) -> None:
    assert main([]) == 2
    assert "Usage" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("kvscope ")


def test_shell_completion_completes_commands_and_options() -> None:
    script = kvscope("--show-completion", "bash")
    assert script.returncode == 0 and "_KVSCOPE_COMPLETE" in script.stdout
    commands = kvscope(env={"_KVSCOPE_COMPLETE": "complete_bash", "COMP_WORDS": "kvscope ro", "COMP_CWORD": "1"})
    assert commands.stdout.split() == ["roofline"]
    options = kvscope(env={"_KVSCOPE_COMPLETE": "complete_bash", "COMP_WORDS": "kvscope kv llama-2-7b --gpu",
                           "COMP_CWORD": "3"})
    assert set(options.stdout.split()) == {"--gpu", "--gpu-mem", "--gpus"}


def test_tables_are_coloured_on_a_terminal_and_plain_otherwise(monkeypatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(sys, "stdout", FakeTerminal())
    assert main(["roofline", "llama-3.1-8b", "--batch", "8"]) == 0
    terminal = sys.stdout.getvalue()
    assert COLOUR.search(terminal), "no colour on a terminal"
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setattr(sys, "stdout", FakeTerminal())
    assert main(["roofline", "llama-3.1-8b", "--batch", "8"]) == 0
    assert not COLOUR.search(sys.stdout.getvalue()), "colour under NO_COLOR"
    piped = kvscope("roofline", "llama-3.1-8b", "--batch", "8")
    assert piped.returncode == 0 and "\x1b" not in piped.stdout
    assert not any(line != line.rstrip() for line in piped.stdout.splitlines()), "trailing spaces in a pipe"
    # the same rows either way
    assert [line.split()[:2] for line in ANSI.sub("", terminal).splitlines() if " qkv " in line] == \
        [line.split()[:2] for line in piped.stdout.splitlines() if " qkv " in line]


def test_json_is_unchanged_by_the_terminal(monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdout", FakeTerminal())
    assert main(["kv", "llama-2-7b", "--context", "2000", "--json"]) == 0
    assert json.loads(sys.stdout.getvalue())["bytes_per_token"] == 524_288


TINY = """
name: tiny-progress
model: {source: random, shape: tiny, seed: 0}
cache: {block_size: 4, num_blocks: 64}
scheduler: {max_model_len: 64}
sampling: {max_tokens: 4, ignore_eos: true}
workload: {synthetic: {num_requests: 3, prompt_len: {min: 4, max: 8}, output_len: {min: 2, max: 4}}}
"""


def test_headless_run_shows_a_progress_bar_only_on_a_terminal(tmp_path, monkeypatch, capsys) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY)
    assert main(["run", str(recipe), "--headless"]) == 0
    assert capsys.readouterr().err == ""  # piped: nothing extra
    err = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["run", str(recipe), "--headless"]) == 0
    shown = ANSI.sub("", err.getvalue())
    assert "loading random tiny" in shown
    assert "3/3 requests" in shown and "tok/s" in shown and "tiny-progress" in shown


def test_run_tracker_counts_finished_requests_and_tokens() -> None:
    from rich.console import Console
    from rich.progress import Progress

    from kvscope.cli.progress import RunTracker

    progress = Progress(console=Console(file=io.StringIO()), auto_refresh=False)
    tracker = RunTracker(progress, "run", total_requests=2)
    info = RunInfo(0, -1, "m", 1, 1, 1, 1, 1, "f", "cpu", "torch", "continuous", 8, 4, 64, 16, 4, 64)
    for ev in (info, RequestEvent(1, 0, 0, ARRIVED), RequestEvent(1, 0, 1, ARRIVED), StepBegin(2, 0),
               StepEnd(1_000_002, 0, 2, 8, 16, sampled=((0, 1), (1, 1))), StepBegin(1_000_003, 1),
               RequestEvent(1_500_000, 1, 0, FINISHED, reason="length"),
               StepEnd(2_000_003, 1, 1_000_003, 2, 16, sampled=((0, 1), (1, 1)))):
        tracker(ev)
    task = progress.tasks[0]
    assert (tracker.done, tracker.tokens, task.completed, task.total) == (1, 4, 1, 2)
    assert task.fields["detail"].startswith("1/2 requests")


class GoneReader(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


class FullDisk(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")


def test_a_reader_that_left_ends_quietly_and_a_full_disk_is_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "stdout", GoneReader())
    monkeypatch.setattr("kvscope.cli.main._silence_stdout", lambda: None)  # leave the test's real fd 1 alone
    assert main(["kv", "llama-2-7b"]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys, "stdout", FullDisk())
    assert main(["roofline", "llama-2-7b", "--json"]) == 2
    assert capsys.readouterr().err == "kvscope: error: cannot write to standard output: No space left on device\n"
