"""Retrieval in the server and in `tailor chat`: a real index of made-up documents (built with the
bundled all-MiniLM-L6-v2), a tiny random model, and the official `openai` client. The proof that
the model saw the chunks: the served prompt is exactly the rendering of rag.context's messages."""

import io
import sys
from types import SimpleNamespace

import openai
import pytest

from infer_kit import save_lively
from servekit import serving

KEY = "sk-rag"
DOCS = {
    "zorblat.md": "# Zorblat fruit\n\nThe zorblat is a blue fruit that grows only on Mount Quellin. "
                  "Its skin is striped and it tastes of pepper.\n",
    "harbor.md": "# Vintmoor harbor\n\nShips in Vintmoor harbor must dock before sunset. The harbor master "
                 "is Ada Pell, who collects a fee of three copper coins from every ship.\n",
    "trains.txt": "The night train from Oskov to Brell leaves at eleven in the evening; the journey takes "
                  "nine hours.\n",
}
FRUIT = "What colour is the zorblat fruit, and where does it grow?"
TRAIN = "When does the night train to Brell leave?"


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    from tailor.rag.index import build_index

    root = tmp_path_factory.mktemp("rag")
    (root / "docs").mkdir()
    for name, text in DOCS.items():
        (root / "docs" / name).write_text(text)
    build_index(sorted((root / "docs").iterdir()), root / "docs-index", chunk_tokens=64, overlap=8, progress=False)
    return root / "docs-index"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    return str(save_lively(tmp_path_factory.mktemp("rag-serve") / "base"))


@pytest.fixture(scope="module")
def server(index, base):
    from tailor.rag.retrieve import Retriever
    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry

    # three ids on one engine: retrieval is the server's, per model id; the engine knows nothing of it
    reg = Registry.load([base] * 3, ["tiny-rag", "tiny-user", "tiny"], dtype="float32", max_batch=8, max_len=1024)
    reg.use_retrievers({"tiny-rag": Retriever.open(index, k=2),
                        "tiny-user": Retriever.open(index, k=2, style="user")})
    with serving(create_app(reg, api_key=KEY)) as url:
        yield url, reg


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _chat(client, model, question=FRUIT, **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 4)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], **kw)


def _ext(obj) -> dict | None:
    return (obj.model_extra or {}).get("tailor")


def test_plain_response_names_its_sources_best_first(client):
    r = _chat(client, "tiny-rag")
    sources = r.tailor["sources"]  # the SDK keeps the extension field as an attribute
    assert len(sources) == 2 and set(sources[0]) == {"source", "heading", "chunk_id", "score", "text"}
    assert sources[0]["source"].endswith("zorblat.md") and "blue fruit" in sources[0]["text"]
    assert sources[0]["chunk_id"].startswith(sources[0]["source"] + "#")
    assert sources[0]["score"] > sources[1]["score"]
    assert _ext(_chat(client, "tiny-rag", TRAIN))["sources"][0]["source"].endswith("trains.txt")


@pytest.mark.parametrize("model, style", [("tiny-rag", "system"), ("tiny-user", "user")])
def test_the_prompt_holds_the_chunks_in_the_context_format(client, server, model, style, monkeypatch):
    """The ids the engine is given are the rendering of rag.context's messages, token for token
    (a count alone would pass with the chunks in another order, place or format)."""
    from tailor.rag.context import add_context
    from tailor.serve.chat import prompt_ids

    messages = [{"role": "user", "content": FRUIT}]
    served = server[1].get(model)
    submitted = []
    submit = served.engine.submit
    monkeypatch.setattr(served.engine, "submit", lambda req: submitted.append(list(req.prompt)) or submit(req))
    on = _chat(client, model, max_tokens=1)
    off = _chat(client, model, max_tokens=1, extra_body={"tailor": {"rag": False}})
    hits = [SimpleNamespace(**s) for s in _ext(on)["sources"]]
    assert submitted == [prompt_ids(served, add_context(messages, hits, style)), prompt_ids(served, messages)]
    assert on.usage.prompt_tokens == len(submitted[0]) and off.usage.prompt_tokens == len(submitted[1])
    assert on.usage.prompt_tokens > off.usage.prompt_tokens + 20
    assert _ext(off) is None  # no retrieval, no field


def test_stream_carries_the_sources_in_its_last_chunk_only(client):
    plain = _ext(_chat(client, "tiny-rag"))
    chunks = list(_chat(client, "tiny-rag", stream=True))
    assert [i for i, c in enumerate(chunks) if _ext(c)] == [len(chunks) - 1]
    assert chunks[-1].choices[0].finish_reason and _ext(chunks[-1]) == plain
    # with include_usage the usage chunk comes last, and carries them; with n=2, after both choices end
    chunks = list(_chat(client, "tiny-rag", stream=True, n=2, stream_options={"include_usage": True}))
    assert [i for i, c in enumerate(chunks) if _ext(c)] == [len(chunks) - 1]
    assert chunks[-1].choices == [] and chunks[-1].usage and _ext(chunks[-1]) == plain
    assert not _ext(chunks[-2]) and chunks[-2].choices[0].finish_reason


def test_a_request_sets_k_or_turns_retrieval_off(client):
    assert len(_ext(_chat(client, "tiny-rag", extra_body={"tailor": {"k": 1}}))["sources"]) == 1
    assert len(_ext(_chat(client, "tiny-rag", extra_body={"tailor": {"k": 3}}))["sources"]) == 3
    off = _chat(client, "tiny-rag", extra_body={"tailor": {"k": 0}}, max_tokens=1)
    assert _ext(off) is None
    assert off.usage.prompt_tokens == _chat(client, "tiny", max_tokens=1).usage.prompt_tokens
    chunks = list(_chat(client, "tiny-rag", stream=True, extra_body={"tailor": {"rag": False}}))
    assert not any(_ext(c) for c in chunks)


