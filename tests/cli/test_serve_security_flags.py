"""The security flags on the command line: `kvscope serve --max-request-body-bytes` refuses bad values in one line
naming the flag (exit code 2)."""

import os
import subprocess

import pytest

from support.cli import KVSCOPE, one_line_error


def kvscope(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}  # help on one line per option
    return subprocess.run(KVSCOPE + list(args), capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize(("extra", "needles"), [
    (("--max-request-body-bytes", "0"), ("--max-request-body-bytes", "at least 1", "0")),
    (("--max-request-body-bytes", "lots"), ("--max-request-body-bytes",)),
])
def test_bad_serve_security_flags_are_one_line_and_exit_2(extra, needles):
    one_line_error(kvscope("serve", "recipes/quickstart.yaml", *extra), *needles)


def test_serve_help_names_the_body_limit():
    out = kvscope("serve", "--help")
    assert out.returncode == 0 and "--max-request-body-bytes" in out.stdout, out.stderr
