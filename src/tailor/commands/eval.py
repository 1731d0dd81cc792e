"""`tailor eval MODEL QA.jsonl [--index INDEX]`: score a model on questions with reference
answers (exact match, contains, reference loss, optionally an LLM judge), without and with
retrieval; print a table, write the results as JSON and a bar chart."""

from __future__ import annotations

import sys
from pathlib import Path

from tailor import config
from tailor.evaluate.qa import EvalConfig


def add_arguments(parser) -> None:
    parser.add_argument("model", help="Model: a folder, hub id, LoRA adapter folder (runs/x/final) or 'default'.")
    parser.add_argument("qa", help='JSONL file of {"question": ..., "answer": ...} lines.')
    config.add_arguments(parser, EvalConfig, skip=("model", "qa"))
    parser.add_argument("--out", default=None,
                        help="Write the results (per-question rows and means) to this JSON file, and the "
                             "chart beside it (results.json -> results.png).")
    parser.add_argument("--plot", default=None, help="Draw the chart (grouped bars) to this PNG file.")
    parser.add_argument("--compare", nargs="+", default=[], metavar="JSON",
                        help="Earlier results files whose rows join the table and chart (e.g. the base model's).")


def run(args) -> int:
    from tailor.evaluate.qa import evaluate
    from tailor.evaluate.report import read_results, table, write_json

    skip = ("command", "out", "plot", "compare")
    cfg = config.build(EvalConfig, {k: v for k, v in vars(args).items() if k not in skip})
    earlier = [c for path in args.compare for c in read_results(path)["conditions"]]
    results = evaluate(cfg, progress=_progress)
    conditions = earlier + results["conditions"]
    print(table(conditions))
    if args.out:
        print(f"results: {write_json(args.out, results)}")
    chart = args.plot or (str(Path(args.out).with_suffix(".png")) if args.out else None)
    if chart:
        from tailor.evaluate.plot import plot_eval

        print(f"chart: {plot_eval(conditions, chart)}")
    return 0


def _progress(text: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(text)
        sys.stderr.flush()
