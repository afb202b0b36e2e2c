"""Build a C source beside this package into a shared library at first use, cached, and load it with ctypes.

The library is compiled for the machine it runs on (`-O3 -march=native -fopenmp`), the way Triton and
inductor compile their CPU stubs, so the C compiler these need is the only requirement. It is cached under
`$KVSCOPE_CACHE_DIR` (default `$XDG_CACHE_HOME/kvscope` or `~/.cache/kvscope`), keyed by the source and the
headers beside it, the flags, the compiler and the CPU's model and feature flags; a build writes a temporary
file and renames it, so processes that start together (Ray actors, test workers) never load a half-written
library.

Builds (`isa`, from `KVSCOPE_CPU_ISA` where the caller does not name one; see kvscope_isa.h): `native` (the
default: the hand-written AVX-512 paths where the compiler targets AVX-512F), `portable` (never those paths)
and `avx512` (those paths on any x86-64 compiler; loaded only where the CPU has AVX-512F). Each build is its
own cached library. `cpu_lacks(isa)` says why this CPU cannot run a build.

`call_profiled(name, fn, *args)` calls a C function inside a torch.profiler range while a profiler records.

`load_c_library(name)` returns the loaded library, or raises CLibraryUnavailable with one line saying why
(no compiler, a failed compile, `KVSCOPE_CPU_KERNELS=0`, a build this CPU cannot run); `c_kernels(name, isa)`
does so once per process and build, checks the structs the binding mirrors in ctypes against the layouts
the library exports (kvscope.kernels.cpu.c_struct), and returns (library or None, why not). torch is
imported first: its OpenMP runtime then serves the library's `omp` regions (one thread pool, not two).
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
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch  # loads torch's libgomp before ours, so both share one OpenMP runtime
import torch.autograd.profiler as torch_profiler

from kvscope.kernels.cpu.c_struct import layout_mismatch

FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=gnu11")
SOURCE_FLAGS = {  # what a source needs beyond FLAGS, wherever it is built (its binding, the decode program)
    "attention_cpu": ("-ffast-math",),  # vectorised expf (glibc's libmvec), reassociated sums
    "activation_cpu": ("-ffast-math",),  # vectorised expf
}
ISA_FLAGS = {"native": (), "portable": ("-DKVSCOPE_PORTABLE",), "avx512": ("-mavx512f", "-DKVSCOPE_REQUIRE_AVX512")}
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


def cpu_isa() -> str:
    """The build the environment asks for: KVSCOPE_CPU_ISA, `native` where it is unset."""
    return os.environ.get("KVSCOPE_CPU_ISA", "").strip().lower() or "native"


def _unknown_isa(isa: str) -> str:
    return f"KVSCOPE_CPU_ISA={isa}: expected one of {', '.join(ISA_FLAGS)}"


def _cpu_info() -> list[str]:
    """The first core's lines of /proc/cpuinfo that say what it is: model name and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
    return list(dict.fromkeys(ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))))


def _cpu_signature() -> str:
    """The CPU's model name and feature flags (what -march=native compiles for)."""
    return "\n".join(_cpu_info()) or platform.machine() + platform.processor()


def cpu_lacks(isa: str) -> str | None:
    """Why this CPU cannot run build `isa` (one line), or None where it can."""
    if isa not in ISA_FLAGS:
        return _unknown_isa(isa)
    if isa != "avx512":
        return None
    flags = next((ln.split(":", 1)[1].split() for ln in _cpu_info() if ln.startswith("flags")), [])
    if "avx512f" not in flags:
        return f"KVSCOPE_CPU_ISA=avx512: this CPU ({platform.machine()}) has no AVX-512F"
    return None


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise CLibraryUnavailable("no C compiler found (set CC, or install gcc)")
    return cc


def build_c_library(name: str, isa: str = "native") -> Path:
    """Compile `<name>.c` from this folder for build `isa` (once per machine, sources and flags): the library's
    path in the cache. Building needs no CPU that runs the build (loading does)."""
    if isa not in ISA_FLAGS:
        raise CLibraryUnavailable(_unknown_isa(isa))
    flags = (*FLAGS, *ISA_FLAGS[isa], *SOURCE_FLAGS.get(name, ()))
    source = HERE / f"{name}.c"
    cc = _compiler()
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise CLibraryUnavailable(f"C compiler {cc} does not run: {exc}") from None
    texts = [source.read_text(), *(header.read_text() for header in sorted(HERE.glob("*.h")))]
    key = hashlib.sha256("\0".join([*texts, *flags, cc, version, _cpu_signature()]).encode())
    target = cache_dir() / f"{name}-{key.hexdigest()[:16]}.so"
    if not target.exists():
        _build(cc, flags, source, target)
    return target


def load_c_library(name: str, isa: str | None = None) -> ctypes.CDLL:
    """Build (see build_c_library) and load `<name>.c` for build `isa` (default: KVSCOPE_CPU_ISA's)."""
    if os.environ.get("KVSCOPE_CPU_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        raise CLibraryUnavailable("disabled by KVSCOPE_CPU_KERNELS=0")
    isa = cpu_isa() if isa is None else isa
    lacks = cpu_lacks(isa)
    if lacks is not None:
        raise CLibraryUnavailable(lacks)
    target = build_c_library(name, isa)
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
def c_kernels(name: str, isa: str,
              structs: tuple[tuple[str, type[ctypes.Structure]], ...] = ()) -> tuple[ctypes.CDLL | None, str]:
    """(the library of build `isa`, "") once per process and build, or (None, why it cannot be used).
    structs: (C struct name, its ctypes mirror) pairs, each checked against the layout the library exports
    (kvscope_layout_<name>); a mismatch refuses the library and is warned about (a bug, not the machine)."""
    try:
        lib = load_c_library(name, isa)
    except CLibraryUnavailable as exc:
        return None, str(exc)
    for struct, mirror in structs:
        mismatch = layout_mismatch(lib, struct, mirror)
        if mismatch is not None:
            why = f"{name}.c: {mismatch}"
            warnings.warn(f"kvscope's C kernels: {why}; its ctypes binding is not used", RuntimeWarning,
                          stacklevel=2)
            return None, why
    return lib, ""
