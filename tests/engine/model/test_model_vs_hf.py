"""Our LlamaModel and loaders against Hugging Face transformers on the same weights.

Oracles: transformers' own GGUF loader (dequantize + Q/K un-permute done independently) for
SmolLM2-135M-Instruct, and LlamaForCausalLM.save_pretrained for the HF-folder loader.
Paged KV caches use scattered block tables, so a wrong slot or table shows up as a logit error.
"""

from __future__ import annotations

import dataclasses
import os
import struct

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from kvscope.config.model_presets import get_preset
from kvscope.engine.checkpoint.packaged import default_gguf_path
from kvscope.engine.model.attention import AttentionMetadata, TorchAttention
from kvscope.engine.model.checkpoint_weights import unpermute_rotary_rows
from kvscope.engine.model.forward_context import ForwardContext
from kvscope.engine.model.llama import LlamaModel
from kvscope.engine.model.loader import load_model
from kvscope.engine.probe.op_timer import OpTimer
from kvscope.errors import ModelLoadError, RecipeError

BLOCK_SIZE = 4
LOGIT_TOL = 2e-4
CPU = torch.device("cpu")


class PagedSequences:
    """Per-sequence block tables over one pool, and AttentionMetadata for a step."""

    def __init__(self, model: LlamaModel, num_blocks: int, tables: list[list[int]]) -> None:
        cfg = model.config
        shape = (num_blocks, BLOCK_SIZE, cfg.num_kv_heads, cfg.head_dim)
        self.kv = [(torch.zeros(shape), torch.zeros(shape)) for _ in range(cfg.num_layers)]
        self.tables = tables
        self.model = model

    def step(self, chunks: dict[int, tuple[int, list[int]]]) -> list[torch.Tensor]:
        """chunks: seq index -> (tokens already cached, new token ids). Returns each seq's logits [n_new, V]."""
        ids, positions, slots, q_lens, s_lens, rows = [], [], [], [], [], []
        for seq, (cached, new) in chunks.items():
            table = self.tables[seq]
            for p in range(cached, cached + len(new)):
                slots.append(table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE)
            ids.extend(new)
            positions.extend(range(cached, cached + len(new)))
            q_lens.append(len(new))
            s_lens.append(cached + len(new))
            rows.append(table)
        width = max(len(r) for r in rows)
        starts = [0]
        for n in q_lens:
            starts.append(starts[-1] + n)
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            block_tables=torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.int32),
            query_start_loc=torch.tensor(starts, dtype=torch.int32),
            seq_lens=torch.tensor(s_lens, dtype=torch.int32),
            query_lens_host=q_lens, seq_lens_host=s_lens, max_query_len=max(q_lens), max_seq_len=max(s_lens),
        )
        self.model.bind_kv_cache(self.kv, TorchAttention())
        hidden = self.model(torch.tensor(ids), ForwardContext(torch.tensor(positions), meta))
        logits = self.model.compute_logits(hidden)
        return [logits[starts[i] : starts[i + 1]] for i in range(len(q_lens))]


def _scattered_table(num_tokens: int, offset: int, stride: int, num_blocks: int) -> list[int]:
    need = (num_tokens + BLOCK_SIZE - 1) // BLOCK_SIZE
    return [(offset + i * stride) % num_blocks for i in range(need)]


def _assert_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.dtype == torch.float32
    diff = (ours - ref).abs().max().item()
    assert diff < LOGIT_TOL, f"max |logit diff| {diff:.2e} >= {LOGIT_TOL:.0e}"


# --------------------------------------------------------------------------- SmolLM2 (real weights)


@pytest.fixture(scope="module")
def smollm2():
    model, config, tokenizer = load_model({"source": "gguf", "path": "smollm2"}, torch.float32, CPU)
    return model, config, tokenizer


@pytest.fixture(scope="module")
def hf():
    from support.hf_oracle import hf_model

    return hf_model()


PROMPTS = [
    "The capital of France is Paris. The capital of Germany is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Once upon a time, in a land far away, there lived",
]


