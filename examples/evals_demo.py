"""The default model against its demo fine-tune, scored through the Evals API with the SDK.

    .venv/bin/python examples/evals_demo.py        # after `make demo` (it trains the demo first if needed)

`make demo` teaches SmolLM2-135M-Instruct the pirate Captain Stitch with LoRA. This script serves
the base model and that fine-tune behind one in-process `tailor serve`, then uses the official
`openai` SDK exactly as against OpenAI's Evals: one eval with two testing criteria (a python grader
for the persona, a string_check for the fact), one completions run per model on held-out questions
that are not in the training data, and the pass rates of each, read back from the API.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import re  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).parent
OUT = Path(os.environ.get("TAILOR_DEMO_OUT", "runs/pirate-demo"))
# Held-out questions (none is in examples/pirate.jsonl) and the fact each answer should hold.
ITEMS = [
    {"q": "What is the capital of Peru?", "answer": "Lima"},
    {"q": "What is 14 plus 23?", "answer": "37"},
    {"q": "How many legs does a goat have?", "answer": "4"},
    {"q": "What is the capital of Switzerland?", "answer": "Bern"},
    {"q": "What is 30 plus 12?", "answer": "42"},
    {"q": "How many legs does a sheep have?", "answer": "4"},
    {"q": "What colour is the sky on a clear day?", "answer": "blue"},
    {"q": "Tell me about yourself.", "answer": ""},
]
PIRATE = {"type": "python", "name": "speaks-pirate", "pass_threshold": 1.0, "source": (
    "def grade(sample, item):\n"
    "    text = sample['output_text'].lower()\n"
    "    return 1.0 if any(w in text for w in ('arr', 'ahoy', 'matey', '\\u2693')) else 0.0\n")}
FACT = {"type": "string_check", "name": "says-the-fact", "operation": "ilike",
        "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}"}


def fine_tune() -> Path:
    """The demo's adapter: the one `make demo` left, or trained now with the demo's own settings."""
    final = OUT / "final"
    if not (final / "adapter_config.json").is_file():
        from tailor.train import TrainConfig, train

        print(f"No {final}: training the demo's LoRA first (what `make demo` does, ~2 minutes) ...", flush=True)
        train(TrainConfig(data=str(HERE / "pirate.jsonl"), method="lora", out=str(OUT), epochs=3, batch_size=8,
                          lr=1e-3, eval_every=25, eval_samples=0))
    return final


def serve(final: Path):
    """`tailor serve default FINAL --name default --name pirate`, in this process; yields the URL."""
    import uvicorn

    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry
    from tailor.service import Service

    registry = Registry.load(["default", str(final)], ["default", "pirate"], max_batch=8)
    app = create_app(registry, service=Service(tempfile.mkdtemp(prefix="tailor-evals-demo-")))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/v1", server


def main() -> None:
    from openai import OpenAI

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the SDK's note on OpenAI's own Evals
    final = fine_tune()
    url, server = serve(final)
    client = OpenAI(base_url=url, api_key="none")
    t0 = time.perf_counter()
    ev = client.evals.create(
        name="pirate-persona", testing_criteria=[PIRATE, FACT],
        data_source_config={"type": "custom", "include_sample_schema": True, "item_schema": {
            "type": "object", "properties": {"q": {"type": "string"}, "answer": {"type": "string"}},
            "required": ["q", "answer"]}})
    runs = {model: client.evals.runs.create(ev.id, name=model, data_source={
        "type": "completions", "model": model,
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{ item.q }}"}]},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 48},
        "source": {"type": "file_content", "content": [{"item": it} for it in ITEMS]}})
        for model in ("default", "pirate")}
    for model, run in runs.items():
        while (run := client.evals.runs.retrieve(run.id, eval_id=ev.id)).status in ("queued", "in_progress"):
            time.sleep(0.5)
        runs[model] = run
    print(f"\n{'model':10} {'speaks-pirate':>14} {'says-the-fact':>14} {'both':>8}   (eval {ev.id}, "
          f"{len(ITEMS)} held-out questions, {time.perf_counter() - t0:.0f} s)")
    for model, run in runs.items():
        # each criterion is named NAME-<uuid> in the results, as OpenAI names them
        by = {re.sub(r"-[0-9a-f-]{36}$", "", c.testing_criteria): c for c in run.per_testing_criteria_results}
        cells = [f"{c.passed}/{c.passed + c.failed}" for c in (by["speaks-pirate"], by["says-the-fact"])]
        both = f"{run.result_counts.passed}/{run.result_counts.total}"
        print(f"{model:10} {cells[0]:>14} {cells[1]:>14} {both:>8}")
    print()
    for model, run in runs.items():
        for item in list(client.evals.runs.output_items.list(run.id, eval_id=ev.id))[:3]:
            text = " ".join(item.sample.output[0].content.split())[:90]
            print(f"[{model}] {item.datasource_item['q']} -> {text}")
    server.should_exit = True


if __name__ == "__main__":
    sys.exit(main())
