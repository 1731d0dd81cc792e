"""`tailor chat`: an interactive conversation. Works with piped stdin, one user turn a line.

Commands: /reset clears the history, /system TEXT sets the system prompt, /exit leaves.
With --index, each turn retrieves the top chunks for the user's message into the prompt (that turn
only: the history keeps the plain messages) and names them after the answer.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

from tailor import config
from tailor.commands.talk import TalkConfig, load_for_talk, read_schema, sampling

HELP = "Commands: /reset (forget the conversation), /system TEXT (set the system prompt), /exit."


@dataclass
class ChatConfig(TalkConfig):
    index: str | None = None
    """A document index (`tailor index`): each turn's prompt gets the top chunks for your message."""
    k: int = 4
    """Chunks retrieved per turn with --index, 0 to 32."""
    rag_style: Literal["system", "user"] = "system"
    """Where the chunks go: a system message (system) or before your message (user)."""


def add_arguments(parser) -> None:
    config.add_arguments(parser, ChatConfig)


def run(args) -> int:
    cfg = config.build(ChatConfig, {k: v for k, v in vars(args).items() if k != "command"})
    interactive = sys.stdin.isatty()
    retriever = _retriever(cfg)  # before the model: a missing index (or schema) fails fast
    schema = read_schema(cfg)
    loaded, warning = load_for_talk(cfg)
    params = sampling(cfg, loaded, schema)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    system = cfg.system
    history: list[dict] = []
    if interactive:
        print(f"Chatting with {cfg.model}. {HELP} Ctrl-D also exits.")
    while True:
        try:
            line = input("you> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            if interactive:
                print()
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            history = []
            print("(conversation cleared)")
            continue
        if line.startswith("/system"):
            system = line[len("/system"):].strip() or None
            print(f"(system prompt {'set' if system else 'cleared'})")
            continue
        if line.startswith("/"):
            print(f"(unknown command {line.split()[0]}) {HELP}")
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        history.append({"role": "assistant", "content": _answer(loaded, cfg, params, messages, retriever,
                                                                interactive)})


def _answer(loaded, cfg: ChatConfig, params, messages: list[dict], retriever, interactive: bool) -> str:
    """Stream one reply to stdout and return its text. Retrieved chunks go into this turn's
    prompt only; the caller's history keeps the plain messages."""
    from tailor.errors import TailorError
    from tailor.infer.chat import stream_reply

    hits = None
    if retriever is not None:
        messages, hits = retriever.augment(messages)
    if interactive:
        sys.stdout.write("assistant> ")
    reply = []
    try:
        for piece in stream_reply(loaded, messages, params):
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:  # stop this reply, keep the session
        sys.stdout.write(" [interrupted]")
    except TailorError as exc:
        if hits:  # the retrieved chunks took part of the context: say which knob frees it
            raise TailorError(f"{exc} The {len(hits)} retrieved chunks are part of it: a smaller --k "
                              f"(now {cfg.k}) leaves more room.") from exc
        raise
    sys.stdout.write("\n")
    if hits is not None:
        _show_sources(hits)
    sys.stdout.flush()
    return "".join(reply)


def _retriever(cfg: ChatConfig):
    if cfg.index is None:
        return None
    from tailor.rag.retrieve import Retriever, check_k

    check_k(cfg.k, "--k")
    return Retriever.open(cfg.index, k=cfg.k, style=cfg.rag_style)


def _show_sources(hits) -> None:
    from tailor.data.report import DIM, RESET
    from tailor.rag.retrieve import format_sources

    line = f"sources: {format_sources(hits)}"
    sys.stdout.write(f"{DIM}{line}{RESET}\n" if sys.stdout.isatty() else line + "\n")
