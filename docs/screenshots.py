"""Refresh the dashboard screenshots in docs/ (docs/dashboard-*.png) with one command:

    .venv/bin/python docs/screenshots.py            # the default model, examples/pirate.jsonl (~3 min on CPU)
    .venv/bin/python docs/screenshots.py --max-steps 20   # quicker, a shorter job

It serves the model with an API key and the fine-tuning service (state in a temporary folder),
then drives Debian's headless Chromium (tests/browserkit.py) through what a newcomer does: enter
the key, upload a broken file and the pirate data, look at one example, fine-tune, watch the
job, and ask the base and the fine-tune the same question.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browserkit import by, chromium, missing, screenshot, until  # noqa: E402
from servekit import serving  # noqa: E402

KEY = "sk-local"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="Model to serve and fine-tune (default: the embedded default).")
    ap.add_argument("--data", default=str(ROOT / "examples" / "pirate.jsonl"), help="The training file to upload.")
    ap.add_argument("--max-steps", type=int, default=None, help="Cut the job short (default: the full auto run).")
    ap.add_argument("--out", default=str(ROOT / "docs"), help="Where the PNG files go.")
    args = ap.parse_args()
    if missing():
        sys.exit(f"cannot take screenshots: {missing()}")
    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry
    from tailor.service import Service

    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="tailor-shots-") as tmp:
        reg = Registry.load([args.model])
        app = create_app(reg, api_key=KEY, service=Service(Path(tmp) / "state"))
        with serving(app, join_timeout=60) as url, chromium() as page:
            tour(page, url, reg, args, out, Path(tmp))
    print(f"wrote {', '.join(sorted(p.name for p in out.glob('dashboard-*.png')))} to {out}")
    return 0


def tour(page, url: str, reg, args, out: Path, tmp: Path) -> None:
    from selenium.webdriver.support.ui import Select

    model = next(iter(reg.models))
    page.get(url + "/")
    until(page, lambda: by(page, "#gate").is_displayed(), what="the key gate")
    screenshot(page, out / "dashboard-key.png")
    by(page, "#gate-key").send_keys(KEY)
    by(page, "#gate-form button").click()
    until(page, lambda: by(page, "#tab-data").is_displayed(), what="the Data tab")

    lines = Path(args.data).read_text().splitlines()
    broken = tmp / "pirate-draft.jsonl"
    drafts = [lines[0], json.dumps({"messages": [{"role": "user", "content": "Ahoy?"}, {"role": "assistant"}]}),
              lines[1].replace('"assistant"', '"pirate"'), "{not json", *lines[2:6]]
    broken.write_text("\n".join(drafts) + "\n")
    upload(page, broken)
    screenshot(page, out / "dashboard-data-errors.png")

    Select(by(page, "#data-model")).select_by_value(model)
    upload(page, Path(args.data))
    by(page, "#show-btn").click()
    until(page, lambda: page.find_elements("css selector", "#example mark"), what="the example")
    screenshot(page, out / "dashboard-data.png")
    fid = by(page, "#data-file").get_attribute("value")

    page.get(url + "/#jobs")
    until(page, lambda: Select(by(page, "#job-train")).options, what="the training file picker")
    Select(by(page, "#job-model")).select_by_value(model)
    Select(by(page, "#job-train")).select_by_value(fid)
    by(page, "#job-suffix").send_keys("pirate")
    if args.max_steps:
        by(page, "#job-tailor").send_keys(json.dumps({"max_steps": args.max_steps}))
    by(page, "#job-create").click()
    until(page, lambda: by(page, "#tab-job").is_displayed(), what="the job page")
    until(page, lambda: int(by(page, "#curve").get_attribute("data-train-points") or 0) >= 8, timeout=600,
          what="a few steps")
    screenshot(page, out / "dashboard-job-running.png")
    until(page, lambda: by(page, "#job-status").text in ("succeeded", "failed", "cancelled"), timeout=1800,
          what="the end of the job")
    time.sleep(1.5)  # the last poll: checkpoints and the result file
    screenshot(page, out / "dashboard-job.png")
    page.get(url + "/#jobs")
    until(page, lambda: by(page, "#jobs tbody tr"), what="the job list")
    screenshot(page, out / "dashboard-jobs.png")

    page.get(url + "/#play")
    until(page, lambda: "ft:" in by(page, "#play-b").get_attribute("value"), what="the fine-tune in the picker")
    Select(by(page, "#play-a")).select_by_value(model)
    for field, value in (("#play-temp", "0"), ("#play-max", "60")):
        by(page, field).clear()
        by(page, field).send_keys(value)
    by(page, "#play-send").click()
    for side in ("a", "b"):
        until(page, lambda: by(page, f"#out-{side}").get_attribute("data-state") in ("done", "error"), timeout=120,
              what=f"answer {side}")
    by(page, "#tab-play details summary").click()  # show the request as SDK code too
    screenshot(page, out / "dashboard-playground.png")
    screenshot(page, out / "dashboard-phone.png", width=390)


def upload(page, path: Path) -> None:
    page.get(page.current_url.split("#")[0] + "#data")
    by(page, "#pick").send_keys(str(path))
    until(page, lambda: path.name in by(page, "#report-title").text, timeout=120, what=f"the report on {path.name}")


if __name__ == "__main__":
    sys.exit(main())
