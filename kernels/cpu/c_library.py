"""Build a C source beside this package into a shared library at first use, cached, and load it with ctypes.

The library is compiled for the machine it runs on (`-O3 -march=native -fopenmp`), the way Triton and
inductor compile their CPU stubs, so the C compiler these need is the only requirement. It is cached under
`$KVSCOPE_CACHE_DIR` (default `$XDG_CACHE_HOME/kvscope` or `~/.cache/kvscope`), keyed by the source, the
flags, the compiler and the CPU's model and feature flags; a build writes a temporary file and renames it,
so processes that start together (Ray actors, test workers) never load a half-written library.

`call_profiled(name, fn, *args)` calls a C function inside a torch.profiler range while a profiler records.

`load_c_library(name)` returns the loaded library, or raises CLibraryUnavailable with one line saying why
(no compiler, a failed compile, `KVSCOPE_CPU_KERNELS=0`); `c_kernels(name)` does so once per process and
returns (library or None, why not). torch is imported first: its OpenMP runtime then
serves the library's `omp` regions (one thread pool, not two).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch  # loads torch's libgomp before ours, so both share one OpenMP runtime
import torch.autograd.profiler as torch_profiler

FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=gnu11")
HERE = Path(__file__).resolve().parent


def call_profiled(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args); while torch.profiler records, inside a range `name` (profiles still show the C kernels)."""
    if torch_profiler._is_profiler_enabled:
        with torch.profiler.record_function(name):
            return fn(*args)
    return fn(*args)


class CLibraryUnavailable(RuntimeError):
    """The C kernels cannot be used here; the message says why in one line."""


def cache_dir() -> Path:
    if os.environ.get("KVSCOPE_CACHE_DIR"):
        return Path(os.environ["KVSCOPE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvscope"


def _cpu_signature() -> str:
    """The CPU's model name and feature flags (what -march=native compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(dict.fromkeys(keep))  # the first core's lines, once each


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise CLibraryUnavailable("no C compiler found (set CC, or install gcc)")
    return cc


def load_c_library(name: str, extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL:
    """Compile (once per machine, source and flags) and load `<name>.c` from this folder."""
    if os.environ.get("KVSCOPE_CPU_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        raise CLibraryUnavailable("disabled by KVSCOPE_CPU_KERNELS=0")
    source = HERE / f"{name}.c"
    cc = _compiler()
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise CLibraryUnavailable(f"C compiler {cc} does not run: {exc}") from None
    flags = (*FLAGS, *extra_flags)
    key = hashlib.sha256("\0".join([source.read_text(), *flags, cc, version, _cpu_signature()]).encode())
    target = cache_dir() / f"{name}-{key.hexdigest()[:16]}.so"
    if not target.exists():
        _build(cc, flags, source, target)
    try:
        return ctypes.CDLL(str(target))
    except OSError as exc:
        raise CLibraryUnavailable(f"loading {target}: {exc}") from None


def _build(cc: str, flags: tuple[str, ...], source: Path, target: Path) -> None:
    """Compile into a temporary file beside `target`, then rename it into place (atomic)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise CLibraryUnavailable(f"cannot write the kernel cache {target.parent}: {exc.strerror or exc} "
                                  f"(set KVSCOPE_CACHE_DIR to a writable folder)") from None
    try:
        done = subprocess.run([cc, *flags, "-o", tmp, str(source), "-lm"], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["no message"]
            first = next((ln for ln in lines if "error" in ln), lines[0])
            raise CLibraryUnavailable(f"compiling {source.name} with {cc} failed: {first}")
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CLibraryUnavailable(f"compiling {source.name} with {cc} failed: {exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def c_kernels(name: str, extra_flags: tuple[str, ...] = ()) -> tuple[ctypes.CDLL | None, str]:
    """(the library, "") once per process, or (None, why it cannot be used)."""
    try:
        return load_c_library(name, extra_flags), ""
    except CLibraryUnavailable as exc:
        return None, str(exc)
