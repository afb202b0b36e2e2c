"""The KV estimator and the model shapes: hand-computed figures, the engine's real pools, file loaders.

Oracles: arithmetic written out by hand from the models' published configs; the
bytes of the engine's K/V tensors; the `gguf` package's reader; parameter counts
of Hugging Face transformers models built from the same config.json.
"""

from __future__ import annotations

import json
import random

import pytest

from kvscope.config.model_config import ModelConfig, count_params
from kvscope.config.model_presets import PRESETS, get_preset
from kvscope.costmodel.devices import GIB, get_device, with_memory
from kvscope.costmodel.kv_estimate import (
    EstimateError,
    estimate_kv,
    kv_bytes_per_token,
    mha_bytes_per_token,
    request_kv_bytes,
    request_paged_bytes,
)
from kvscope.engine.checkpoint.resolve import (
    packaged_smollm2_gguf,
    resolve_model,
    shape_from_gguf,
    shape_from_hf_config,
    shape_from_recipe,
)
from kvscope.errors import ModelShapeError

H100 = get_device("H100-80GB")


# ---- bytes per token, by hand ---------------------------------------------------------------------

def test_llama2_7b_fp16_bytes_per_token() -> None:
    # 2 (K and V) x 32 layers x 32 KV heads x 128 head dim x 2 bytes
    assert kv_bytes_per_token(get_preset("llama-2-7b"), 2) == 524_288
    est = estimate_kv(get_preset("Llama-2-7B"), H100, context=4096, kv_dtype="fp16")
    assert est.bytes_per_token == 524_288
    assert est.mha_bytes_per_token == 524_288
    assert est.attention == "MHA"


def test_llama2_70b_gqa_and_mha_equivalent() -> None:
    est = estimate_kv(get_preset("llama-2-70b"), H100, context=4096, kv_dtype="fp16")
    assert est.bytes_per_token == 2 * 80 * 8 * 128 * 2 == 327_680
    assert est.mha_bytes_per_token == 2 * 80 * 64 * 128 * 2 == 2_621_440
    assert est.attention == "GQA"
    assert "8 kv_heads" in est.formula and "327,680" in est.formula
    assert "64 heads" in est.mha_formula and "2,621,440" in est.mha_formula


def test_deepseek_v3_mla_caches_latent_plus_rope_key() -> None:
    shape = get_preset("deepseek-v3")
    # one latent (512) + one decoupled rope key (64) per layer, shared by all 128 heads, bf16
    assert kv_bytes_per_token(shape, 2) == 61 * (512 + 64) * 2 == 70_272
    # MHA would keep K (128 nope + 64 rope) and V (128) for each of the 128 heads
    assert mha_bytes_per_token(shape, 2) == 61 * 128 * (192 + 128) * 2 == 4_997_120
    est = estimate_kv(shape, with_memory(H100, 2048), context=1000, kv_dtype="bf16", weights_dtype="fp8")
    assert est.attention == "MLA"
    assert est.request_bytes == 1000 * 70_272
    assert "512 latent + 64 rope" in est.formula


def test_kv_dtype_scales_bytes() -> None:
    shape = get_preset("llama-3.1-8b")
    per = {d: estimate_kv(shape, H100, context=128, kv_dtype=d).bytes_per_token
           for d in ("fp32", "fp16", "bf16", "fp8", "int8")}
    assert per["fp16"] == 2 * 32 * 8 * 128 * 2 == 131_072
    assert per["fp32"] == 2 * per["fp16"] and per["bf16"] == per["fp16"]
    assert per["fp8"] == per["int8"] == per["fp16"] // 2


# ---- sliding windows ------------------------------------------------------------------------------

def test_gemma2_local_layers_stop_growing_past_the_window() -> None:
    shape = get_preset("gemma-2-9b")
    per_layer_token = 2 * 8 * 256 * 2  # K and V, 8 KV heads, head dim 256, fp16
    assert shape.num_local_layers == 21
    for context in (1000, 4096, 6000, 8192):
        local = 21 * min(context, 4096) * per_layer_token
        global_ = 21 * context * per_layer_token
        assert request_kv_bytes(shape, context, 2) == local + global_
    grow_before = request_kv_bytes(shape, 4096, 2) - request_kv_bytes(shape, 4095, 2)
    grow_after = request_kv_bytes(shape, 6001, 2) - request_kv_bytes(shape, 6000, 2)
    assert grow_before == 42 * per_layer_token
    assert grow_after == 21 * per_layer_token


