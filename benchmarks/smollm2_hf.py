"""Convert the packaged SmolLM2 GGUF into an HF folder (safetensors, config, tokenizer) for vLLM.

`make smollm2-hf` runs it once: vLLM's CPU build loads HF folders, and nothing may come from a hub, so
transformers dequantizes the same GGUF kvscope serves (the weights both engines then hold are equal) and
writes float32 safetensors. The folder appears whole or not at all (written beside it, then renamed).

    python -P benchmarks/smollm2_hf.py build/smollm2-hf    (-P: benchmarks/kernels.py shadows HF's `kernels`)
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def convert(out: Path) -> Path:
    """Write SmolLM2 from its GGUF as an HF folder at `out`; returns it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kvscope.engine.checkpoint.packaged import default_gguf_path

    gguf = default_gguf_path()
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are dequantized already: save them as plain float32
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(staging, safe_serialization=True)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(staging)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to write (replaced if present)")
    print(f"wrote {convert(parser.parse_args().out)}")


if __name__ == "__main__":
    main()
