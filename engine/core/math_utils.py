"""Integer helpers shared by the engine and the analytic models (pure python, no torch)."""

from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    """a / b rounded up: the blocks that hold a tokens at b tokens a block."""
    return -(-a // b)
