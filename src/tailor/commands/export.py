"""`tailor export RUN_OR_FOLDER --gguf OUT.gguf [--quant q8_0] [--ollama DIR]`: one GGUF file for
llama.cpp / LM Studio, and optionally an Ollama Modelfile beside it."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("source", metavar="RUN_OR_FOLDER",
                        help="A run folder (its final/ is exported), a model folder, a LoRA adapter "
                             "(merged into its base first), a .gguf file, a hub id, or 'default'.")
    parser.add_argument("--gguf", required=True, metavar="OUT.gguf", help="The GGUF file to write.")
    parser.add_argument("--quant", default="f16", choices=["f16", "bf16", "q8_0", "f32"],
                        help="Weight type: f16 (default, as llama.cpp's own converter writes), bf16, "
                             "q8_0 (about half of f16's size, a small loss), f32 (exact, twice f16's size).")
    parser.add_argument("--ollama", metavar="DIR",
                        help="Also write DIR/Modelfile (FROM the GGUF, the chat template as Ollama's "
                             "Go template, stop tokens); then `ollama create NAME -f DIR/Modelfile`.")


def run(args) -> int:
    from pathlib import Path

    from tailor.export.gguf import export_gguf

    out = export_gguf(args.source, Path(args.gguf), quant=args.quant)
    print(out)
    if args.ollama:
        from tailor.export.ollama import write_modelfile

        print(write_modelfile(out, Path(args.ollama)))
    return 0
