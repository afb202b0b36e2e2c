"""OutputTextStream: streamed text deltas that honour stop strings across token boundaries.

Oracle: the text the engine returns for a finished request (stop_check.output_text: the whole output
decoded, cut before its first stop string), for outputs fed one token or many at a time.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvscope.engine.core.stop_check import stop_string_at
from kvscope.engine.core.text_delta import OutputTextStream
from kvscope.engine.model.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


def streamed(ids: list[int], stops: list[str], cuts: list[int]) -> tuple[list[str], str]:
    stream = OutputTextStream(TOK, stops)
    deltas, start = [], 0
    for cut in [*sorted(c % (len(ids) + 1) for c in cuts), len(ids)]:
        if cut > start:
            deltas.append(stream.push(ids[start:cut]))
            start = cut
    deltas.append(stream.finish())
    return deltas, "".join(deltas)


def expected(ids: list[int], stops: list[str]) -> str:
    text = TOK.decode(ids)
    cut = stop_string_at(text, stops) if stops else -1
    return text if cut < 0 else text[:cut]


def test_a_stop_string_split_over_tokens_is_never_sent():
    ids = list(b"one two STOP three")
    deltas, text = streamed(ids, ["STOP"], list(range(len(ids))))  # one token at a time
    assert text == "one two "
    assert all("S" not in d for d in deltas)


def test_multibyte_characters_are_sent_whole():
    ids = list("é€🙂 ok".encode())
    deltas, text = streamed(ids, [], list(range(len(ids))))
    assert text == "é€🙂 ok" and all("\ufffd" not in d for d in deltas)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="abcXY é", max_size=40), stops=st.lists(st.text(alphabet="abXY", min_size=1,
                                                                              max_size=3), max_size=2),
       cuts=st.lists(st.integers(0, 200), max_size=8))
def test_streamed_text_equals_the_engines_final_text(text, stops, cuts):
    ids = list(text.encode())
    _, got = streamed(ids, stops, cuts)
    assert got == expected(ids, stops)
