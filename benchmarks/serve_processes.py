"""The two servers the side-by-side runs start: `kvscope serve` and vLLM's `vllm serve`, each a process of its
own on a free loopback port, up when /health answers 200, stopped (terminate, then kill) on exit.

vLLM comes from the venv `make vllm-venv` builds (`.venv-vllm`) and serves `build/smollm2-hf`, the folder
`make smollm2-hf` converts from the same GGUF kvscope serves. Its CPU settings: 2 GiB of KV cache
(VLLM_CPU_KVCACHE_SPACE), OpenMP threads bound to this machine's cores, float32 (the weights as converted),
eager mode (no torch.compile: a start takes ~25 s instead of minutes), nothing from a hub.
`vllm_missing()` says what is not built yet, so a caller can say so in one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import httpx

from kvscope.serve.server.api_server import free_port

REPO = Path(__file__).resolve().parents[1]
VLLM_VENV = REPO / ".venv-vllm"
VLLM_BIN = VLLM_VENV / "bin" / "vllm"
SMOLLM2_HF = REPO / "build" / "smollm2-hf"
SERVED_NAME = "smollm2"


def vllm_missing() -> str | None:
    """None when vLLM and the converted model are built, else what to run."""
    if not VLLM_BIN.exists():
        return f"{VLLM_BIN} is missing (make vllm-venv)"
    if not (SMOLLM2_HF / "config.json").exists():
        return f"{SMOLLM2_HF} is missing (make smollm2-hf)"
    return None


def vllm_env() -> dict[str, str]:
    cores = os.cpu_count() or 1
    return {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "2",
            "VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1", "TRANSFORMERS_VERBOSITY": "error"}


def pinned(cpus: str | None) -> list[str]:
    """The prefix that runs a command on `cpus` (taskset's list form), or nothing."""
    return ["taskset", "-c", cpus] if cpus else []


class ServerProcess:
    """A server command on `port`, ready once GET /health is 200 (within start_timeout seconds)."""

    def __init__(self, argv: Sequence[str], port: int, env: dict[str, str] | None = None,
                 start_timeout: float = 300.0, log: Path | None = None) -> None:
        self.argv, self.port, self.env, self.start_timeout, self.log = list(argv), port, env, start_timeout, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def pin(self, cpus: str) -> ServerProcess:
        """Run on `cpus` only (before it starts); a vLLM server's OpenMP threads are bound to them too."""
        self.argv = pinned(cpus) + self.argv
        if self.env is not None and "VLLM_CPU_OMP_THREADS_BIND" in self.env:
            self.env = {**self.env, "VLLM_CPU_OMP_THREADS_BIND": cpus}
        return self

    def __enter__(self) -> ServerProcess:
        self._log = open(self.log, "wb") if self.log else None  # closed in __exit__
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self._log or subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"{self.argv[0]} did not come up on {self.url} (exit {self.proc.returncode}; "
                           f"log: {self.log or 'not kept'})")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()


PLUGIN_ENV = {"KVSCOPE_VLLM": "1", "VLLM_PLUGINS": "kvscope"}  # kvscope's vLLM plugin on (kvscope.integrations.vllm)


def vllm_server(*flags: str, log: Path | None = None, plugin: bool = False) -> ServerProcess:
    """`vllm serve build/smollm2-hf` named `smollm2`, with `flags` after the CPU settings above; `plugin`: with
    kvscope's vLLM plugin on."""
    port = free_port()
    argv = [str(VLLM_BIN), "serve", str(SMOLLM2_HF), "--host", "127.0.0.1", "--port", str(port),
            "--served-model-name", SERVED_NAME, "--dtype", "float32", "--enforce-eager",
            "--generation-config", "vllm", "--max-model-len", "2048", *flags]
    return ServerProcess(argv, port, {**vllm_env(), **(PLUGIN_ENV if plugin else {})}, log=log)


def kvscope_server(model: str = SERVED_NAME, *flags: str, log: Path | None = None) -> ServerProcess:
    """`kvscope serve MODEL` (this interpreter's kvscope) with `flags`."""
    port = free_port()
    argv = [sys.executable, "-m", "kvscope.cli.main", "serve", model, "--host", "127.0.0.1", "--port", str(port),
            *flags]
    return ServerProcess(argv, port, start_timeout=120.0, log=log)