@pytest.mark.slow
def test_config_read_from_gguf_metadata(smollm2, hf):
    _, config, _ = smollm2
    ref = hf.config
    assert (config.vocab_size, config.hidden_size, config.intermediate_size, config.num_layers) == (
        ref.vocab_size, ref.hidden_size, ref.intermediate_size, ref.num_hidden_layers)
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (
        ref.num_attention_heads, ref.num_key_value_heads, ref.head_dim)
    assert config.rope_theta == pytest.approx(ref.rope_parameters["rope_theta"])
    assert config.rms_norm_eps == pytest.approx(ref.rms_norm_eps)
    assert config.tie_embeddings == ref.tie_word_embeddings
    assert config.max_position_embeddings == ref.max_position_embeddings
    assert config.bos_token_id == ref.bos_token_id and ref.eos_token_id in config.eos_token_ids


@pytest.mark.slow
def test_loader_and_oneshot_read_the_gguf_to_the_same_config(smollm2):
    """One parser: the engine's config of the packaged GGUF is the shape `kvscope kv` reports for it; the
    loader only adds the tokenizer's special ids."""
    from kvscope.engine.checkpoint.resolve import resolve_model

    _, config, tokenizer = smollm2
    oneshot = resolve_model(str(default_gguf_path()))
    assert (config.bos_token_id, config.eos_token_ids) == (tokenizer.bos_token_id, tokenizer.eos_token_ids)
    assert dataclasses.replace(config, bos_token_id=None, eos_token_ids=()) == oneshot


@pytest.mark.slow
def test_single_sequence_logits_match_hf(smollm2, hf):
    from support.hf_oracle import hf_logits

    model, _, tokenizer = smollm2
    ids = tokenizer.encode(PROMPTS[0])
    paged = PagedSequences(model, 32, [_scattered_table(len(ids), 5, 7, 32)])
    (ours,) = paged.step({0: (0, ids)})
    ref = hf_logits(ids, hf)
    _assert_close(ours, ref)
    assert ours.argmax(-1).tolist() == ref.argmax(-1).tolist()


@pytest.mark.slow
def test_two_chunks_with_cache_match_hf(smollm2, hf):
    from support.hf_oracle import hf_logits

    model, _, tokenizer = smollm2
    ids = tokenizer.encode(PROMPTS[1])
    split = 7  # not a block boundary: the second chunk starts mid-block
    paged = PagedSequences(model, 32, [_scattered_table(len(ids), 30, 3, 32)])
    (first,) = paged.step({0: (0, ids[:split])})
    (second,) = paged.step({0: (split, ids[split:])})
    ref = hf_logits(ids, hf)
    _assert_close(first, ref[:split])
    _assert_close(second, ref[split:])


@pytest.mark.slow
def test_flat_batch_of_two_requests_then_decode_matches_hf(smollm2, hf):
    from support.hf_oracle import hf_logits

    model, _, tokenizer = smollm2
    a, b = tokenizer.encode(PROMPTS[0]), tokenizer.encode(PROMPTS[2])
    num_blocks = 40
    paged = PagedSequences(model, num_blocks, [_scattered_table(len(a) + 1, 0, 2, num_blocks),
                                               _scattered_table(len(b) + 1, 1, 2, num_blocks)])
    out_a, out_b = paged.step({0: (0, a), 1: (0, b)})
    next_a, next_b = int(out_a[-1].argmax()), int(out_b[-1].argmax())
    dec_a, dec_b = paged.step({0: (len(a), [next_a]), 1: (len(b), [next_b])})  # both decode in one step
    ref_a, ref_b = hf_logits(a + [next_a], hf), hf_logits(b + [next_b], hf)
    _assert_close(out_a, ref_a[:-1])
    _assert_close(out_b, ref_b[:-1])
    _assert_close(dec_a, ref_a[-1:])
    _assert_close(dec_b, ref_b[-1:])


