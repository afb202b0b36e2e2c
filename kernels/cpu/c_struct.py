"""ctypes mirrors of C structs, checked against the layout the C side exports (kernels/cpu/kvscope_layout.h).

A C source that shares a struct with its binding exports `kvscope_layout_<Struct>`: the struct's sizeof and, for
each field in order, its name, offsetof, sizeof and kind (ctypes' type code of the scalar: 'i' int, 'l' long,
'f' float, ...; 'P' for any pointer). `layout_mismatch(lib, "Struct", Mirror)` compares a ctypes.Structure
with it field by field and returns one line naming the first difference, or None where they agree. Reading
the layout runs no code of the library (it is data).
"""

from __future__ import annotations

import ctypes
from _ctypes import CFuncPtr  # what ctypes holds as _CFuncPtr (its stubs do not export that name)


class _Field(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("offset", ctypes.c_size_t), ("size", ctypes.c_size_t),
                ("kind", ctypes.c_char)]


class _Layout(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("fields", ctypes.POINTER(_Field))]


def _kind(ctype: type) -> str:
    """ctypes' type code of a scalar field type; 'P' for pointers of every sort; '?' for anything else."""
    if issubclass(ctype, (ctypes._Pointer, CFuncPtr)) or ctype in (ctypes.c_void_p, ctypes.c_char_p):
        return "P"
    code = getattr(ctype, "_type_", None)
    return code if issubclass(ctype, ctypes._SimpleCData) and isinstance(code, str) else "?"


def c_layout(lib: ctypes.CDLL, struct: str) -> tuple[int, list[tuple[str, int, int, str]]]:
    """(sizeof, [(field, offset, size, kind), ...]) of `struct` as the library was compiled. KeyError where the
    library exports no layout of it."""
    try:
        layout = _Layout.in_dll(lib, f"kvscope_layout_{struct}")
    except ValueError:
        raise KeyError(f"no kvscope_layout_{struct} in the library") from None
    fields, i = [], 0
    while layout.fields[i].name is not None:
        f = layout.fields[i]
        fields.append((f.name.decode(), f.offset, f.size, f.kind.decode()))
        i += 1
    return layout.size, fields


def mirror_layout(mirror: type[ctypes.Structure]) -> tuple[int, list[tuple[str, int, int, str]]]:
    """The same for a ctypes.Structure, as ctypes lays it out."""
    return ctypes.sizeof(mirror), [(name, getattr(mirror, name).offset, getattr(mirror, name).size, _kind(ctype))
                                   for name, ctype, *_ in mirror._fields_]


def layout_mismatch(lib: ctypes.CDLL, struct: str, mirror: type[ctypes.Structure]) -> str | None:
    """One line naming the first difference between `struct` as compiled in `lib` and its ctypes `mirror`, or
    None where every field has the same name, offset, size and kind, in the same order, and so has the whole."""
    try:
        c_size, c_fields = c_layout(lib, struct)
    except KeyError as exc:
        return f"struct {struct}: {exc.args[0]} to check its ctypes mirror {mirror.__name__} against"
    py_size, py_fields = mirror_layout(mirror)
    where = f"struct {struct} and its ctypes mirror {mirror.__name__} differ"
    show = lambda f: f"{f[0]} (offset {f[1]}, {f[2]} bytes, kind {f[3]!r})"
    for i, (c, py) in enumerate(zip(c_fields, py_fields)):
        if c != py:
            return f"{where} at field {i}: {show(c)} in C, {show(py)} in the mirror"
    if len(c_fields) != len(py_fields):
        longer, side = (c_fields, "C") if len(c_fields) > len(py_fields) else (py_fields, "the mirror")
        return (f"{where}: {len(c_fields)} fields in C, {len(py_fields)} in the mirror (first extra, in {side}: "
                f"{longer[min(len(c_fields), len(py_fields))][0]})")
    if c_size != py_size:
        return f"{where}: sizeof {c_size} in C, {py_size} in the mirror"
    return None
