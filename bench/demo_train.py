"""End-to-end wall time of `make demo`'s training, as a user runs it: `tailor train
examples/pirate-lora.yaml` (the same run as examples/demo.py's training step), from the command's
start to its exit, output to a temporary folder. One JSON line."""

import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    tailor = str(Path(sys.executable).parent / "tailor")
    out = tempfile.mkdtemp(prefix="tailor-demo-")
    t = time.perf_counter()
    r = subprocess.run([tailor, "train", str(ROOT / "examples" / "pirate-lora.yaml"), "--out", out],
                       cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"demo training failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    steps = max((row["step"] for row in rows if "step" in row), default=0)
    val = re.findall(r"val_loss ([0-9.]+)", r.stderr)
    print(json.dumps({"seconds": seconds, "steps": steps, "final_val_loss": float(val[-1]) if val else None,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
