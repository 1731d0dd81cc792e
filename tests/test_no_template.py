"""A base model without a chat template, whose vocabulary lacks ChatML's markers: the chatml
fallback adds them as tokens, so every load path must grow the embeddings to match (else the
new ids index past the table). Served and chatted, it answers instead of crashing."""

import io
import sys

import openai
import pytest

from infer_kit import save_lora
from tiny import make_model, make_tokenizer, save_tiny


@pytest.fixture(scope="module")
def plain_base(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("plain") / "base", chat_template=None, chatml=False)


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    """A model with more embedding rows than tokenizer entries (vocabularies padded to a round size)."""
    folder = tmp_path_factory.mktemp("padded") / "model"
    tok = make_tokenizer()
    model = make_model(tok)
    model.resize_token_embeddings(len(tok) + 8)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_fixture_really_lacks_chatml(plain_base):
    from tailor import models
    from tailor.data.templates import ensure_chat_template

    tok = models.load_tokenizer(str(plain_base))
    before = len(tok)
    assert "<|im_start|>" not in tok.get_vocab() and not tok.chat_template
    assert "added special token" in ensure_chat_template(tok)
    assert len(tok) == before + 2


@pytest.fixture(scope="module")
def client(plain_base, padded, tmp_path_factory):
    from fastapi.testclient import TestClient

    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry

    lora = save_lora(plain_base, tmp_path_factory.mktemp("plain-lora") / "lora")
    reg = Registry.load([str(plain_base), str(lora), str(padded)], ["plain", "plain-lora", "padded"],
                        dtype="float32", max_batch=4, max_len=128)
    with TestClient(create_app(reg)) as http:
        yield openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=http, max_retries=0), reg


@pytest.mark.parametrize("model", ["plain", "plain-lora"])
def test_served_base_without_template_answers(client, model):
    api, _ = client
    r = api.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}],
                                    max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0


def test_completion_ids_are_checked_against_the_embedding_rows(client):
    api, reg = client
    tok = reg.get("plain").tokenizer
    added = tok.convert_tokens_to_ids("<|im_end|>")  # added by the fallback: past the saved table
    r = api.completions.create(model="plain", prompt=[added], max_tokens=2, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.BadRequestError) as err:
        api.completions.create(model="plain", prompt=[len(tok) + 5], max_tokens=2)
    assert err.value.body["param"] == "prompt"
    # rows the tokenizer does not know are still the model's: valid ids
    pad_tok = reg.get("padded").tokenizer
    r = api.completions.create(model="padded", prompt=[len(pad_tok) + 3], max_tokens=2, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.BadRequestError):
        api.completions.create(model="padded", prompt=[len(pad_tok) + 8], max_tokens=2)


def test_generate_base_without_template(plain_base, capsys):
    from tailor.cli import main

    assert main(["generate", "--model", str(plain_base), "--temperature", "0", "--max-new-tokens", "4",
                 "--dtype", "float32", "Hello"]) == 0
    assert "chatml" in capsys.readouterr().err


def test_chat_base_without_template(plain_base, tmp_path, monkeypatch, capsys):
    from tailor.cli import main

    lora = save_lora(plain_base, tmp_path / "lora")
    for model in (plain_base, lora):
        monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\nAgain\n"))  # piped: one user turn a line
        assert main(["chat", "--model", str(model), "--temperature", "0", "--max-new-tokens", "4",
                     "--dtype", "float32"]) == 0
        out = capsys.readouterr()
        assert "chatml" in out.err and out.out.count("\n") >= 2  # a reply (any text: random weights) per turn


def test_a_shared_base_refuses_a_longer_tokenizer(plain_base):
    from tailor import models
    from tailor.data.templates import ensure_chat_template
    from tailor.errors import TailorError
    from tailor.infer.loading import fit_embeddings, load_hf_model

    tok = models.load_tokenizer(str(plain_base))
    model = load_hf_model(plain_base, "float32", "cpu")
    rows = model.get_input_embeddings().num_embeddings
    ensure_chat_template(tok)
    with pytest.raises(TailorError, match="embedding rows"):
        fit_embeddings(model, tok, shared=True)  # its engine already holds the old table
    fit_embeddings(model, tok)
    assert model.get_input_embeddings().num_embeddings == len(tok) == rows + 2
    assert model.get_output_embeddings().weight.shape[0] == len(tok)
