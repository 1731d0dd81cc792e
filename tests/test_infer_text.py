"""Incremental detokenisation and stop strings, on the tiny byte-level tokenizer."""

import pytest

from tiny import make_tokenizer


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


TEXT = "Ahoy matey! Ünïcödé ✓ 日本語, bonjour. The capital of France is Paris."


def test_stream_decoder_reassembles_text(tok):
    from tailor.infer.detok import StreamDecoder

    ids = tok(TEXT)["input_ids"]
    d = StreamDecoder(tok)
    pieces = [d.push(i) for i in ids]
    assert "".join(pieces) + d.flush() == tok.decode(ids)
    assert not any("\ufffd" in p for p in pieces)  # never half a character


@pytest.mark.parametrize("stop", ["France", "Paris.", "✓", "y!"])
def test_text_stream_stops_before_the_stop_string(tok, stop):
    from tailor.infer.detok import TextStream

    ids = tok(TEXT)["input_ids"]
    s = TextStream(tok, [stop, "never appears"])
    out = ""
    for i in ids:
        out += s.push(i)
        if s.stopped:
            break
    out += s.finish()
    assert s.stopped and out == TEXT[: TEXT.index(stop)]


def test_text_stream_without_stop_releases_everything(tok):
    from tailor.infer.detok import TextStream, partial_suffix

    ids = tok(TEXT)["input_ids"]
    s = TextStream(tok, ["Paris!"])  # "Paris" is held back, then released at the end
    out = "".join(s.push(i) for i in ids)
    assert not s.stopped and out + s.finish() == TEXT
    assert partial_suffix("hello wor", "world") == 3 and partial_suffix("hello", "xyz") == 0