@pytest.mark.slow
def test_greedy_tokens_match_hf_greedy(smollm2, hf):
    from support.hf_oracle import hf_greedy

    model, _, tokenizer = smollm2
    prompts = [tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": "Name a fruit."}])),
               tokenizer.encode(PROMPTS[1])]
    steps = 6
    num_blocks = 64
    paged = PagedSequences(model, num_blocks, [list(range(32)), list(range(32, 64))])
    outs = paged.step({0: (0, prompts[0]), 1: (0, prompts[1])})
    generated = [[int(o[-1].argmax())] for o in outs]
    for _ in range(steps - 1):
        outs = paged.step({i: (len(prompts[i]) + len(g) - 1, [g[-1]]) for i, g in enumerate(generated)})
        for g, o in zip(generated, outs):
            g.append(int(o[-1].argmax()))
    assert generated == hf_greedy(prompts, steps, hf)


@pytest.mark.slow
def test_hf_greedy_does_not_stop_at_eos(smollm2, hf):
    from support.hf_oracle import hf_greedy

    _, _, tokenizer = smollm2
    eos = hf.config.eos_token_id
    chat = [{"role": "user", "content": "Reply with one word: what colour is the sky?"}]
    prompt = tokenizer.encode(tokenizer.apply_chat_template(chat))
    (out,) = hf_greedy([prompt], 12, hf)
    assert len(out) == 12
    assert eos in out[:-1], "the short answer should end its turn (EOS) well before 12 tokens"


def test_unpermute_inverts_llama_cpp_permutation():
    # llama.cpp's converter: rows of each head reordered from [half0 | half1] to interleaved pairs
    heads, head_dim, cols = 3, 8, 5
    hf_rows = torch.arange(heads * head_dim * cols, dtype=torch.float32).reshape(heads * head_dim, cols)
    permuted = torch.empty_like(hf_rows)
    for h in range(heads):
        for i in range(head_dim // 2):
            permuted[h * head_dim + 2 * i] = hf_rows[h * head_dim + i]
            permuted[h * head_dim + 2 * i + 1] = hf_rows[h * head_dim + head_dim // 2 + i]
    assert torch.equal(unpermute_rotary_rows(permuted, heads), hf_rows)


# ------------------------------------------------------------------------------ random tiny models


def test_spec_name_renames_the_model():
    model, cfg, _ = load_model({"source": "random", "shape": "tiny", "name": "my-tiny"}, torch.float32, CPU)
    assert cfg.name == model.config.name == "my-tiny"
    assert cfg.hidden_size == get_preset("tiny").hidden_size


def test_random_model_is_seeded_and_deterministic():
    spec = {"source": "random", "shape": "tiny", "seed": 3}
    m1, cfg, tok = load_model(spec, torch.float32, CPU)
    m2, _, _ = load_model(dict(spec), torch.float32, CPU)
    m3, _, _ = load_model({**spec, "seed": 4}, torch.float32, CPU)
    assert cfg == get_preset("tiny")
    assert tok.vocab_size == cfg.vocab_size and cfg.bos_token_id == tok.bos_token_id
    ids = tok.encode("hello paged attention")
    outs = []
    for m in (m1, m2, m3):
        paged = PagedSequences(m, 16, [_scattered_table(len(ids), 2, 5, 16)])
        outs.append(paged.step({0: (0, ids)})[0])
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])
    assert outs[0].shape == (len(ids), 512)
    assert torch.isfinite(outs[0]).all()


def test_untied_random_shape_has_lm_head_and_chunking_is_consistent():
    model, cfg, tok = load_model({"source": "random", "shape": "tiny-gqa3", "seed": 0}, torch.float32, CPU)
    assert not cfg.tie_embeddings and model.lm_head is not None
    assert not torch.equal(model.lm_head.weight, model.embed.weight)
    ids = tok.encode("a longer prompt, split across chunks and blocks")
    whole = PagedSequences(model, 32, [_scattered_table(len(ids), 0, 1, 32)]).step({0: (0, ids)})[0]
    paged = PagedSequences(model, 32, [_scattered_table(len(ids), 9, 5, 32)])
    parts = [paged.step({0: (0, ids[:5])})[0], paged.step({0: (5, ids[5:6])})[0], paged.step({0: (6, ids[6:])})[0]]
    assert torch.allclose(torch.cat(parts), whole, atol=1e-5)


