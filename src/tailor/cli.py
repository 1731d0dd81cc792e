"""The `tailor` command: a map from command name to the module that runs it.

Each command module has `add_arguments(parser)` and `run(args) -> int`, and imports torch and
friends only inside `run`, so `tailor --help` is instant. User mistakes arrive as TailorError
and are printed as one message, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import os
import sys

from tailor import __version__
from tailor.errors import TailorError

COMMANDS = {
    "generate": ("tailor.commands.generate", "Answer one prompt with a model (streamed)."),
    "chat": ("tailor.commands.chat", "Chat with a model interactively (or one turn per stdin line)."),
    "data": ("tailor.commands.data", "Check a dataset, or show an example with its training mask."),
    "train": ("tailor.commands.train", "Fine-tune a model (LoRA or full)."),
    "merge": ("tailor.commands.merge", "Fold a LoRA adapter into its base model."),
    "export": ("tailor.commands.export", "Export a model to GGUF (llama.cpp), optionally with an Ollama Modelfile."),
    "push": ("tailor.commands.push", "Upload a fine-tuned adapter or model to the Hugging Face Hub."),
    "serve": ("tailor.commands.serve", "Serve models behind an OpenAI-compatible HTTP API."),
    "index": ("tailor.commands.index", "Build or update a document index for retrieval, or search one (--query)."),
    "eval": ("tailor.commands.eval", "Score a model on questions with reference answers, with and without retrieval."),
    "doctor": ("tailor.commands.doctor", "Check this machine for tailor: devices, dtypes, speed, versions, caches, extras."),
}


def _available():
    for name, (module, help_) in COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            yield name, module, help_


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="tailor", description="Fine-tune a base LLM and serve it.")
    parser.add_argument("--version", action="version", version=f"tailor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, module_name, help_ in _available():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_, description=help_)
        module.add_arguments(p)
        modules[name] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if argv is None:  # the program, which exits next: the interpreter's last full collections walk
        gc.freeze()  # every object torch and transformers made (~1.5 s on 2 cores); nothing needs them
    return code


# Commands whose OpenMP threads spin between parallel regions instead of sleeping (see below).
SPINNING = ("generate", "chat")


def omp_wait_policy(argv: list[str]) -> str:
    """OMP_WAIT_POLICY for this command, set before torch loads (it is read then; the command's
    own modules import torch, so this looks at argv before parsing it).

    PASSIVE (threads sleep while waiting) everywhere but one-sequence decoding in the terminal:
    with other work on a 2-core machine, spinning made training 7x slower (37 vs 400 tokens/s),
    and `tailor serve` 1.4-2x slower (its spinning threads starve the HTTP threads: 17-26 against
    36 tokens/s at one client). `tailor generate` and `chat` decode in the main thread alone, ~150
    small parallel regions a token, each waking sleeping threads: spinning decoded 42-57 tokens/s
    against 29-38 asleep, alternating on a busy 2-core AMD EPYC."""
    command = next((a for a in argv if not a.startswith("-")), None)
    return "ACTIVE" if command in SPINNING else "PASSIVE"


def _main(argv: list[str] | None) -> int:
    # Quiet the libraries' own chatter; tailor says what matters itself.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_WAIT_POLICY", omp_wait_policy(sys.argv[1:] if argv is None else argv))
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return modules[args.command].run(args) or 0
    except TailorError as exc:
        print(f"tailor {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