def test_mistral_window_on_every_layer_caps_the_request() -> None:
    shape = get_preset("mistral-7b")
    assert request_kv_bytes(shape, 4096, 2) == request_kv_bytes(shape, 32768, 2) == 4096 * 131_072


def test_paged_window_blocks_match_a_brute_force_count() -> None:
    shape = ModelConfig("w", num_layers=1, hidden_size=8, num_heads=1, num_kv_heads=1, head_dim=4,
                        intermediate_size=8, vocab_size=8, sliding_window=10)
    rng = random.Random(0)
    for _ in range(200):
        block, context = rng.randint(1, 9), rng.randint(1, 60)
        positions = range(max(0, context - 10), context)
        blocks = len({p // block for p in positions})
        assert request_paged_bytes(shape, context, 1, block) == blocks * block * 8


# ---- budget, blocks, fragmentation, contiguous baseline ------------------------------------------

def test_budget_blocks_and_requests_by_hand() -> None:
    est = estimate_kv(get_preset("llama-2-7b"), H100, context=4096, block_size=16, mem_util=0.9)
    usable = int(80 * GIB * 0.9)
    weights = 6_738_415_616 * 2
    assert est.weights_bytes == weights
    assert est.kv_budget_bytes == usable - weights
    assert est.block_bytes == 16 * 524_288
    assert est.num_blocks == (usable - weights) // (16 * 524_288)
    assert est.max_requests == est.num_blocks // (4096 // 16)
    assert est.max_requests == 29


def test_weights_that_do_not_fit_leave_no_kv() -> None:
    est = estimate_kv(get_preset("llama-2-70b"), H100, context=4096, batch=2)
    assert est.kv_budget_bytes == 0 and est.num_blocks == 0 and est.max_requests == 0
    assert not est.batch_fits
    four = estimate_kv(get_preset("llama-2-70b"), H100, context=4096, num_gpus=4)
    assert four.kv_budget_bytes == int(4 * 80 * GIB * 0.9) - 68_976_648_192 * 2


def test_fragmentation_and_contiguous_reservation() -> None:
    est = estimate_kv(get_preset("smollm2-135m"), H100, context=100, block_size=16, max_len=8192)
    assert est.waste_slots_at_context == 7 * 16 - 100 == 12
    assert est.waste_fraction_at_context == pytest.approx(12 / 112)
    assert est.expected_waste_fraction == pytest.approx(7.5 / 107.5)
    assert est.request_paged_bytes == 112 * est.bytes_per_token
    assert est.contiguous_request_bytes == 8192 * est.bytes_per_token
    assert est.contiguous_waste_fraction == pytest.approx(1 - 100 / 8192)
    assert est.contiguous_max_requests == est.kv_budget_bytes // (8192 * est.bytes_per_token)
    assert est.max_requests > 50 * est.contiguous_max_requests


@pytest.mark.parametrize("kwargs", [
    {"context": 0}, {"context": -5}, {"context": 10, "batch": 0}, {"context": 10, "block_size": 0},
    {"context": 10, "mem_util": 1.5}, {"context": 10, "kv_dtype": "fp4"}, {"context": 10, "weights_dtype": "x"},
    {"context": 100, "max_len": 50},
])
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(EstimateError):
        estimate_kv(get_preset("smollm2-135m"), H100, **kwargs)


# ---- the engine's real pools ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype_name", ["fp16", "fp32", "bf16"])
def test_smollm2_blocks_match_engine_kv_cache_bytes(dtype_name: str) -> None:
    torch = pytest.importorskip("torch")
    kv_cache = pytest.importorskip("kvscope.engine.worker.kv_cache")
    torch_dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    shape = get_preset("smollm2-135m")
    num_blocks, block_size = 7, 16
    cache = kv_cache.KVCache(shape.num_layers, num_blocks, block_size, shape.num_kv_heads, shape.head_dim,
                             torch_dtype, "cpu")
    measured = sum(t.numel() * t.element_size() for t in list(cache.k) + list(cache.v))
    assert len(cache.k) == len(cache.v) == shape.num_layers
    est = estimate_kv(shape, H100, context=64, block_size=block_size, kv_dtype=dtype_name)
    assert est.block_bytes * num_blocks == measured
    # and a device just big enough for the weights plus those blocks holds exactly that many
    gib = (est.weights_bytes + measured) / GIB
    sized = estimate_kv(shape, with_memory(H100, gib), context=64, block_size=block_size, kv_dtype=dtype_name,
                        mem_util=1.0)
    assert sized.num_blocks in (num_blocks - 1, num_blocks)  # GiB rounding may drop the last byte


# ---- presets and parameter counts -----------------------------------------------------------------

def test_presets_cover_the_issue_list_and_aliases() -> None:
    for name in ("llama-2-7b", "llama-2-70b", "llama-3.1-8b", "llama-3.1-70b", "mistral-7b", "qwen2.5-7b",
                 "gemma-2-9b", "deepseek-v3", "smollm2-135m"):
        assert get_preset(name).name == name
    assert get_preset("SmolLM2-135M-Instruct").name == "smollm2-135m"
    assert get_preset("meta-llama/Llama-3.1-8B").name == "llama-3.1-8b"
    with pytest.raises(ModelShapeError, match="unknown model 'gpt-5'"):
        get_preset("gpt-5")


@pytest.mark.parametrize("name", ["llama-2-7b", "llama-2-70b", "llama-3.1-8b", "llama-3.2-1b", "llama-3.1-70b",
                                  "mistral-7b", "qwen2.5-7b", "smollm2-135m"])
def test_architecture_count_equals_the_published_parameter_count(name: str) -> None:
    shape = PRESETS[name]
    assert count_params(shape) == shape.num_params


def test_gemma_and_deepseek_counts_are_close_to_published() -> None:
    # Gemma 2 has two extra norms per layer the generic count leaves out; DeepSeek-V3 is "671B" on its card
    assert count_params(PRESETS["gemma-2-9b"]) == pytest.approx(9_241_705_984, rel=1e-4)
    assert count_params(PRESETS["deepseek-v3"]) == pytest.approx(671e9, rel=1e-3)


# ---- loaders --------------------------------------------------------------------------------------

def test_gguf_header_matches_the_gguf_package() -> None:
    gguf = pytest.importorskip("gguf")
    path = packaged_smollm2_gguf()
    from kvscope.engine.checkpoint.gguf_metadata import read_gguf_header

    header = read_gguf_header(path)
    reader = gguf.GGUFReader(path)
    for key in ("llama.block_count", "llama.embedding_length", "llama.attention.head_count_kv",
                "general.architecture", "llama.context_length"):
        assert header.metadata[key] == reader.fields[key].contents()
    assert {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors} == {
        name: entry.dims for name, entry in header.tensors.items()}
    assert header.num_elements() == sum(int(t.n_elements) for t in reader.tensors)


def test_smollm2_gguf_shape_equals_preset() -> None:
    shape = shape_from_gguf(packaged_smollm2_gguf())
    preset = get_preset("smollm2-135m")
    for field in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
                  "vocab_size", "tie_embeddings", "num_params", "max_position_embeddings", "rope_theta"):
        assert getattr(shape, field) == getattr(preset, field), field


def test_gguf_errors_name_the_file(tmp_path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 20)
    with pytest.raises(ModelShapeError, match="x.gguf: not a GGUF file"):
        shape_from_gguf(str(bad))
    real = open(packaged_smollm2_gguf(), "rb").read(5000)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(real)
    with pytest.raises(ModelShapeError, match="cut.gguf: truncated"):
        shape_from_gguf(str(cut))


def _write_config(tmp_path, cfg: dict) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def test_hf_config_gemma2_and_deepseek(tmp_path) -> None:
    gemma = {"model_type": "gemma2", "num_hidden_layers": 6, "hidden_size": 64, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 128, "vocab_size": 100,
             "sliding_window": 16, "tie_word_embeddings": True, "max_position_embeddings": 64}
    shape = shape_from_hf_config(_write_config(tmp_path, gemma))
    assert [shape.is_local(i) for i in range(6)] == [True, False] * 3
    assert shape.head_dim == 32 and shape.tie_embeddings
    ds = {"model_type": "deepseek_v3", "num_hidden_layers": 61, "hidden_size": 7168, "num_attention_heads": 128,
          "num_key_value_heads": 128, "head_dim": 64, "intermediate_size": 18432, "vocab_size": 129280,
          "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128,
          "q_lora_rank": 1536, "n_routed_experts": 256, "num_experts_per_tok": 8, "n_shared_experts": 1,
          "moe_intermediate_size": 2048, "first_k_dense_replace": 3, "max_position_embeddings": 163840}
    shape = shape_from_hf_config(_write_config(tmp_path, ds))
    assert kv_bytes_per_token(shape, 2) == 70_272
    assert shape.num_params == count_params(PRESETS["deepseek-v3"])


def test_hf_config_errors(tmp_path) -> None:
    with pytest.raises(ModelShapeError, match="'num_hidden_layers' missing"):
        shape_from_hf_config(_write_config(tmp_path, {"hello": 1}))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ModelShapeError, match="broken.json: not a JSON config"):
        resolve_model(str(broken))
    with pytest.raises(ModelShapeError, match="no such file"):
        resolve_model(str(tmp_path / "missing.json"))


