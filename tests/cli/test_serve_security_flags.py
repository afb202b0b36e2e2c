"""The security flags on the command line: `kvscope serve --api-key / --max-request-body-bytes` refuse bad values
in one line naming the flag (exit code 2), and every client command takes `--api-key` (OPENAI_API_KEY by default,
as vLLM's clients read it)."""

import os
import subprocess

import pytest

from support.cli import KVSCOPE, one_line_error


def kvscope(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}  # help on one line per option
    return subprocess.run(KVSCOPE + list(args), capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize(("extra", "needles"), [
    (("--api-key", ""), ("--api-key", "empty")),
    (("--api-key", "ok", "--api-key", "  "), ("--api-key", "empty")),
    (("--max-request-body-bytes", "0"), ("--max-request-body-bytes", "at least 1", "0")),
    (("--max-request-body-bytes", "lots"), ("--max-request-body-bytes",)),
])
def test_bad_serve_security_flags_are_one_line_and_exit_2(extra, needles):
    one_line_error(kvscope("serve", "recipes/quickstart.yaml", *extra), *needles)


@pytest.mark.parametrize("command", [("serve",), ("attach",), ("trace",), ("bench", "serve")])
def test_every_command_that_talks_to_a_server_takes_an_api_key(command):
    out = kvscope(*command, "--help")
    assert out.returncode == 0 and "--api-key" in out.stdout, out.stderr
    if command != ("serve",):
        assert "OPENAI_API_KEY" in out.stdout
    else:
        assert "VLLM_API_KEY" in out.stdout and "--max-request-body-bytes" in out.stdout
