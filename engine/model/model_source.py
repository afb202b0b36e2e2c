"""ModelSource: where a model comes from (kvscope.config.model_spec names it), one subclass per source.

A source knows two things: its shape and tokenizer, read without any weights (what a simulated device
runs on, and what the CLIs tokenize with), and its weights. kvscope.engine.model.loader picks the source
of a spec and asks it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from kvscope.config.model_config import ModelConfig
from kvscope.engine.model.llama import LlamaModel
from kvscope.engine.model.tokenizer import Tokenizer
from kvscope.errors import ModelLoadError, ModelShapeError


class ModelSource(ABC):
    """One model spec's source. Problems with a file raise ModelLoadError naming it; with the spec, RecipeError."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec

    def check(self) -> None:
        """Refuse, before anything is parsed, what the engine cannot run (a file's architecture, say)."""
        return None  # nothing to refuse before the shape is read

    @abstractmethod
    def shape(self) -> tuple[ModelConfig, Tokenizer]:
        """The config (with the tokenizer's special ids) and the tokenizer; no weights are read."""

    @abstractmethod
    def weights(self, config: ModelConfig, dtype: torch.dtype, device: torch.device) -> LlamaModel:
        """The model of `config` (this source's shape) with this source's weights."""


def refuse(where: Path, reason: str | None) -> None:
    """ModelLoadError naming the file when the engine cannot run what it describes."""
    if reason is not None:
        raise ModelLoadError(f"{where}: {reason}")


@contextmanager
def load_errors() -> Iterator[None]:
    """A field a file lacks or gets wrong (checkpoint.formats' ModelShapeError names the file) -> ModelLoadError."""
    try:
        yield
    except ModelShapeError as exc:
        raise ModelLoadError(str(exc)) from None
