"""`tailor generate PROMPT`: one reply, streamed to the terminal."""

from __future__ import annotations

import sys

from tailor import config
from tailor.commands.talk import TalkConfig, load_for_talk, read_schema, sampling


def add_arguments(parser) -> None:
    parser.add_argument("prompt", help="The user message to answer.")
    config.add_arguments(parser, TalkConfig)


def run(args) -> int:
    from tailor.infer.chat import stream_reply

    cfg = config.build(TalkConfig, {k: v for k, v in vars(args).items() if k not in ("command", "prompt")})
    schema = read_schema(cfg)
    loaded, warning = load_for_talk(cfg)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    messages = ([{"role": "system", "content": cfg.system}] if cfg.system else [])
    messages.append({"role": "user", "content": args.prompt})
    for piece in stream_reply(loaded, messages, sampling(cfg, loaded, schema)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
