"""The web dashboard: its static page at `/`, and the two things the page needs that OpenAI's
API has no route for, under `/v1/tailor/` (behind the same API-key guard as the rest of /v1; like the Files routes,
they see only the files and models of the key's project):

  GET /v1/tailor/files/{id}/check?model=ID&max_length=N
      `tailor data check --json` on an uploaded file: counts, format, every problem by line,
      field and fix, and with a served model's id also its token statistics.
  GET /v1/tailor/files/{id}/show?model=ID&index=I
      `tailor data show` on one example: the text as the model sees it, cut into segments that
      are trained on or context only.

The page itself speaks only the public API besides these two. Its files ship inside the package
(tailor/web), so nothing is fetched at run time. They hold no secret, so they load without the
key; the page then asks for it.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from tailor.serve.errors import APIError, model_not_found
from tailor.service.keys import project

# path -> (file in tailor/web, content type); these paths are open without the API key
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
OPEN_PATHS = frozenset(ASSETS)

router = APIRouter(prefix="/v1/tailor")


def install(app: FastAPI) -> None:
    """Serve the page and add the /v1/tailor routes (the latter need the fine-tuning service)."""
    for path, (name, media_type) in ASSETS.items():
        app.add_api_route(path, _asset(name, media_type), methods=["GET"], include_in_schema=False)
    app.include_router(router)


def _asset(name: str, media_type: str):
    def serve() -> Response:  # read per request: small, and an edited file shows on reload
        body = resources.files("tailor").joinpath("web", name).read_bytes()
        return Response(body, media_type=media_type, headers={"cache-control": "no-cache"})
    return serve


def _file_path(request: Request, file_id: str):
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise APIError(404, "This server runs without the fine-tuning service, so it keeps no files.",
                       code="not_found")
    owner = project(request)  # another project's file is as unknown as one that never existed
    return service.file(file_id, owner), service.file_content(file_id, owner)  # 404 for an unknown id


def _tokenizer(request: Request, model: str):
    """A served model's tokenizer (requests name served ids only, never paths or hub ids), one
    this key's project may see."""
    served = request.app.state.registry.get(model, project(request))
    if served is None:
        raise model_not_found(model)
    return served.tokenizer


@router.get("/files/{file_id}/check")
def check_file(request: Request, file_id: str, model: str | None = None, max_length: int | None = None,
               truncate: bool = False) -> dict:
    from tailor.data import report
    from tailor.data.dataset import analyse

    if max_length is not None and max_length < 1:
        raise APIError(400, f"max_length must be a positive number of tokens, not {max_length}.", param="max_length")
    meta, path = _file_path(request, file_id)
    tokenizer = _tokenizer(request, model) if model else None
    analysis = analyse(path, tokenizer)
    report.add_length_warning(analysis.problems, analysis, max_length, truncate)
    out = report.summary(analysis, max_length, truncate, model)
    out["file"], out["file_id"] = meta["filename"], file_id  # not the server's blob path
    return out


@router.get("/files/{file_id}/show")
def show_example(request: Request, file_id: str, model: str, index: int = 0) -> dict:
    from tailor.data import formats
    from tailor.data.render import Renderer, RenderError

    meta, path = _file_path(request, file_id)
    tokenizer = _tokenizer(request, model)
    items = formats.read(path).items
    if not -len(items) <= index < len(items):
        raise APIError(400, f"index {index} is out of range: {meta['filename']} has {len(items)} valid "
                            "example(s).", param="index")
    item = items[index]
    try:
        return {"file_id": file_id, "model": model, "index": index, "examples": len(items),
                **segments(Renderer(tokenizer), item)}
    except RenderError as exc:
        raise APIError(400, f"line {item.line}: the chat template refused this conversation: {exc}",
                       param="index") from exc


def segments(renderer, item) -> dict:
    """The example as the model sees it: runs of text, each trained on or not, marked by whole
    tokens as `tailor data show` marks them. A preference pair: its chosen conversation, then
    its rejected one; raw text: all of it trained."""
    from tailor.data.formats import Preference, Text
    from tailor.data.report import marked

    if isinstance(item, Text):
        ids = renderer.tokenizer(item.text)["input_ids"] + [renderer.tokenizer.eos_token_id]
        text = renderer.tokenizer.decode(ids, skip_special_tokens=False)
        return {"line": item.line, "tokens": len(ids), "trained_tokens": len(ids), "method": "raw text",
                "lost_tool_calls": 0, "segments": [{"text": text, "trained": True}]}
    if isinstance(item, Preference):
        parts = [("--- chosen ---\n", item.conversation("chosen")),
                 ("\n\n--- rejected ---\n", item.conversation("rejected"))]
    else:
        parts = [("", item)]
    out = {"line": item.line, "tokens": 0, "trained_tokens": 0, "method": "", "lost_tool_calls": 0, "segments": []}
    for head, conv in parts:
        m = marked(renderer, conv)
        out["tokens"] += m.tokens
        out["trained_tokens"] += m.trained_tokens
        out["lost_tool_calls"] += m.lost_calls
        out["method"] = m.method
        out["segments"] += ([{"text": head, "trained": False}] if head else []) + [
            {"text": t, "trained": on} for t, on in m.runs]
    return out
