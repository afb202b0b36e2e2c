"""Running the `kvscope` command as a user does (a subprocess), and what a refusal must look like."""

import subprocess
import sys

KVSCOPE = [sys.executable, "-m", "kvscope.cli.main"]


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvscope: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]
