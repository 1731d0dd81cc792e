"""`tailor data check FILE` (validate, summarise) and `tailor data show FILE` (one example with
its training mask)."""

from __future__ import annotations

import sys
from pathlib import Path

from tailor.errors import UsageError


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    check = sub.add_parser("check", help="Validate a JSONL dataset and summarise it (exit 1 on errors).",
                           description="Validate a JSONL dataset: every problem with its line and field, then a "
                                       "summary. With --model also token counts. Exit 0: no errors; 1: errors; "
                                       "2: usage mistake.")
    check.add_argument("file", help="The JSONL file: supervised (OpenAI chat, prompt/completion, Alpaca, ShareGPT), "
                                    "preference pairs (OpenAI DPO, prompt/chosen/rejected), raw text ({\"text\": ...}) "
                                    "or RFT prompts (messages ending with a user turn).")
    check.add_argument("--objective", choices=("sft", "dpo", "grpo", "rft"), default=None,
                       help="What the file is for: grpo (alias rft) reads every line as an RFT prompt (default: "
                            "from the file; a first line whose messages end with a user turn means grpo).")
    check.add_argument("--grader", default=None, metavar="GRADER.json",
                       help="With grpo: the grader (a JSON file or the JSON itself); every {{item.*}} it reads must "
                            "exist in every line.")
    check.add_argument("--model", default=None,
                       help="Model whose tokenizer and chat template count the tokens (a folder, .gguf, hub id, "
                            "'default').")
    _common(check)
    check.add_argument("--json", action="store_true", help="Print one JSON object instead of text.")
    show = sub.add_parser("show", help="Print one example as the model sees it, trained tokens highlighted.",
                          description="Print one example rendered with the model's chat template; the tokens "
                                      "trained on are green (or in [[ ]] when not a terminal). A preference pair shows "
                                      "both completions; raw text is trained on every token.")
    show.add_argument("file", help="The JSONL file.")
    show.add_argument("--model", default="default", help="Model whose tokenizer and chat template render it.")
    which = show.add_mutually_exclusive_group()
    which.add_argument("--index", type=int, default=0, help="Which example, 0-based (default: 0).")
    which.add_argument("--line", type=int, default=None, help="Or: the example on this line of the file.")
    show.add_argument("--chat-template", default=None,
                      help="For a model without a chat template: chatml (default), llama3, alpaca, or a .jinja file.")
    show.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                      help="Colour the trained tokens (auto: when writing to a terminal).")
    _rag_arguments(sub)


def _common(parser) -> None:
    parser.add_argument("--max-length", type=int, default=None,
                        help="Longest example in tokens; longer ones are reported (and dropped when training).")
    parser.add_argument("--truncate", action="store_true",
                        help="Report over-long examples as cut from the end instead of dropped.")
    parser.add_argument("--chat-template", default=None,
                        help="For a model without a chat template: chatml (default), llama3, alpaca, or a .jinja file.")
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help="Re-render even if a cached rendering of this file exists.")


def run(args) -> int:
    if getattr(args, "action", None) == "check":
        return check(args)
    if getattr(args, "action", None) == "show":
        return show(args)
    if getattr(args, "action", None) == "rag":
        return rag(args)
    raise UsageError("say what to do: tailor data check FILE | tailor data show FILE | "
                     "tailor data rag INDEX QUESTIONS --out FILE (see tailor data --help)")


