"""`kvscope`: the entry point. Runs the typer app (kvscope.cli.app) and keeps the command line's contract:
bad input of any kind ends in one line on stderr, `kvscope: error: ...`, and exit code 2, never a
traceback. That covers typer's own usage errors (unknown option, missing argument, a value of the wrong
type), every KVScopeError (bad recipe, model file, sizes, recording) and output that cannot be written
(a full disk, `> /dev/full`, standard output closed: `>&-`). A reader that leaves early (`kvscope ... | head`)
ends the command quietly.

`main(argv)` is also the programmatic entry point (tests call it) and returns the exit code.
"""

from __future__ import annotations

import errno
import io
import os
import sys
from typing import Any

from kvscope.errors import KVScopeError


class OutputError(KVScopeError):
    """Standard output cannot be written (a full disk, `> /dev/full`, a closed terminal)."""


class ReaderLeft(Exception):
    """Standard output's reader went away (EPIPE: `kvscope ... | head`). Not an OSError, so that nothing on
    the way up (typer turns an EPIPE into exit code 1) takes it for something else."""


class _GuardedStdout:
    """sys.stdout while a command runs: a failed write or flush becomes an OutputError naming standard output,
    or ReaderLeft when the reader has gone; everything else is the stream's own."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise _output_error(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise _output_error(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _ClosedStdout(io.TextIOBase):
    """Standard output for a command started without one (`kvscope ... >&-`, where Python leaves sys.stdout
    None): not a terminal, and a write fails as one to a closed descriptor does."""

    def write(self, text: str) -> int:
        if not text:
            return 0
        raise OSError(errno.EBADF, "it is closed")


def _closed_stdout() -> _ClosedStdout:
    """sys.stdout when there is none. Descriptor 1 is pointed at /dev/null first, so that no file the command
    opens becomes descriptor 1 (a child process would write its output into that file)."""
    try:
        os.fstat(1)
    except OSError:
        try:
            fd = os.open(os.devnull, os.O_WRONLY)
            if fd != 1:
                os.dup2(fd, 1)
                os.close(fd)
        except OSError:
            pass
    return _ClosedStdout()


def _output_error(exc: OSError) -> ReaderLeft | OutputError:
    if exc.errno == errno.EPIPE:
        return ReaderLeft()
    return OutputError(f"cannot write to standard output: {exc.strerror or exc}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    stdout = sys.stdout
    guarded = sys.stdout = _GuardedStdout(stdout if stdout is not None else _closed_stdout())
    try:
        code = _run(argv)
        sys.stdout.flush()  # a write error surfaces here, while it can still be reported
        return code
    except OutputError as exc:
        _silence_stdout()  # what is left in the buffer would fail again at exit
        return _error(str(exc))
    except ReaderLeft:  # the reader left; say nothing more
        _silence_stdout()
        return 0
    except KVScopeError as exc:
        return _error(str(exc))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        if exc.errno == errno.EPIPE:  # the reader left; say nothing more
            _silence_stdout()
            return 0
        return _error(f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc.strerror or exc))
    finally:
        if sys.stdout is guarded:
            sys.stdout = stdout


def _run(argv: list[str]) -> int:
    import typer
    from typer.main import get_command

    from kvscope.cli.app import app

    command = get_command(app)
    try:
        result = command.main(args=argv, prog_name="kvscope", standalone_mode=False)
    except typer.TyperException as exc:  # typer's (click's) own usage errors
        hint = ""
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            hint = f" (see `{ctx.command_path} --help`)"
        return _error(exc.format_message() + hint)
    except typer.Abort:
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    return int(result or 0)


def _error(message: str) -> int:
    line = " ".join(message.split())  # one line, whatever the message held
    if sys.stderr is None:  # started with standard error closed: nowhere to say it
        return 2
    try:
        print(f"kvscope: error: {line}", file=sys.stderr, flush=True)
    except OSError:
        pass
    return 2


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so the interpreter's last flush at exit has nothing to fail on."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
