"""kvscope: a terminal profiling and introspection toolkit around a compact LLM inference engine.

The subpackages live in top-level folders of the repository (engine/, kernels/, inspector/,
tui/, serve/, cli/, recipes/) and are mapped into this namespace by pyproject; the bottom of
the house (config/, events/, costmodel/, errors) sits here. Map: docs/architecture.md.

    from kvscope import LLM, SamplingParams      # as `from vllm import LLM, SamplingParams`

The two names are imported on first use, so `import kvscope` (and the one-shot commands)
stay free of torch.
"""

from __future__ import annotations

from typing import Any

from kvscope.version import __version__

__all__ = ["LLM", "SamplingParams", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "LLM":
        from kvscope.engine.llm import LLM

        return LLM
    if name == "SamplingParams":
        from kvscope.config.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(f"module 'kvscope' has no attribute {name!r}")
