"""`tailor chat`: an interactive conversation. Works with piped stdin, one user turn a line.

Commands: /reset clears the history, /system TEXT sets the system prompt, /exit leaves.
"""

from __future__ import annotations

import sys

from tailor import config
from tailor.commands.talk import TalkConfig, load_for_talk, sampling

HELP = "Commands: /reset (forget the conversation), /system TEXT (set the system prompt), /exit."


def add_arguments(parser) -> None:
    config.add_arguments(parser, TalkConfig)


def run(args) -> int:
    from tailor.infer.chat import stream_reply

    cfg = config.build(TalkConfig, {k: v for k, v in vars(args).items() if k != "command"})
    interactive = sys.stdin.isatty()
    loaded, warning = load_for_talk(cfg)
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
        if interactive:
            sys.stdout.write("assistant> ")
        reply = []
        try:
            for piece in stream_reply(loaded, messages, sampling(cfg)):
                reply.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:  # stop this reply, keep the session
            sys.stdout.write(" [interrupted]")
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(reply)})