@pytest.mark.parametrize("options, param", [
    ({"k": 33}, "tailor.k"), ({"k": -1}, "tailor.k"), ({"k": "2"}, "tailor.k"), ({"k": 1.5}, "tailor.k"),
    ({"k": True}, "tailor.k"), ({"rag": "no"}, "tailor.rag"), ({"kk": 2}, "tailor.kk"), ("yes", "tailor"),
])
def test_bad_options_are_400_naming_the_field(client, options, param):
    with pytest.raises(openai.BadRequestError) as err:
        _chat(client, "tiny-rag", extra_body={"tailor": options})
    assert err.value.body["param"] == param and err.value.body["type"] == "invalid_request_error"


def test_a_model_without_an_index_gets_no_sources(client):
    assert _ext(_chat(client, "tiny")) is None
    assert _ext(_chat(client, "tiny", extra_body={"tailor": {"k": 2}})) is None  # k: for where retrieval runs
    with pytest.raises(openai.BadRequestError) as err:
        _chat(client, "tiny", extra_body={"tailor": {"rag": True}})
    assert err.value.body["param"] == "tailor.rag" and "--rag" in err.value.message


def test_models_list_names_each_models_index(client, index):
    from tailor.rag.index import Index

    cards = {m.id: m for m in client.models.list()}
    with Index.open(index) as opened:
        chunks = len(opened)
    assert chunks >= len(DOCS)
    assert _ext(cards["tiny-rag"])["rag"] == {"index": index.name, "chunks": chunks, "k": 2, "style": "system"}
    assert _ext(cards["tiny-user"])["rag"]["style"] == "user"
    assert _ext(cards["tiny"]) is None
    assert str(index.parent) not in str(cards["tiny-rag"].model_extra)  # a name, never a path


def test_serve_refuses_bad_rag_flags_before_loading_anything(index, tmp_path, monkeypatch, capsys):
    from tailor import cli

    monkeypatch.delenv("TAILOR_API_KEY", raising=False)
    state = ["--state", str(tmp_path / "state")]
    cases = [(["--index", str(tmp_path / "missing-index")], "missing-index"),
             (["--rag", f"nope={index}"], "'nope'"),
             (["--rag", str(index)], "MODEL=INDEX"),
             (["--index", str(index), "--rag-k", "40"], "--rag-k")]
    for flags, named in cases:
        assert cli.main(["serve", *state, *flags]) != 0, flags
        err = capsys.readouterr().err
        assert named in err and "Traceback" not in err, err
    assert not (tmp_path / "state").exists()  # nothing was started


def test_rag_wins_over_index_and_fine_tunes_served_later_use_index(index, base):
    from tailor.commands.serve import ServeConfig, open_retrievers
    from tailor.errors import UsageError
    from tailor.serve.registry import Registry

    per_model, every = open_retrievers(ServeConfig(index=str(index), rag=[f"a={index}"], rag_k=3), ["a", "b"])
    assert set(per_model) == {"a"} and per_model["a"] is every and every.k == 3  # one index opened once
    reg = Registry.load([base], ["b"], dtype="float32", max_len=1024)
    with pytest.raises(UsageError, match="nope"):
        reg.use_retrievers({"nope": every})
    reg.use_retrievers({}, every)
    assert reg.get("b").retriever is every and reg.add(base, "ft:b:later").retriever is every


def chat_with_index(model_dir, index, monkeypatch, lines: list[str], k: int, before=None) -> int:
    """`tailor chat --index` in-process on piped `lines`; `before(loaded, messages)` sees each turn's
    prompt messages just before the reply is generated."""
    import tailor.infer.chat as infer_chat
    from tailor import cli

    real = infer_chat.stream_reply

    def reply(loaded, messages, params):
        if before is not None:
            before(loaded, messages)
        return real(loaded, messages, params)

    monkeypatch.setattr(infer_chat, "stream_reply", reply)
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{line}\n" for line in lines)))
    return cli.main(["chat", "--model", str(model_dir), "--index", str(index), "--k", str(k),
                     "--temperature", "0", "--max-new-tokens", "3"])


def test_chat_retrieves_per_turn_and_shows_sources(tiny_model_dir, index, monkeypatch, capsys):
    seen = []
    rc = chat_with_index(tiny_model_dir, index, monkeypatch, [FRUIT, TRAIN], k=1,
                         before=lambda loaded, messages: seen.append(messages))
    out = capsys.readouterr().out
    assert rc == 0
    shown = [line for line in out.splitlines() if line.startswith("sources: ")]
    assert len(shown) == 2 and "\033[" not in out  # piped: no colour codes
    assert "zorblat.md#0 (0." in shown[0] and "trains.txt#0 (0." in shown[1]
    first, second = seen
    assert first[0]["role"] == "system" and "zorblat.md" in first[0]["content"]
    # the second turn sees its own chunk only; the history holds the plain first question
    assert "trains.txt" in second[0]["content"] and "zorblat.md" not in second[0]["content"]
    assert [m["content"] for m in second if m["role"] == "user"] == [FRUIT, TRAIN]


def test_chat_names_k_when_retrieved_chunks_overflow_the_context(tiny_model_dir, index, monkeypatch, capsys):
    def small_context(loaded, messages):
        loaded.engine.max_len = 40  # a model with a short context: the chunks no longer fit

    rc = chat_with_index(tiny_model_dir, index, monkeypatch, [FRUIT], k=2, before=small_context)
    err = capsys.readouterr().err
    assert rc == 1 and "context is 40" in err and "smaller --k (now 2)" in err and "Traceback" not in err
