"""Tokenizers against Hugging Face's tokenizer for the same GGUF, and the byte tokenizer's own laws.

Oracle: transformers' AutoTokenizer.from_pretrained(folder, gguf_file=...) builds its tokenizer
from the GGUF metadata independently of ours; encode, decode and chat templates must agree.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvscope.engine.model.chat_template import DEFAULT_CHAT_TEMPLATE
from kvscope.engine.model.loader import load_tokenizer
from kvscope.engine.model.tokenizer import BPETokenizer, ByteTokenizer
from kvscope.errors import RequestError

SAMPLES = [
    "Hello world",
    "  two  leading spaces and\ttabs\t\tand trailing   ",
    "line one\nline two\n\n\nafter blank lines\r\nwindows",
    "Digits: 0 7 42 1234567890 3.14159 -17 1e-5 2024-11-21",
    "héllo naïve café — “quotes” ‘single’ … ünïcödé",
    "日本語のテキスト, 中文文本, 한국어 텍스트, русский текст, العربية",
    "emoji 🙂🚀👩‍💻 and flags 🇫🇷 mixed with text",
    "def f(x):\n    return {'a': [1, 2, 3], \"b\": x ** 2}  # comment\n",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "special tokens inline: <|endoftext|> and <repo_name> kvscope<file_sep>",
    "don't I'll we're they've she'd IT'S",
    "",
    " ",
    "\n",
    "a" * 300,
]

CHATS = [
    [{"role": "user", "content": "Hi there!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Explain KV caches."}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "and 3+3?\nthanks 🙂"}],
]


@pytest.fixture(scope="module")
def ours() -> BPETokenizer:
    tok = load_tokenizer({"source": "gguf", "path": "smollm2"})
    assert isinstance(tok, BPETokenizer)
    return tok


@pytest.fixture(scope="module")
def hf():
    from support.hf_oracle import hf_tokenizer

    return hf_tokenizer()


# ------------------------------------------------------------------------------ GGUF BPE vs HF


@pytest.mark.slow
@pytest.mark.parametrize("text", SAMPLES)
def test_encode_matches_hf(ours, hf, text):
    assert ours.encode(text) == hf(text)["input_ids"]


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60))
def test_encode_and_decode_match_hf_on_arbitrary_text(ours, hf, text):
    ids = ours.encode(text)
    assert ids == hf(text)["input_ids"]
    assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)


@pytest.mark.slow
def test_special_ids_and_vocab_match_hf(ours, hf):
    assert ours.vocab_size == len(hf) == 49152
    assert ours.bos_token_id == hf.bos_token_id
    assert ours.eos_token_ids == (hf.eos_token_id,)
    assert ours.add_bos_default is False  # the file says tokenizer.ggml.add_bos_token = false


@pytest.mark.slow
@pytest.mark.parametrize("skip", [True, False])
def test_decode_matches_hf_including_specials_and_partial_bytes(ours, hf, skip):
    ids = ours.encode(SAMPLES[8] + SAMPLES[6] + SAMPLES[5])
    assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    cut = ids[:-3]  # ends inside the multi-byte characters
    assert ours.decode(cut, skip_special_tokens=skip) == hf.decode(cut, skip_special_tokens=skip)


@pytest.mark.slow
@pytest.mark.parametrize("chat", CHATS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_hf(ours, hf, chat, add_generation_prompt):
    text = ours.apply_chat_template(chat, add_generation_prompt=add_generation_prompt)
    ref = hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert text == ref
    assert ours.encode(text) == hf(ref)["input_ids"]


def test_bos_is_added_once_on_request(ours):
    ids = ours.encode("hi", add_bos=True)
    assert ids[0] == ours.bos_token_id and ids[1:] == ours.encode("hi")
    assert ours.encode("<|im_start|>hi", add_bos=True).count(ours.bos_token_id) == 1


def test_chat_template_rejects_bad_messages(ours):
    with pytest.raises(RequestError, match=r"messages\[1\]\.content"):
        ours.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user"}])
    with pytest.raises(RequestError, match="messages: expected a list"):
        ours.apply_chat_template("hello")  # type: ignore[arg-type]


@pytest.mark.slow
def test_tokenizer_json_folder_matches_hf(tmp_path, hf):
    hf.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False,
        "chat_template": hf.chat_template,
    }))
    tok = BPETokenizer.from_folder(tmp_path)
    assert (tok.bos_token_id, tok.eos_token_ids) == (1, (2,))
    for text in SAMPLES:
        assert tok.encode(text) == hf(text)["input_ids"]
    assert tok.apply_chat_template(CHATS[1]) == hf.apply_chat_template(CHATS[1], tokenize=False,
                                                                        add_generation_prompt=True)


# ------------------------------------------------------------------------- incremental decoding


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40),
       data=st.data())
def test_incremental_detokenizer_rebuilds_text(ours, text, data):
    ids = ours.encode(text)
    full = ours.decode(ids)
    detok = ours.incremental_detokenizer()
    pieces, i = [], 0
    while i < len(ids):
        n = data.draw(st.integers(1, 3))
        pieces.append(detok.push(ids[i : i + n]))
        i += n
    assert "".join(pieces) == detok.text
    assert full.startswith(detok.text)
    if full == text:  # the vocabulary covers every byte of text: nothing may be held back or mangled
        assert detok.text == text


# ------------------------------------------------------------------------------ byte tokenizer


@given(text=st.text(max_size=80))
def test_byte_tokenizer_round_trips_text(text):
    tok = ByteTokenizer(512)
    text = text.encode("utf-8", errors="replace").decode("utf-8")  # lone surrogates are not encodable
    ids = tok.encode(text, add_bos=False)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids, skip_special_tokens=False) == text  # special names in text come back as written


def test_byte_tokenizer_layout_and_specials():
    tok = ByteTokenizer(512)
    assert tok.encode("A", add_bos=False) == [65]
    assert tok.encode("é", add_bos=False) == list("é".encode())
    assert tok.encode("x") == [tok.bos_token_id, ord("x")]  # random models add BOS by default
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>", add_bos=False)
    assert ids[0] == 259 and ids[-1] == 260 and 260 in tok.eos_token_ids
    assert tok.decode(ids) == "user\nhi"
    assert tok.decode(ids, skip_special_tokens=False) == "<|im_start|>user\nhi<|im_end|>"
    with pytest.raises(ValueError, match="at least 261"):
        ByteTokenizer(260)


def test_byte_tokenizer_default_chat_template():
    tok = ByteTokenizer(512)
    assert tok.chat_template is None
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert "<|im_start|>" in DEFAULT_CHAT_TEMPLATE


@given(text=st.text(max_size=40), data=st.data())
def test_byte_incremental_detokenizer_never_splits_characters(text, data):
    tok = ByteTokenizer(512)
    text = text.encode("utf-8", errors="replace").decode("utf-8")
    ids = tok.encode(text, add_bos=True)
    detok = tok.incremental_detokenizer(skip_special_tokens=False)
    i = 0
    while i < len(ids):
        n = data.draw(st.integers(1, 4))
        assert "\ufffd" not in detok.push(ids[i : i + n])
        i += n
    assert detok.text == "<s>" + text
