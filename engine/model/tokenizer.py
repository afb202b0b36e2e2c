"""Tokenizers: byte-level BPE from GGUF metadata or a tokenizer.json, and a byte tokenizer for random models.

Tokenizer is the interface the engine uses (encode / decode / chat template / special ids);
BPETokenizer wraps the `tokenizers` library, ByteTokenizer maps ids 0..255 to bytes. Encoding a long text never
holds the interpreter for long, so a server can tokenize a client's prompt in a worker thread while its event
loop goes on: BPETokenizer encodes through `encode_batch`, which releases the GIL (`encode` does not), and
ByteTokenizer converts in slices of BYTE_SLICE bytes. `min_tokens` bounds a text's token count from below without
encoding it (no token covers more than `max_token_chars` characters), so a prompt that can never fit a context
is refused at once, not after seconds of tokenizing.
IncrementalDetokenizer turns a growing list of ids into text deltas (for streaming and stop strings),
never emitting half of a multi-byte character.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvscope.engine.model.chat_template import render_chat_template
from kvscope.errors import ModelLoadError

# llama.cpp token types (tokenizer.ggml.token_type)
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

# Pre-tokenizer splits for GGUF `tokenizer.ggml.pre` values that are not the GPT-2 default.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BYTE_SLICE = 1 << 16  # ByteTokenizer: bytes converted per step (a step holds the GIL ~0.3 ms)

PRE_TOKENIZER_SPLITS = {
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT, "dbrx": _LLAMA3_SPLIT, "falcon3": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}


class Tokenizer:
    """What the engine needs from a tokenizer. Subclasses implement _encode_text and decode."""

    vocab_size: int
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    add_bos_default: bool
    chat_template: str | None
    max_token_chars: int | None = None  # the most characters of text one token covers; None: no bound known
    uncounted: dict[int, None] | None = None  # characters that may encode to nothing (left out of the bound)

    def min_tokens(self, text: str) -> int:
        """A lower bound on the tokens `text` encodes to (0 when no bound is known)."""
        if not self.max_token_chars:
            return 0
        if self.uncounted:
            text = text.translate(self.uncounted)
        return -(-len(text) // self.max_token_chars)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of text; special-token strings in text become their ids.

        add_bos None follows the model's own default (add_bos_default)."""
        ids = self._encode_text(text)
        if add_bos is None:
            add_bos = self.add_bos_default
        if add_bos and self.bos_token_id is not None and (not ids or ids[0] != self.bos_token_id):
            ids.insert(0, self.bos_token_id)
        return ids

    def _encode_text(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        raise NotImplementedError

    def token_text(self, token_id: int) -> str:
        """The text of one token (for displays); special tokens kept."""
        return self.decode([token_id], skip_special_tokens=False)

    @property
    def bos_token(self) -> str:
        return "" if self.bos_token_id is None else self.token_text(self.bos_token_id)

    @property
    def eos_token(self) -> str:
        return "" if not self.eos_token_ids else self.token_text(self.eos_token_ids[0])

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Prompt text for chat messages (the model's template, or a ChatML default)."""
        return render_chat_template(
            self.chat_template, messages, add_generation_prompt, self.bos_token, self.eos_token
        )

    def incremental_detokenizer(self, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self, skip_special_tokens)


class IncrementalDetokenizer:
    """Feed ids one batch at a time, get back the new text; holds back incomplete UTF-8 sequences.

    Decodes only a short window (from the last emitted boundary), so each call costs O(window). New text
    ending in an undecodable character (U+FFFD: a multi-byte character cut between tokens, or invalid
    UTF-8) is held back until decodable text follows it. `text` is everything emitted so far; `flush()`
    gives what is still held when the request ends.
    """

    __slots__ = ("ids", "prefix_offset", "read_offset", "skip_special_tokens", "text", "tokenizer")

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""

    def push(self, new_ids: Sequence[int]) -> str:
        """Append ids; return the text they complete (maybe empty)."""
        self.ids.extend(new_ids)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix_offset : self.read_offset], self.skip_special_tokens)
        after = decode(self.ids[self.prefix_offset :], self.skip_special_tokens)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        return self._emit(after[len(before) :])

    def flush(self) -> str:
        """The text still held back (the request ended), as it decodes."""
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix_offset : self.read_offset], self.skip_special_tokens)
        after = decode(self.ids[self.prefix_offset :], self.skip_special_tokens)
        return self._emit(after[len(before) :]) if len(after) > len(before) else ""

    def _emit(self, delta: str) -> str:
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.ids)
        self.text += delta
        return delta


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's printable spelling of bytes: printable latin-1 bytes as themselves, the rest shifted past 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelling = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in spelling:
            spelling[b] = chr(256 + shifted)
            shifted += 1
    return spelling


class BPETokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` (byte-level BPE) with the model's special ids and chat template."""

    def __init__(
        self,
        backend: Any,
        bos_token_id: int | None,
        eos_token_ids: tuple[int, ...],
        add_bos_default: bool,
        chat_template: str | None,
    ) -> None:
        self.backend = backend
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.bos_token_id = bos_token_id
        self.eos_token_ids = tuple(eos_token_ids)
        self.add_bos_default = add_bos_default
        self.chat_template = chat_template
        if _keeps_every_byte(backend):  # a token's spelling is one character per byte it covers (or longer)
            self._bound_tokens(backend)

    def _bound_tokens(self, backend: Any) -> None:
        """max_token_chars: each character leaves at least one byte's symbol for some token to spell, and no token
        spells more than max_token_chars symbols. A vocabulary may lack some bytes' tokens (SmolLM2's lacks six
        ASCII control characters, which then encode to nothing, and some lead bytes): a missing ASCII byte is
        left out of the count (`uncounted`); a character of several bytes always holds a continuation byte
        (0x80-0xBF), so with any of those missing there is no bound."""
        vocab = backend.get_vocab(with_added_tokens=True)
        symbols = byte_level_symbols()
        if any(symbols[b] not in vocab for b in range(0x80, 0xC0)):  # every non-ASCII character holds one of these
            return
        vanishing = [chr(b) for b in range(128) if not self._encode_text(chr(b))]
        self.max_token_chars = max(len(t) for t in vocab)
        self.uncounted = {ord(c): None for c in vanishing} or None

    def _encode_text(self, text: str) -> list[int]:
        return list(self.backend.encode_batch([text], add_special_tokens=False)[0].ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any], where: str) -> BPETokenizer:
        """Build from GGUF `tokenizer.*` metadata (values already decoded to python). `where` names the file."""
        from tokenizers import AddedToken, Regex, decoders, pre_tokenizers
        from tokenizers import Tokenizer as RawTokenizer
        from tokenizers.models import BPE

        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ModelLoadError(f"{where}: unsupported tokenizer model {kind!r} (only byte-level BPE, 'gpt2')")
        tokens: list[str] = meta.get("tokenizer.ggml.tokens") or []
        merges: list[str] = meta.get("tokenizer.ggml.merges") or []
        if not tokens or not merges:
            raise ModelLoadError(f"{where}: tokenizer.ggml.tokens / tokenizer.ggml.merges missing")
        types: list[int] = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))

        spelling = _byte_alphabet()
        alphabet = set(spelling.values())
        vocab: dict[str, int] = {}
        for index, token in enumerate(tokens):
            if not set(token) <= alphabet:
                token = "".join(spelling[b] for b in token.encode("utf-8"))
            vocab.setdefault(token, index)
        pairs = []
        for line in merges:
            left, sep, right = line.partition(" ")
            if not sep:
                raise ModelLoadError(f"{where}: malformed merge {line!r} in tokenizer.ggml.merges")
            pairs.append((left, right))
        backend = RawTokenizer(BPE(vocab=vocab, merges=pairs, dropout=None, continuing_subword_prefix="",
                                   end_of_word_suffix="", fuse_unk=False))
        split = PRE_TOKENIZER_SPLITS.get(meta.get("tokenizer.ggml.pre", ""))
        if split is None:
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        else:
            backend.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ])
        backend.decoder = decoders.ByteLevel()
        control = [AddedToken(t, normalized=False, special=True)
                   for t, ty in zip(tokens, types) if ty == TOKEN_TYPE_CONTROL and set(t) <= alphabet]
        if control:
            backend.add_special_tokens(control)
        user = [AddedToken(t, normalized=False, special=False)
                for t, ty in zip(tokens, types) if ty == TOKEN_TYPE_USER_DEFINED and t in vocab]
        if user:
            backend.add_tokens(user)

        bos = meta.get("tokenizer.ggml.bos_token_id")
        eos = meta.get("tokenizer.ggml.eos_token_id")
        eot = meta.get("tokenizer.ggml.eot_token_id")
        eos_ids = tuple(dict.fromkeys(int(i) for i in (eos, eot) if i is not None))
        return cls(
            backend,
            bos_token_id=None if bos is None else int(bos),
            eos_token_ids=eos_ids,
            add_bos_default=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
            chat_template=meta.get("tokenizer.chat_template"),
        )

    @classmethod
    def from_folder(cls, folder: Path, eos_token_ids: tuple[int, ...] = (),
                    bos_token_id: int | None = None) -> BPETokenizer:
        """Build from a Hugging Face folder's tokenizer.json (+ tokenizer_config.json for template / specials).

        eos_token_ids / bos_token_id from config.json take precedence over the tokenizer's own tokens."""
        from tokenizers import Tokenizer as RawTokenizer

        path = folder / "tokenizer.json"
        try:
            backend = RawTokenizer.from_file(str(path))
        except Exception as exc:
            raise ModelLoadError(f"{path}: not a readable tokenizer.json ({exc})") from None
        config: dict[str, Any] = {}
        config_path = folder / "tokenizer_config.json"
        if config_path.exists():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"{config_path}: not valid JSON ({exc})") from None

        def token_id(key: str) -> int | None:
            value = config.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            return backend.token_to_id(value) if isinstance(value, str) else None

        bos = bos_token_id if bos_token_id is not None else token_id("bos_token")
        eos = tuple(eos_token_ids) or tuple(i for i in (token_id("eos_token"),) if i is not None)
        if "add_bos_token" in config:
            add_bos = bool(config["add_bos_token"])
        else:  # does the post-processor put BOS in front?
            probe = backend.encode("a", add_special_tokens=True).ids
            add_bos = bos is not None and bool(probe) and probe[0] == bos
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: take "default"
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        return cls(backend, bos_token_id=bos, eos_token_ids=eos, add_bos_default=add_bos, chat_template=template)


def byte_level_symbols() -> list[str]:
    """The character a byte-level pre-tokenizer writes for each byte 0..255: printable Latin-1 bytes as
    themselves, every other byte as the next character from U+0100 on, in byte order."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    out, shifted = [], 0x100
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(shifted))
            shifted += 1
    return out


def _keeps_every_byte(backend: Any) -> bool:
    """Whether a `tokenizers` pipeline turns every byte of a text into some token: no normalizer (which may drop
    or merge characters) and a byte-level pre-tokenizer, alone or after regex splits that keep what they match."""
    if backend.normalizer is not None or backend.pre_tokenizer is None:
        return False
    state = json.loads(backend.pre_tokenizer.__getstate__())
    steps = state.get("pretokenizers", []) if state.get("type") == "Sequence" else [state]
    kinds = [step.get("type") for step in steps]
    return ("ByteLevel" in kinds and set(kinds) <= {"ByteLevel", "Split"}
            and all(step.get("behavior") != "Removed" for step in steps))


class ByteTokenizer(Tokenizer):
    """Ids 0..255 are bytes; then <s>, </s>, <pad>, <|im_start|>, <|im_end|>. For random-weight models."""

    SPECIALS = ("<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>")
    max_token_chars = max(len(s) for s in SPECIALS)

    def __init__(self, vocab_size: int = 512) -> None:
        needed = 256 + len(self.SPECIALS)
        if vocab_size < needed:
            raise ValueError(f"a byte tokenizer needs a vocabulary of at least {needed}, got {vocab_size}")
        self.vocab_size = vocab_size
        self.special_ids = {name: 256 + i for i, name in enumerate(self.SPECIALS)}
        self.special_names = {i: name for name, i in self.special_ids.items()}
        self.bos_token_id = self.special_ids["<s>"]
        self.eos_token_ids = (self.special_ids["</s>"], self.special_ids["<|im_end|>"])
        self.add_bos_default = True
        self.chat_template = None
        self._split = re.compile("(" + "|".join(re.escape(s) for s in self.SPECIALS) + ")")

    def _encode_text(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self._split.split(text):
            if piece in self.special_ids:
                ids.append(self.special_ids[piece])
            elif piece:
                data = piece.encode("utf-8")
                for start in range(0, len(data), BYTE_SLICE):
                    ids.extend(data[start:start + BYTE_SLICE])
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        out: list[str] = []
        pending = bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < 256:
                pending.append(i)
                continue
            if pending:
                out.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
            if not skip_special_tokens:
                out.append(self.special_names.get(i, f"<unused{i}>"))
        if pending:
            out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)