class RecordingHook:
    """A range hook that records the ops the timer wraps, and fails if one nests inside another."""

    def __init__(self) -> None:
        self.depth = 0

    def push(self, name: str, category: str, payload: int = 0) -> None:
        assert self.depth == 0, "ops must not nest"
        self.depth += 1

    def pop(self) -> None:
        self.depth -= 1


def test_timer_sees_every_op_in_order():
    model, cfg, tok = load_model({"source": "random", "shape": "tiny", "seed": 0}, torch.float32, CPU)
    ids = tok.encode("timer")
    paged = PagedSequences(model, 8, [[0, 1, 2]])
    hook = RecordingHook()
    timer = OpTimer(CPU, hook)
    timer.attach(model)
    timer.start_step()
    model.bind_kv_cache(paged.kv, TorchAttention())
    hidden = model(torch.tensor(ids), ForwardContext(torch.arange(len(ids)), _meta_for(ids)))
    model.compute_logits(hidden)
    timer.detach()
    per_layer = ["attn_norm", "qkv", "rope", "kv_write", "attention", "o_proj", "mlp_norm", "mlp"]
    expected = [("embed", -1)] + [(op, i) for i in range(cfg.num_layers) for op in per_layer]
    expected += [("final_norm", -1), ("lm_head", -1)]
    assert [(op, layer) for op, layer, _, _ in timer.resolve()] == expected and hook.depth == 0
    assert all(start <= end for _, _, start, end in timer.resolve())
    # detached: the model runs untimed again
    timer.start_step()
    model(torch.tensor(ids), ForwardContext(torch.arange(len(ids)), _meta_for(ids)))
    assert timer.resolve() == []


def _meta_for(ids: list[int]) -> AttentionMetadata:
    n = len(ids)
    return AttentionMetadata(
        slot_mapping=torch.arange(n), block_tables=torch.tensor([[0, 1, 2]], dtype=torch.int32),
        query_start_loc=torch.tensor([0, n], dtype=torch.int32), seq_lens=torch.tensor([n], dtype=torch.int32),
        query_lens_host=[n], seq_lens_host=[n], max_query_len=n, max_seq_len=n,
    )


# ---------------------------------------------------------------------------------- HF folder


def _write_tiny_hf_folder(folder, tie: bool) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf_config = LlamaConfig(
        vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=128, rope_theta=5000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=tie, bos_token_id=256, eos_token_id=257,
    )
    hf_model = LlamaForCausalLM(hf_config).eval()
    with torch.no_grad():  # non-trivial norm weights so a swapped or dropped norm shows
        for name, p in hf_model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    hf_model.save_pretrained(folder)
    return hf_model


@pytest.mark.slow
@pytest.mark.parametrize("tie", [False, True])
def test_hf_folder_round_trip(tmp_path, tie):
    hf_model = _write_tiny_hf_folder(tmp_path, tie)
    model, cfg, _ = load_model({"source": "hf", "path": str(tmp_path)}, torch.float32, CPU)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rope_theta, cfg.tie_embeddings) == (6, 2, 8, 5000.0, tie)
    ids = torch.randint(0, 300, (19,), generator=torch.Generator().manual_seed(1)).tolist()
    paged = PagedSequences(model, 16, [_scattered_table(len(ids), 3, 5, 16)])
    ours = torch.cat([paged.step({0: (0, ids[:11])})[0], paged.step({0: (11, ids[11:])})[0]])
    with torch.inference_mode():
        ref = hf_model(torch.tensor([ids])).logits[0]
    _assert_close(ours, ref)


@pytest.mark.slow
def test_hf_folder_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    _write_tiny_hf_folder(tmp_path, tie=False)
    (file,) = tmp_path.glob("*.safetensors")
    tensors = load_file(str(file))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(file), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="missing tensor model.layers.1.mlp.up_proj.weight"):
        load_model({"source": "hf", "path": str(tmp_path)}, torch.float32, CPU)


def test_hf_folder_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_model({"source": "hf", "path": str(tmp_path / "nope")}, torch.float32, CPU)
    with pytest.raises(ModelLoadError, match="config.json: no such file"):
        load_model({"source": "hf", "path": str(tmp_path)}, torch.float32, CPU)
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ModelLoadError, match="unsupported model_type 'gpt2'"):
        load_model({"source": "hf", "path": str(tmp_path)}, torch.float32, CPU)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_model({"source": "hf", "path": str(tmp_path)}, torch.float32, CPU)