def test_hf_config_for_the_kv_cache_alone_needs_no_mlp_width_or_vocabulary(tmp_path) -> None:
    from kvscope.config.model_config import params_of
    from kvscope.engine.model.support import config_refusal

    path = _write_config(tmp_path, {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 8,
                                    "num_key_value_heads": 2})
    with pytest.raises(ModelShapeError, match="config.json: field 'intermediate_size' missing"):
        shape_from_hf_config(path)
    shape = resolve_model(path, need_weights=False)
    assert shape.missing_weights_fields == ("intermediate_size", "vocab_size") and params_of(shape) is None
    with pytest.raises(ModelShapeError, match="needs intermediate_size and vocab_size"):
        count_params(shape)
    assert config_refusal(shape) == "intermediate_size and vocab_size not given"
    est = estimate_kv(shape, H100, context=100)
    assert est.bytes_per_token == 2 * 4 * 2 * 32 * 2 and est.weights_bytes is None and est.num_blocks is None


def test_recipe_model_sections(tmp_path) -> None:
    (tmp_path / "cfg").mkdir()
    _write_config(tmp_path / "cfg", {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
                                     "num_key_value_heads": 1, "intermediate_size": 64, "vocab_size": 10})
    cases = {
        "random.yaml": ("model: {source: random, shape: llama-2-7b, seed: 3}\ncache: {block_size: 16}\n",
                        "llama-2-7b"),
        "tiny.yaml": ("model: {source: random, shape: tiny}\n", "tiny"),
        "hf.yaml": ("model: {source: hf, path: cfg}\n", "cfg"),
        "gguf.yaml": (f"model: {{source: gguf, path: {packaged_smollm2_gguf()}}}\n", None),
        "default.yaml": ("name: x\n" "model: {}\n", None),
    }
    for file_name, (text, expected) in cases.items():
        path = tmp_path / file_name
        path.write_text(text)
        shape = shape_from_recipe(str(path))
        if expected:
            assert shape.name == expected
        else:
            assert shape.num_params == 134_515_008
    assert resolve_model(str(tmp_path / "hf.yaml")).num_kv_heads == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {source: random, shape: nope}\n")
    with pytest.raises(ModelShapeError, match="bad.yaml: model.shape: unknown model 'nope'"):
        shape_from_recipe(str(bad))


@pytest.mark.slow
def test_hf_config_param_count_matches_transformers(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    configs = [
        transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=128),
        transformers.Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=128, tie_word_embeddings=True),
        transformers.DeepseekV3Config(hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                                      num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4,
                                      num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2,
                                      n_shared_experts=1, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8,
                                      qk_nope_head_dim=16, v_head_dim=16, vocab_size=128, n_group=1,
                                      topk_group=1),
    ]
    for i, config in enumerate(configs):
        folder = tmp_path / str(i)
        folder.mkdir()
        config.save_pretrained(folder)
        shape = resolve_model(str(folder))
        model = transformers.AutoModelForCausalLM.from_config(config)
        hf_count = sum(p.numel() for p in model.parameters())
        if shape.is_moe:  # the router's score-correction bias is a buffer-like parameter we do not count
            hf_count -= sum(p.numel() for n, p in model.named_parameters() if "e_score_correction_bias" in n)
        assert count_params(shape) == hf_count, type(config).__name__
