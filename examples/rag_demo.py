"""`make rag-demo`: retrieval (RAG), fine-tuning, or both? Measured on questions the base model
cannot know: eight made-up documents about Brindlewick Aerospace (examples/rag/docs).

1. tailor index: the documents into an embedded vector index.
2. tailor eval of the base model (SmolLM2-135M-Instruct) on 28 held-out questions
   (examples/rag/qa.jsonl), without and with retrieval.
3. tailor data rag: RAFT training data from 82 other questions (examples/rag/questions.jsonl): each
   question with its oracle chunk among distractors (left out in 1 - P of the examples), the target
   quoting the document, then "Answer: ...".
4. tailor train: a LoRA fine-tune on that data (examples/rag/raft-lora.yaml).
5. tailor eval of the fine-tune, without and with retrieval: the four-way table and eval.png.

Each step is the command line's own code (tailor.cli.main), printed before it runs.
Output: runs/rag-demo (or $TAILOR_RAG_DEMO_OUT).
"""

import os

# Threads that wait by sleeping, not spinning (a busy 2-core machine); must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).parent / "rag"
P = 0.8  # share of RAFT examples that show the oracle chunk (RAFT's default)
SHOW = 3  # questions whose four answers are printed


def step(title: str, argv: list[str], timings: dict) -> None:
    from tailor.cli import main

    print(f"\n== {title}\n$ tailor {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    code = main(argv)
    timings[title] = time.perf_counter() - t0
    if code:
        sys.exit(f"step failed ({title}), exit status {code}")


def show_answers(files: list[Path]) -> None:
    conditions = [c for f in files for c in json.loads(f.read_text())["conditions"]]
    for i in range(SHOW):
        row = conditions[0]["rows"][i]
        print(f"\n>>> {row['question']}   (reference: {row['reference']})")
        for c in conditions:
            print(f"  [{c['name']}] {' '.join(c['rows'][i]['output'].split())[:160]}")


def main() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notes, not ours
    out = Path(os.environ.get("TAILOR_RAG_DEMO_OUT", "runs/rag-demo"))
    if out.exists():
        shutil.rmtree(out)
    # A folder's documents are named by the folder's name plus their path inside it, so sources
    # read "docs/lark-drone.md" in the prompts, the RAFT quotes and the results.
    qa, index = str(HERE / "qa.jsonl"), str(out / "index")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    step("index the documents", ["index", str(HERE / "docs"), "--out", index], timings)
    step("base model, without and with retrieval",
         ["eval", "default", qa, "--index", index, "--name", "base", "--out", str(out / "base.json")], timings)
    step("RAFT training data", ["data", "rag", index, str(HERE / "questions.jsonl"), "--out",
                                str(out / "train.jsonl"), "--p", str(P)], timings)
    step("LoRA fine-tune", ["train", str(HERE / "raft-lora.yaml"), "--data", str(out / "train.jsonl"),
                            "--out", str(out / "run")], timings)
    step("fine-tune, without and with retrieval: the four-way table",
         ["eval", str(out / "run" / "final"), qa, "--index", index, "--name", "fine-tune",
          "--out", str(out / "fine-tune.json"), "--compare", str(out / "base.json"), "--plot",
          str(out / "eval.png")], timings)
    show_answers([out / "base.json", out / "fine-tune.json"])
    total = time.perf_counter() - started
    print("\n" + "  ".join(f"{k}: {v:.0f}s" for k, v in timings.items()) + f"  | total {total / 60:.1f} min")
    print(f"Results: {out / 'base.json'}, {out / 'fine-tune.json'}, chart {out / 'eval.png'}")
    print(f"Chat with retrieval:  .venv/bin/tailor chat --model {out / 'run' / 'final'} --index {index}")


if __name__ == "__main__":
    main()
