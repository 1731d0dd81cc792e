"""Measure rendering speed: `python bench/data_speed.py FILE.jsonl [--model REF] [--peer N]`.

Times tailor's batched prefix-diff rendering (prepare, no cache) on the whole file, then a cached
second run, and, in the same process, the usual per-example method on the first N examples:
apply_chat_template(tokenize=True) on every growing prefix, which is what a hand-written masking
loop does. Prints examples/s for both and the peak memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time


def peer_rate(tokenizer, convs) -> float:
    start = time.perf_counter()
    for conv in convs:
        messages = conv.template_messages()
        full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
        labels = [-100] * len(full)
        for i, m in enumerate(conv.messages):
            if m.role == "assistant" and m.train and i:
                a = len(tokenizer.apply_chat_template(messages[:i], tokenize=True, return_dict=False,
                                                      add_generation_prompt=True))
                b = len(tokenizer.apply_chat_template(messages[:i + 1], tokenize=True, return_dict=False))
                labels[a:b] = full[a:b]
    return len(convs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("--model", default=None)
    parser.add_argument("--peer", type=int, default=2000, help="examples for the per-example peer")
    args = parser.parse_args()
    from tailor import models
    from tailor.data import formats, prepare

    tokenizer = models.load_tokenizer(args.model)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    os.environ["TAILOR_HOME"] = tempfile.mkdtemp(prefix="tailor-bench-")  # a cold cache
    start = time.perf_counter()
    p = prepare(args.file, tokenizer)
    cold = time.perf_counter() - start
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    prepare(args.file, tokenizer)
    warm = time.perf_counter() - start
    n = len(p.examples)
    print(f"tailor: {n} examples, {int(p.lengths.sum())} tokens ({p.trained_tokens} trained) in {cold:.1f}s = "
          f"{n / cold:.0f} examples/s; cached second run {warm:.2f}s; peak RSS {rss0:.0f} -> {rss1:.0f} MiB "
          f"(store: {p.lengths.sum() * 5 / 2**20:.0f} MiB on disk, memory-mapped)")
    convs = formats.read(args.file).conversations[:args.peer]
    print(f"peer (apply_chat_template per prefix, per example): {peer_rate(tokenizer, convs):.0f} examples/s "
          f"on {len(convs)} examples")


if __name__ == "__main__":
    main()
