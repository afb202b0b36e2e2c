"""The repository's folders, as the tests reach them."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPES = REPO_ROOT / "recipes"
BENCHMARKS = REPO_ROOT / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/NAME.py as module NAME (registered in sys.modules, so dataclasses and the benchmarks' own
    `from serve_processes import ...` find it), without putting benchmarks/ on sys.path: its kernels.py
    would shadow Hugging Face's `kernels` package."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