# ---------------------------------------------------------------------------------- bad input


def test_missing_gguf_file(tmp_path):
    path = tmp_path / "absent.gguf"
    with pytest.raises(ModelLoadError, match=f"{path}: no such file"):
        load_model({"source": "gguf", "path": str(path)}, torch.float32, CPU)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_text("this is plain text, not a model\n")
    with pytest.raises(ModelLoadError, match=f"{path}: not a GGUF file"):
        load_model({"source": "gguf", "path": str(path)}, torch.float32, CPU)


@pytest.mark.parametrize("keep_bytes", [24, 4096, 20_000_000])
def test_truncated_gguf_file(tmp_path, keep_bytes):
    # 24 bytes: header counts only; 4 KiB: metadata cut mid-way; 20 MB: tensor data cut off
    path = tmp_path / "cut.gguf"
    with open(default_gguf_path(), "rb") as src:
        path.write_bytes(src.read(keep_bytes))
    with pytest.raises(ModelLoadError, match=f"{path}: .*(truncated|corrupt)"):
        load_model({"source": "gguf", "path": str(path)}, torch.float32, CPU)


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "other.gguf"
    _write_minimal_gguf(path, {"general.architecture": "mamba"})
    with pytest.raises(ModelLoadError, match="unsupported architecture 'mamba'"):
        load_model({"source": "gguf", "path": str(path)}, torch.float32, CPU)


def _write_minimal_gguf(path, strings: dict[str, str]) -> None:
    """A GGUF v3 file with string metadata, a byte-level tokenizer and no tensors (written by hand)."""
    def s(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    def str_array(items: list[str]) -> bytes:
        return struct.pack("<IQ", 8, len(items)) + b"".join(s(i) for i in items)

    kvs = [s(k) + struct.pack("<I", 8) + s(v) for k, v in {**strings, "tokenizer.ggml.model": "gpt2"}.items()]
    kvs.append(s("tokenizer.ggml.tokens") + struct.pack("<I", 9) + str_array(["a", "b", "ab"]))
    kvs.append(s("tokenizer.ggml.merges") + struct.pack("<I", 9) + str_array(["a b"]))
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs))


def test_random_weights_refuse_what_the_engine_cannot_run():
    for shape, needle in (("deepseek-v3", "multi-head latent attention"), ("mistral-7b", "sliding-window"),
                          ("qwen2.5-7b", "attention bias")):
        with pytest.raises(RecipeError, match=f"model.shape: {shape} cannot run with random weights: {needle}") as err:
            load_model({"source": "random", "shape": shape}, torch.float32, CPU)
        assert "\n" not in str(err.value)


def test_bad_specs_are_recipe_errors():
    with pytest.raises(RecipeError, match="model.source"):
        load_model({"source": "onnx"}, torch.float32, CPU)
    with pytest.raises(RecipeError, match="model.shape: unknown model shape 'huge'"):
        load_model({"source": "random", "shape": "huge"}, torch.float32, CPU)
    with pytest.raises(RecipeError, match="model.colour: unknown key"):
        load_model({"source": "random", "shape": "tiny", "colour": "red"}, torch.float32, CPU)
    with pytest.raises(RecipeError, match="model.seed"):
        load_model({"source": "random", "shape": "tiny", "seed": "x"}, torch.float32, CPU)


def test_hf_config_defaults_are_transformers_llama_defaults():
    """A config.json that leaves out rms_norm_eps / max_position_embeddings / rope_theta reads as transformers
    reads it (the model must compute what transformers computes)."""
    from transformers import LlamaConfig

    from kvscope.engine.checkpoint.formats import config_from_hf

    ours = config_from_hf({"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64,
                           "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 300}, "config.json")
    ref = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                      vocab_size=300)
    assert ours.rms_norm_eps == ref.rms_norm_eps
    assert ours.max_position_embeddings == ref.max_position_embeddings
    assert ours.rope_theta == ref.rope_parameters["rope_theta"]
