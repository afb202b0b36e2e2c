"""A checkpoint's tensors as LlamaModel's state dict: the names each format gives them, Q/K/V and gate/up fused,
llama.cpp's interleaved Q/K rows un-permuted back to the Hugging Face rotate-half layout (GGUF and HF folders)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch

from kvscope.config.model_config import ModelConfig
from kvscope.engine.model.llama import LlamaModel
from kvscope.errors import ModelLoadError


class TensorNames(NamedTuple):
    """Where a checkpoint format keeps the model's tensors; a layer's names follow its prefix ({i} = index)."""

    embed: str
    final_norm: str
    lm_head: str
    layer_prefix: str
    layer: tuple[str, ...]  # q, k, v, o, gate, up, down, attention norm, MLP norm
    interleaved_qk: bool    # Q/K rows in llama.cpp's interleaved RoPE order (un-permuted on load)


GGUF_NAMES = TensorNames(
    "token_embd.weight", "output_norm.weight", "output.weight", "blk.{i}.",
    ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight", "ffn_gate.weight", "ffn_up.weight",
     "ffn_down.weight", "attn_norm.weight", "ffn_norm.weight"), interleaved_qk=True)
HF_NAMES = TensorNames(
    "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "model.layers.{i}.",
    ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
     "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight",
     "post_attention_layernorm.weight"), interleaved_qk=False)


def unpermute_rotary_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation (interleaved pairs -> rotate-half halves), per head."""
    rows, cols = weight.shape
    head_dim = rows // n_heads
    return weight.reshape(n_heads, head_dim // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


@contextmanager
def _shape_errors(where: Path, prefix: str) -> Iterator[None]:
    """Tensors of one layer that cannot be combined (wrong shapes) -> ModelLoadError."""
    try:
        yield
    except RuntimeError as exc:
        raise ModelLoadError(f"{where}: tensors {prefix}* do not fit the model's shape ({exc})") from None


def state_dict(config: ModelConfig, names: TensorNames, get: Callable[[str], torch.Tensor],
               where: Path) -> dict[str, torch.Tensor]:
    """LlamaModel's state dict from a checkpoint's tensors (`get` fetches one by its name there);
    Q, K, V and gate, up are fused as the model keeps them."""
    state = {"embed.weight": get(names.embed), "final_norm.weight": get(names.final_norm)}
    if not config.tie_embeddings:
        state["lm_head.weight"] = get(names.lm_head)
    for i in range(config.num_layers):
        prefix, ours = names.layer_prefix.format(i=i), f"layers.{i}."
        q, k, v, o, gate, up, down, attn_norm, mlp_norm = (get(prefix + name) for name in names.layer)
        with _shape_errors(where, prefix):
            if names.interleaved_qk:
                q, k = unpermute_rotary_rows(q, config.num_heads), unpermute_rotary_rows(k, config.num_kv_heads)
            state[ours + "qkv.weight"] = torch.cat((q, k, v), dim=0)
            state[ours + "o_proj.weight"] = o
            state[ours + "mlp.gate_up.weight"] = torch.cat((gate, up), dim=0)
            state[ours + "mlp.down.weight"] = down
            state[ours + "attn_norm.weight"] = attn_norm
            state[ours + "mlp_norm.weight"] = mlp_norm
    return state


def build_model(config: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device,
                where: Path) -> LlamaModel:
    """The model around a checkpoint's state dict; ModelLoadError naming the file for a missing or misfit tensor."""
    try:
        return LlamaModel.from_state_dict(config, state, dtype, device)
    except (KeyError, ValueError, RuntimeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise ModelLoadError(f"{where}: {message}") from None
