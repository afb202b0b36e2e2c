"""The version of kvscope (one place: the package, recordings and `kvscope --version` read it)."""

__version__ = "0.1.0"
