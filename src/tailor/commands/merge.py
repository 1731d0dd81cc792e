"""`tailor merge ADAPTER_DIR --out DIR`: fold a LoRA adapter into its base, write a full model."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("adapter", metavar="ADAPTER_DIR", help="A LoRA adapter folder (e.g. runs/x/final).")
    parser.add_argument("--out", required=True, help="Where to write the merged Hugging Face model folder.")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="dtype of the merged weights (default: float32).")


def run(args) -> int:
    from tailor.train.lora import merge

    out = merge(args.adapter, args.out, dtype=args.dtype)
    print(out)
    return 0
