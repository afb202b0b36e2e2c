"""kvscope: a terminal profiling and introspection toolkit around a compact LLM inference engine.

The subpackages live in top-level folders of the repository (engine/, kernels/,
inspector/, tui/, cli/, recipes/) and are mapped into this namespace by pyproject.
"""

__version__ = "0.1.0"
