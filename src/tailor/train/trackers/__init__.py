"""Experiment trackers: each run's metrics.jsonl and eval.jsonl records, its resolved config and
its final model's path, sent on to TensorBoard, Trackio, Weights & Biases or MLflow.

`--report-to` names them (repeatable, comma-separated, `none` or `all`: the Hugging Face
Trainer's convention). Each tracker is a small module with `start(ctx) -> Tracker`; `Trackers`
fans the records out and is what the session calls. A tracker that raises mid-run is dropped
with one warning; training goes on. Their resume state (run ids) lives in OUT/trackers.json, so
`tailor train --resume OUT` continues the same tracker runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

# name -> (its module here, the package it needs, the extra that installs it)
KNOWN = {
    "tensorboard": ("tensorboard", "tensorboard", "tensorboard"),
    "trackio": ("trackio", "trackio", "trackio"),
    "wandb": ("wandb", "wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow", "mlflow"),
}
STATE_FILE = "trackers.json"


class Tracker(Protocol):
    def log(self, values: dict[str, float], step: int) -> None:
        """Scalars at an optimizer step (keys like `train/loss`, `eval/val_loss`)."""

    def finish(self, final: str | None) -> None:
        """The run ended: `final` is the final model's folder, None when it was interrupted."""


@dataclass
class Context:
    """What a tracker starts from."""

    out: Path  # the run's output folder
    config: dict  # the resolved TrainConfig, as config.yaml holds it
    run_name: str
    project: str
    tags: list[str]
    entity: str | None
    resumed_step: int | None  # the checkpoint's step on --resume, None for a new run
    state: dict = field(default_factory=dict)  # this tracker's part of trackers.json (run ids), kept on resume


def names(report_to: list[str] | None) -> list[str]:
    """The trackers `report_to` asks for, in order, without repeats; `none` is none, `all` every
    installed one. Unknown names raise ValueError naming the valid ones."""
    out: list[str] = []
    for item in report_to or []:
        for name in str(item).split(","):
            name = name.strip().lower()
            if name in ("", "none"):
                continue
            if name == "all":
                out += [n for n in KNOWN if installed(n)]
            elif name in KNOWN:
                out.append(name)
            else:
                raise ValueError(f"{name!r} is not a tracker; use none, all, {', '.join(KNOWN)}")
    return list(dict.fromkeys(out))


def installed(name: str) -> bool:
    return importlib.util.find_spec(KNOWN[name][1]) is not None


def problems(report_to: list[str] | None) -> list[str]:
    """What stops the asked-for trackers from starting (a missing package, a missing setting),
    each with its fix; checked before any weights load."""
    try:
        wanted = names(report_to)
    except ValueError as exc:
        return [f"report_to: {exc}"]
    out = []
    for name in wanted:
        module, package, extra = KNOWN[name]
        if not installed(name):
            out.append(f"report_to: {name} needs the `{package}` package: pip install 'tailor[{extra}]'")
            continue
        check = getattr(_module(name), "setting_problem", None)
        why = check() if check else None
        if why:
            out.append(f"report_to: {name}: {why}")
    return out


def _module(name: str):
    return importlib.import_module(f"tailor.train.trackers.{KNOWN[name][0]}")


class Trackers:
    """The run's trackers as one: a failing tracker is dropped with one warning, never an error."""

    def __init__(self, started: dict[str, Tracker] | None = None, warn=None):
        self.live = dict(started or {})
        self._warn = warn or (lambda text: print(text, file=sys.stderr, flush=True))
        self.finished = False

    def __bool__(self) -> bool:
        return bool(self.live)

    def log(self, kind: str, record: dict) -> None:
        """One metrics.jsonl (`kind` train) or eval.jsonl (`kind` eval) record: every number in
        it, whatever the objective logs, under `kind/`; its `step` is the x axis."""
        values = scalars(kind, record)
        if values:
            self._each("log", values, int(record["step"]))

    def finish(self, final: str | None) -> None:
        if not self.finished:
            self.finished = True
            self._each("finish", final)

    def _each(self, method: str, *args) -> None:
        for name, tracker in list(self.live.items()):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # a tracker is a convenience: the run goes on without it
                del self.live[name]
                self._warn(f"warning: the {name} tracker failed ({type(exc).__name__}: {exc}); "
                           "training goes on without it (metrics.jsonl has every step)")


class Reported:
    """A metrics.jsonl / eval.jsonl log whose every record also goes to the trackers."""

    def __init__(self, log, trackers: Trackers, kind: str):
        self.log, self.trackers, self.kind = log, trackers, kind

    def write(self, record: dict) -> None:
        self.log.write(record)
        self.trackers.log(self.kind, record)

    def read(self) -> list[dict]:
        return self.log.read()


def scalars(kind: str, record: dict) -> dict[str, float]:
    """`kind/key` -> value for every number in `record` but its step (a nested dict of numbers
    flattens to `kind/key/sub`); text and lists (the eval samples) are left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key != "step":
            _flatten(out, f"{kind}/{key}", value)
    return out


def _flatten(out: dict, name: str, value) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(out, f"{name}/{key}", sub)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[name] = float(value)


def start(cfg, out: Path, resumed_step: int | None, *, warn=None) -> Trackers:
    """Start every tracker `cfg.report_to` names (rank 0 only: the caller decides). A tracker
    that cannot start raises TailorError: the run has not begun, so saying why beats a run that
    reports nowhere."""
    from tailor.errors import UsageError

    wanted = names(cfg.report_to)
    if not wanted:
        return Trackers(warn=warn)
    found = problems(wanted)
    if found:
        raise UsageError("Cannot report to the trackers asked for:\n  " + "\n  ".join(found))
    saved = _read_state(out) if resumed_step is not None else {}
    started: dict[str, Tracker] = {}
    config = _config_dict(cfg)
    for name in wanted:
        ctx = Context(out=out, config=config, run_name=cfg.run_name or _default_name(out),
                      project=cfg.tracker_project or _env_project(name) or "tailor",
                      tags=list(cfg.tracker_tags or []), entity=cfg.tracker_entity,
                      resumed_step=resumed_step, state=dict(saved.get(name, {})))
        try:
            started[name] = _module(name).start(ctx)
        except Exception as exc:
            for t in started.values():
                _quietly(t.finish, None)
            raise UsageError(f"report_to: {name} could not start: {type(exc).__name__}: {exc}") from exc
        saved[name] = ctx.state
    _write_state(out, saved)
    return Trackers(started, warn=warn)


def _config_dict(cfg) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)


def _default_name(out: Path) -> str:
    path = out.resolve()
    return path.name if path.name not in ("out", "latest") or not path.parent.name else f"{path.parent.name}-{path.name}"


def _env_project(name: str) -> str | None:
    """The Hugging Face Trainer's environment variables for the project, per tracker."""
    return {"wandb": os.environ.get("WANDB_PROJECT"), "mlflow": os.environ.get("MLFLOW_EXPERIMENT_NAME"),
            "trackio": os.environ.get("TRACKIO_PROJECT")}.get(name)


def _read_state(out: Path) -> dict:
    try:
        return json.loads((out / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_state(out: Path, state: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".trackers.", dir=out)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, out / STATE_FILE)


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:
        pass
