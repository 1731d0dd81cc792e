"""`make demo`: the embedded SmolLM2-135M-Instruct answering, with and without a system prompt.

(The training issue turns this into a full fine-tune demo: base vs fine-tuned side by side.)
"""

import subprocess
import sys

PROMPTS = ["What is the capital of France?", "Give me one tip for writing clear code."]


def tailor(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tailor.cli", *args], check=True)


for prompt in PROMPTS:
    print(f"\n>>> {prompt}")
    tailor("generate", "--temperature", "0", "--max-new-tokens", "80", prompt)
