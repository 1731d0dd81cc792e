"""`tailor index DOCS... --out INDEX` (build or update a document index) and
`tailor index INDEX --query "..."` (show the chunks a question retrieves)."""

from __future__ import annotations

import json

from tailor.errors import UsageError


def add_arguments(parser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="Documents (.txt .md .jsonl .pdf) and folders to index; with --query, the index.")
    parser.add_argument("--out", default=None,
                        help="The index folder to create or update. It ends up holding exactly the given "
                             "documents: changed files are re-embedded, missing ones removed.")
    parser.add_argument("--chunk-tokens", type=int, default=None,
                        help="Longest chunk in embedding-model tokens, heading included (default 200, or the "
                             "index's own; the default model reads 254 at most). Smaller: sharper hits, less context.")
    parser.add_argument("--overlap", type=int, default=None,
                        help="Tokens shared by neighbouring chunks (default 40, or the index's own), so a fact "
                             "cut at a boundary is whole in one of them.")
    parser.add_argument("--embed-model", default=None,
                        help="sentence-transformers model: 'default' (all-MiniLM-L6-v2, bundled), a local "
                             "folder or a cached hub id. Changing it re-embeds everything.")
    parser.add_argument("--query", default=None, help="Search the index PATH instead of building one.")
    parser.add_argument("--k", type=int, default=4, help="How many chunks --query shows (default 4).")
    parser.add_argument("--json", action="store_true", help="With --query: print JSON instead of text.")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="No progress bar.")


def run(args) -> int:
    if args.query is not None:
        return query(args)
    if args.out is None:
        raise UsageError("say where the index goes: tailor index DOCS... --out INDEX "
                         "(or search one: tailor index INDEX --query \"...\").")
    from tailor.rag.index import build_index

    report = build_index(args.paths, args.out, embed_model=args.embed_model, chunk_tokens=args.chunk_tokens,
                         overlap=args.overlap, progress=args.progress)
    for label, names in (("added", report.added), ("updated", report.updated), ("removed", report.removed)):
        for name in names:
            print(f"  {label:8s}{name}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"{args.out}: {report.summary()}")
    return 0


def query(args) -> int:
    from tailor.rag.context import sources
    from tailor.rag.index import Index

    if len(args.paths) != 1 or args.out is not None:
        raise UsageError("--query searches one index: tailor index INDEX --query \"...\" [--k 4].")
    if args.k < 1:
        raise UsageError(f"--k must be at least 1, not {args.k}.")
    with Index.open(args.paths[0]) as index:
        hits = index.search(args.query, args.k)
    if args.json:
        print(json.dumps(sources(hits), ensure_ascii=False, indent=2))
        return 0
    for rank, hit in enumerate(hits, 1):
        where = f"{hit.source} > {hit.heading}" if hit.heading else hit.source
        body = hit.text[len(hit.heading):].strip() if hit.heading and hit.text.startswith(hit.heading) else hit.text
        excerpt = " ".join(body.split())
        print(f"{rank}. {hit.score:.3f}  {where}  [{hit.chunk_id}]")
        print(f"   {excerpt[:240]}{'...' if len(excerpt) > 240 else ''}")
    if not hits:
        print("(the index is empty)")
    return 0
