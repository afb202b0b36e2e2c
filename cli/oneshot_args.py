"""What the one-shot commands (`kv`, `roofline`) share: the model and the device, resolved or refused.

Every lookup failure becomes a UsageError (one line, exit code 2). Imports stay light: no torch, no rich.
"""

from __future__ import annotations

from kvscope.cli.errors import UsageError
from kvscope.config.model_config import ModelConfig
from kvscope.costmodel.devices import Device, DeviceError, get_device, with_memory
from kvscope.engine.checkpoint.resolve import resolve_model
from kvscope.errors import ModelShapeError


def load_model(spec: str, need_weights: bool = True) -> ModelConfig:
    """The model's shape; need_weights=False: the KV cache's alone (kvscope.engine.checkpoint.resolve)."""
    try:
        return resolve_model(spec, need_weights)
    except ModelShapeError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"{spec}: cannot read ({exc.strerror or exc})") from None


def load_device(gpu: str, gpu_mem: float | None = None) -> Device:
    """The device preset `gpu`, with `gpu_mem` GiB of memory when given."""
    try:
        device = get_device(gpu)
        if gpu_mem is not None:
            device = with_memory(device, gpu_mem)
    except DeviceError as exc:
        raise UsageError(str(exc)) from None
    return device
