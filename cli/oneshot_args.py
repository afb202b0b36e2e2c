"""Arguments shared by the one-shot commands (`kv`, `roofline`): the model and the device, resolved or refused.

Every lookup failure becomes a UsageError (one line, exit code 2). Imports stay
light: no torch, no rich.
"""

from __future__ import annotations

import argparse

from kvscope.cli.errors import UsageError
from kvscope.engine.errors import ModelShapeError
from kvscope.engine.model_config import ModelConfig
from kvscope.inspector.devices import Device, DeviceError, get_device, with_memory
from kvscope.inspector.model_sources import resolve_model


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL",
                        help="a preset (llama-2-7b, llama-3.1-8b, mistral-7b, qwen2.5-7b, gemma-2-9b, deepseek-v3, "
                             "smollm2-135m, ...), a Hugging Face config.json or folder, a .gguf file or a recipe .yaml")


def add_device_arguments(parser: argparse.ArgumentParser, default: str = "H100-80GB") -> None:
    parser.add_argument("--gpu", default=default, metavar="NAME",
                        help=f"device preset: H100-80GB, H100-PCIe, H200, A100-80GB, A100-40GB, L4, L40S, RTX-4090, "
                             f"B200, MI300X, cpu (default {default})")
    parser.add_argument("--gpu-mem", type=float, default=None, metavar="GIB",
                        help="device memory in GiB (overrides the preset's size)")


def load_model(spec: str) -> ModelConfig:
    try:
        return resolve_model(spec)
    except ModelShapeError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"{spec}: cannot read ({exc.strerror or exc})") from None


def load_device(args: argparse.Namespace) -> Device:
    try:
        device = get_device(args.gpu)
        if args.gpu_mem is not None:
            device = with_memory(device, args.gpu_mem)
    except DeviceError as exc:
        raise UsageError(str(exc)) from None
    return device
