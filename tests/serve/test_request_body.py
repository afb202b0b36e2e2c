"""kvscope.serve.server.body on its own: nesting measured without recursion, JSON refused with a 400 naming the
problem; and the prompt bound that lets the server refuse a hopeless prompt before tokenizing it.

Oracles: depths counted by hand; Python's json for what is valid; the tokenizers' own encodings, which the
lower bound must never exceed.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kvscope.engine.core.request_check import PromptTooLong, RequestCheck
from kvscope.engine.llm import as_recipe
from kvscope.engine.model.loader import load_tokenizer
from kvscope.engine.model.tokenizer import BPETokenizer, ByteTokenizer
from kvscope.serve.server.body import nesting_exceeds, parse_json, parse_json_object
from kvscope.serve.server.errors import ServeError


def test_nesting_is_counted_per_container_without_recursion():
    assert not nesting_exceeds(1, 0) and not nesting_exceeds("[[[", 1)
    assert not nesting_exceeds([], 1) and nesting_exceeds([], 0)
    assert not nesting_exceeds({"a": [1, {"b": 2}]}, 3) and nesting_exceeds({"a": [1, {"b": []}]}, 3)
    deep: list = []
    node = deep
    for _ in range(100_000):  # deeper than any recursion limit
        node.append([])
        node = node[0]
    assert nesting_exceeds(deep, 64) and not nesting_exceeds(deep, 100_001)


@pytest.mark.parametrize(("raw", "needle"), [
    (b"[" * 100_000, "nests deeper than 64"),
    (b"[" * 65 + b"]" * 65, "nests deeper than 64"),
    (b"{oops", "malformed JSON"),
    (b"", "malformed JSON"),
    (b"\xff\xfe\xfa", "malformed JSON"),
])
def test_bad_json_is_a_400_naming_the_problem(raw, needle):
    with pytest.raises(ServeError) as exc:
        parse_json(raw)
    assert exc.value.status == 400 and needle in exc.value.message


def test_json_up_to_the_depth_limit_and_objects_only_where_asked():
    assert parse_json(b"[" * 64 + b"]" * 64) is not None
    assert parse_json(b"null") is None
    assert parse_json_object(b'{"a": 1}') == {"a": 1}
    with pytest.raises(ServeError, match="must be a JSON object"):
        parse_json_object(b"[1]")


@pytest.fixture(scope="module")
def smollm2() -> BPETokenizer:
    tok = load_tokenizer({"source": "gguf", "path": "smollm2"})
    assert isinstance(tok, BPETokenizer)
    return tok


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=400) | st.from_regex(r"(<\|im_start\|>|<\|im_end\|>| +|\n+|#+|[a-z]+)*", fullmatch=True))
@example(text="\x1d")  # one of the six control characters SmolLM2's vocabulary has no byte token for
@example(text="\U00050000 \x04\x06")  # a lead byte (0xF1) it lacks, beside two more such characters
def test_the_lower_bound_never_exceeds_the_real_count(smollm2, text):
    byte = ByteTokenizer()
    assert byte.min_tokens(text) <= len(byte.encode(text, add_bos=False))
    assert smollm2.max_token_chars is not None
    assert smollm2.min_tokens(text) <= len(smollm2.encode(text, add_bos=False))


def test_byte_level_symbols_are_the_byte_level_pre_tokenizers_alphabet():
    from tokenizers.pre_tokenizers import ByteLevel

    from kvscope.engine.model.tokenizer import byte_level_symbols

    symbols = byte_level_symbols()
    assert len(set(symbols)) == 256 and set(symbols) == set(ByteLevel.alphabet())
    assert symbols[ord("a")] == "a" and symbols[ord(" ")] == "\u0120"  # GPT-2's Ġ for a space


def test_a_normalizing_tokenizer_has_no_bound():
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    backend = Tokenizer(BPE(vocab={"a": 0, "b": 1}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()  # drops whitespace: a text of spaces has no tokens
    assert BPETokenizer(backend, None, (), False, None).min_tokens(" " * 10_000) == 0
    backend.pre_tokenizer = pre_tokenizers.ByteLevel()
    backend.normalizer = normalizers.Lowercase()
    assert BPETokenizer(backend, None, (), False, None).max_token_chars is None


def test_request_check_refuses_a_hopeless_prompt_unencoded_and_encodes_the_rest():
    recipe = as_recipe({"model": {"source": "random", "shape": "tiny", "seed": 0}})
    from kvscope.engine.model.loader import load_shape

    config, tok = load_shape(recipe.model)
    check = RequestCheck(recipe, config, tok, num_blocks=64)
    with pytest.raises(PromptTooLong) as exc:
        check.encode_prompt("x" * 10_000_000, limit=128)
    assert not exc.value.exact and exc.value.num_tokens == 10_000_000 // 12 + 1 >= 128
    with pytest.raises(PromptTooLong) as exc:
        check.encode_prompt([1] * 500, limit=128)
    assert exc.value.exact and exc.value.num_tokens == 500
    with pytest.raises(PromptTooLong):
        check.encode_prompt([{"role": "user", "content": "y" * 5000}], limit=128)
    assert check.encode_prompt("x" * 1000, limit=128) == check.encode_prompt("x" * 1000)  # may fit: encoded
    assert len(check.encode_prompt("x" * 1000)) == 1001
    assert json.dumps(check.encode_prompt([5, 6], limit=128)) == "[5, 6]"