def _file(path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{path}: no such file" + (" (it is a folder)" if p.is_dir() else "") + ".")
    return p


def _tokenizer(ref):
    from transformers.utils import logging as hf_logging

    from tailor import models

    hf_logging.disable_progress_bar()
    return models.load_tokenizer(ref)


def check(args) -> int:
    from tailor.data import report
    from tailor.data.dataset import analyse

    path = _file(args.file)
    if args.max_length is not None and args.max_length < 1:
        raise UsageError(f"--max-length must be a positive number of tokens, not {args.max_length}.")
    tokenizer = _tokenizer(args.model) if args.model else None
    if _prompts(args, path):
        return check_prompts(args, path, tokenizer)
    if args.grader:
        raise UsageError("--grader checks RFT prompts: give --objective grpo (the file holds "
                         "supervised or preference data).")
    analysis = analyse(path, tokenizer, chat_template=args.chat_template, use_cache=args.cache)
    report.add_length_warning(analysis.problems, analysis, args.max_length, args.truncate)
    summary = report.summary(analysis, args.max_length, args.truncate, args.model)
    print(report.to_json(summary) if args.json else report.format_summary(summary))
    return 1 if summary["errors"] else 0


def _prompts(args, path: Path) -> bool:
    from tailor.data.formats import peek_kind

    if args.objective is not None:
        return args.objective in ("grpo", "rft")
    return peek_kind(path) == "prompt"


def check_prompts(args, path: Path, tokenizer) -> int:
    """RFT prompts: every line read as one, the grader's {{item.*}} checked in each."""
    from tailor.data import formats, prompts, report
    from tailor.data.dataset import Analysis
    from tailor.errors import TailorError

    parsed = formats.read(path, fmt="rft")
    if args.grader:
        from tailor.train.rewards import checked_grader
        import json

        try:
            grader = json.loads(checked_grader(args.grader))
        except TailorError as exc:
            raise UsageError(f"--grader {args.grader}: {exc}") from None
        prompts.check_grader(grader, parsed.prompts, parsed.problems)
    template_warning = None
    if tokenizer is not None:
        from tailor.data.templates import ensure_chat_template

        template_warning = ensure_chat_template(tokenizer, args.chat_template)
    summary = report.summary(Analysis(parsed, parsed.problems, None, template_warning), args.max_length,
                             model=args.model)
    if tokenizer is not None and parsed.prompts:
        summary["tokens"] = report.prompt_tokens(parsed.prompts, tokenizer, args.max_length)
    if args.grader:
        summary["grader_item_keys"] = prompts.item_variables(grader)
    print(report.to_json(summary) if args.json else report.format_summary(summary))
    return 1 if summary["errors"] else 0


def show(args) -> int:
    from tailor.data import formats, report
    from tailor.data.render import Renderer, RenderError
    from tailor.data.templates import ensure_chat_template
    from tailor.errors import TailorError

    path = _file(args.file)
    parsed = formats.read(path, fmt="rft" if formats.peek_kind(path) == "prompt" else None)
    items = parsed.items
    if args.line is not None:
        picked = [c for c in items if c.line == args.line]
        if not picked:
            raise UsageError(f"line {args.line} holds no valid example (the file has {parsed.lines} lines; "
                             f"run `tailor data check {args.file}` for its problems).")
        conv = picked[0]
    else:
        if not -len(items) <= args.index < len(items):
            raise UsageError(f"--index {args.index} is out of range: the file has {len(items)} valid example(s).")
        conv = items[args.index]
    tokenizer = _tokenizer(args.model)
    warning = None if parsed.kind == "text" else ensure_chat_template(tokenizer, args.chat_template)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    if parsed.problems.error_count:
        print(f"note: {args.file} has {parsed.problems.error_count} error(s); run `tailor data check` to list them",
              file=sys.stderr)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    try:
        print(report.show(Renderer(tokenizer), conv, color))
    except RenderError as exc:
        raise TailorError(f"line {conv.line}: the chat template refused this conversation: {exc}") from exc
    return 0


def _rag_arguments(sub) -> None:
    rag_ = sub.add_parser("rag", help="Build RAFT-style training data: questions with retrieved context.",
                          description="Build OpenAI chat JSONL that teaches a model to answer from retrieved "
                                      "documents (RAFT): each question gets its oracle chunk among distractor chunks, "
                                      "in the prompt format chat and serve use with --index.")
    rag_.add_argument("index", metavar="INDEX", help="An index built by `tailor index DOCS --out INDEX`.")
    rag_.add_argument("questions", metavar="QUESTIONS",
                      help='JSONL, one {"question": ..., "answer": ..., "source": optional document} per line.')
    rag_.add_argument("--out", required=True, help="The training JSONL to write.")
    rag_.add_argument("--p", type=float, default=0.8,
                      help="Share of examples that hold the oracle chunk (default 0.8; RAFT finds below 1 "
                           "better: the rest teach the model the facts themselves).")
    rag_.add_argument("--distractors", type=int, default=3,
                      help="Other chunks per example, half hard (near misses), half random (default 3).")
    rag_.add_argument("--seed", type=int, default=0, help="Random seed (same seed, same file).")
    rag_.add_argument("--style", choices=("system", "user"), default="system",
                      help="Where the documents go: a system message (default) or before the question; "
                           "use the same style when serving.")


def rag(args) -> int:
    from tailor.rag.index import Index
    from tailor.rag.raft import build_rag_data, read_questions

    questions = read_questions(Path(args.questions))
    with Index.open(args.index) as index:
        report = build_rag_data(index, questions, Path(args.out), p=args.p, distractors=args.distractors,
                                seed=args.seed, style=args.style)
    print(f"{args.out}: {report.summary(args.p)}")
    return 0
