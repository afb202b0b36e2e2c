"""The C kernels' builds and the structs their bindings mirror: KVSCOPE_CPU_ISA picks a library of its own
(native, portable, avx512), the AVX-512 paths compile on any x86-64 machine and the portable build never has
them; a ctypes mirror of a C struct is checked field by field against the layout the library exports."""

from __future__ import annotations

import ctypes
import platform

import pytest
import torch
import torch.nn.functional as F

from kvscope.kernels.cpu import c_library
from kvscope.kernels.cpu import linear_cpu as lc
from kvscope.kernels.cpu.c_library import CLibraryUnavailable, build_c_library, cpu_lacks, load_c_library
from kvscope.kernels.cpu.c_struct import c_layout, layout_mismatch, mirror_layout
from kvscope.kernels.cpu.decode_cpu import _Program

SOURCES = sorted(path.stem for path in c_library.HERE.glob("*.c"))
x86_64 = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                            reason=f"-mavx512f is an x86-64 flag; this machine is {platform.machine()}")


@x86_64
@pytest.mark.parametrize("name", SOURCES)
def test_the_avx512_build_compiles_on_any_x86_64_machine(name):
    """Built, not loaded where the CPU lacks AVX-512F: the build fails unless the hand-written paths compile."""
    path = build_c_library(name, "avx512")
    assert path.is_file() and path.stat().st_size > 0


@x86_64
def test_the_portable_build_has_no_avx512_paths_even_where_the_compiler_targets_avx512(monkeypatch):
    both = c_library.ISA_FLAGS["portable"] + c_library.ISA_FLAGS["avx512"]
    monkeypatch.setitem(c_library.ISA_FLAGS, "portable-asking-for-avx512", both)
    with pytest.raises(CLibraryUnavailable, match="compiling linear_cpu.c .* does not target AVX-512F"):
        build_c_library("linear_cpu", "portable-asking-for-avx512")


def test_each_build_is_a_library_of_its_own_picked_by_kvscope_cpu_isa(monkeypatch, tmp_path):
    monkeypatch.setenv("KVSCOPE_CACHE_DIR", str(tmp_path))
    native = load_c_library("linear_cpu", "native")
    monkeypatch.setenv("KVSCOPE_CPU_ISA", "portable")
    portable = load_c_library("linear_cpu")
    built = sorted(p.name for p in tmp_path.glob("linear_cpu-*.so"))
    assert len(built) == 2 and native._name != portable._name
    assert portable._name == str(build_c_library("linear_cpu", "portable"))  # the cached one, not built again
    assert len(list(tmp_path.iterdir())) == 2


def test_a_bad_kvscope_cpu_isa_refuses_the_c_kernels_in_one_line(monkeypatch):
    monkeypatch.setenv("KVSCOPE_CPU_ISA", "sse9")
    with pytest.raises(CLibraryUnavailable, match=r"^KVSCOPE_CPU_ISA=sse9: expected one of native, portable, avx512$"):
        load_c_library("linear_cpu")
    assert lc.linear_cpu_status() == "F.linear (KVSCOPE_CPU_ISA=sse9: expected one of native, portable, avx512)"
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 16, generator=g), torch.randn(8, 16, generator=g)
    assert lc.linear_cpu(x, w) is None and torch.equal(lc.linear(x, w), F.linear(x, w))  # the torch path


@pytest.mark.skipif(cpu_lacks("avx512") is None, reason="this CPU has AVX-512F: the AVX-512 build loads here")
def test_the_avx512_build_is_not_loaded_where_the_cpu_lacks_it():
    with pytest.raises(CLibraryUnavailable, match="KVSCOPE_CPU_ISA=avx512: this CPU .* has no AVX-512F"):
        load_c_library("linear_cpu", "avx512")


def _decode_library() -> ctypes.CDLL:
    return load_c_library("decode_cpu", "native")


def test_the_decode_program_mirror_matches_the_layout_its_library_exports():
    size, fields = c_layout(_decode_library(), "DecodeProgram")
    assert (size, fields) == mirror_layout(_Program)
    assert size == ctypes.sizeof(_Program) and len(fields) == len(_Program._fields_) == 49
    assert fields[0] == ("tokens", 0, 4, "i") and fields[12] == ("eps", 48, 4, "f")
    assert fields[15] == ("bt_stride", 64, 8, "l") and fields[-1][3] == "P"
    assert layout_mismatch(_decode_library(), "DecodeProgram", _Program) is None


def _mirror(fields: list) -> type[ctypes.Structure]:
    return type("WrongProgram", (ctypes.Structure,), {"_fields_": fields})


FIELDS = _Program._fields_
WRONG = {  # a mirror gone wrong: the line that says where
    "two fields swapped": (
        [FIELDS[0], FIELDS[2], FIELDS[1], *FIELDS[3:]],
        "at field 1: layers (offset 4, 4 bytes, kind 'i') in C, hidden (offset 4, 4 bytes, kind 'i') in the mirror"),
    "a float read as an int": (
        [*FIELDS[:12], ("eps", ctypes.c_int), *FIELDS[13:]],
        "at field 12: eps (offset 48, 4 bytes, kind 'f') in C, eps (offset 48, 4 bytes, kind 'i') in the mirror"),
    "an int widened to a long": (
        [("tokens", ctypes.c_long), *FIELDS[1:]],
        "at field 0: tokens (offset 0, 4 bytes, kind 'i') in C, tokens (offset 0, 8 bytes, kind 'l') in the mirror"),
    "a field left out": (
        [*FIELDS[:15], *FIELDS[16:]],
        "at field 15: bt_stride (offset 64, 8 bytes, kind 'l') in C, input_ids (offset 64, 8 bytes, kind 'P')"),
    "a field added at the end": (
        [*FIELDS, ("spare", ctypes.c_void_p)],
        ": 49 fields in C, 50 in the mirror (first extra, in the mirror: spare)"),
    "the last field dropped": (
        FIELDS[:-1], ": 49 fields in C, 48 in the mirror (first extra, in C: step_times)"),
}


@pytest.mark.parametrize("case", sorted(WRONG))
def test_a_wrong_mirror_is_caught_field_by_field(case):
    fields, says = WRONG[case]
    line = layout_mismatch(_decode_library(), "DecodeProgram", _mirror(fields))
    assert line is not None and "\n" not in line
    assert line.startswith("struct DecodeProgram and its ctypes mirror WrongProgram differ")
    assert says in line


def test_a_struct_the_library_does_not_export_is_a_mismatch():
    line = layout_mismatch(load_c_library("linear_cpu", "native"), "DecodeProgram", _Program)
    assert line == ("struct DecodeProgram: no kvscope_layout_DecodeProgram in the library to check its ctypes mirror "
                    "_Program against")


def test_c_kernels_refuses_a_library_whose_mirror_is_wrong_and_says_why():
    wrong = _mirror(WRONG["two fields swapped"][0])
    with pytest.warns(RuntimeWarning, match="kvscope's C kernels: decode_cpu.c: struct DecodeProgram"):
        lib, why = c_library.c_kernels("decode_cpu", "native", (("DecodeProgram", wrong),))
    assert lib is None and why.startswith("decode_cpu.c: struct DecodeProgram and its ctypes mirror WrongProgram")
    assert c_library.c_kernels("decode_cpu", "native", (("DecodeProgram", _Program),))[0] is not None
