"""--report-to: each tracker's own reader gets back what metrics.jsonl and eval.jsonl hold, a
resumed run continues the same tracker runs, and a tracker that fails mid-run never stops one."""

import glob
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from trainkit import write_chat_jsonl

from tailor.train import TrainConfig, train, trackers

SRC = str(Path(__file__).resolve().parents[1] / "src")
FAST = ["--max-steps", "4", "--dtype", "float32", "--eval-samples", "0", "--max-length", "128",
        "--eval-every", "2", "--batch-size", "4"]
ALL = ["--report-to", "tensorboard", "--report-to", "trackio,wandb", "--report-to", "mlflow"]


def _tailor(args, env, cwd):
    run = subprocess.run([sys.executable, "-m", "tailor.cli", "train", *args, "--quiet"], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """One run reporting to all four trackers (offline), then a resume of it to step 6."""
    pytest.importorskip("tensorboard"), pytest.importorskip("trackio")
    pytest.importorskip("wandb"), pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("trackers")
    data = write_chat_jsonl(root / "train.jsonl", 16)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TRACKIO_DIR": str(root / "trackio"), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "TRACKIO_PROJECT": "tiny-proj"}
    env.pop("MLFLOW_TRACKING_URI", None)
    out = root / "run"
    _tailor(["--data", str(data), "--model", str(tiny_model_dir), "--out", str(out), *FAST, *ALL,
             "--tracker-tags", "a,b"], env, root)
    first = {"metrics": _jsonl(out / "metrics.jsonl"), "evals": _jsonl(out / "eval.jsonl"),
             "state": json.loads((out / "trackers.json").read_text())}
    _tailor(["--resume", str(out), "--max-steps", "6"], env, root)
    return {"out": out, "env": env, "first": first, "metrics": _jsonl(out / "metrics.jsonl"),
            "evals": _jsonl(out / "eval.jsonl"), "state": json.loads((out / "trackers.json").read_text())}


def _jsonl(path):
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def test_tensorboard_events_hold_every_step_once_across_a_resume(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(runs["out"] / "tensorboard"))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in runs["metrics"]] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in runs["metrics"]], rel=1e-6)
    assert [e.step for e in acc.Scalars("train/grad_norm")] == [1, 2, 3, 4, 5, 6]
    val = acc.Scalars("eval/val_loss")
    assert {e.step: e.value for e in val} == pytest.approx({r["step"]: r["val_loss"] for r in runs["evals"]})
    assert "config" in "".join(acc.Tags()["tensors"]) and "final_model" in "".join(acc.Tags()["tensors"])


def test_trackio_run_read_back_through_its_api(runs):
    code = ("import json, trackio; from trackio.sqlite_storage import SQLiteStorage\n"
            "runs = list(trackio.Api().runs('tiny-proj'))\n"
            "logs = SQLiteStorage.get_logs('tiny-proj', runs[0].name)\n"
            "print(json.dumps({'names': [r.name for r in runs], 'config': runs[0].config, 'logs': logs}, default=str))")
    got = json.loads(subprocess.run([sys.executable, "-c", code], env=runs["env"], capture_output=True, text=True,
                                    check=True, timeout=120).stdout.splitlines()[-1])
    assert got["names"] == ["run"], "the resume continued the one run"
    assert got["config"]["max_steps"] in (4, 6) and got["config"]["report_to"]
    losses = {r["step"]: r["train/loss"] for r in got["logs"] if "train/loss" in r}
    assert losses == pytest.approx({r["step"]: r["loss"] for r in runs["metrics"]})
    assert {r["step"]: r["eval/val_loss"] for r in got["logs"] if "eval/val_loss" in r} == pytest.approx(
        {r["step"]: r["val_loss"] for r in runs["evals"]})


def _wandb_records(path):
    """The records of a W&B offline run file (.wandb: a LevelDB-style log of protobuf Records in
    32 KiB blocks after a 7-byte header), read without a W&B server."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf = Path(path).read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):
            pos += left
            continue
        buf, pos = buf + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST fragment: a whole record
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)  # W&B stores a key with a "/" as its parts


def test_wandb_offline_run_dir_holds_the_history_and_one_run_id(runs):
    run_id = runs["state"]["wandb"]["id"]
    assert run_id == runs["first"]["state"]["wandb"]["id"], "the resume continued the same W&B run"
    files = sorted(glob.glob(str(runs["out"] / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb")))
    assert len(files) == 2, "one offline run directory per process, both with the run's id"
    history, summary, tags = [], {}, set()
    for f in files:
        for r in _wandb_records(f):
            kind = r.WhichOneof("record_type")
            if kind == "history":
                history.append({_key(i): json.loads(i.value_json) for i in r.history.item})
            elif kind == "summary":
                summary.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
            elif kind == "run":
                tags |= set(r.run.tags)
    train_rows = {h["train/global_step"]: h["train/loss"] for h in history if "train/loss" in h}
    assert train_rows == pytest.approx({r["step"]: r["loss"] for r in runs["metrics"]})
    assert any("eval/val_loss" in h for h in history)
    assert summary["final_model"] == str((runs["out"] / "final").resolve())
    assert tags >= {"a", "b"}


def test_mlflow_sqlite_store_read_back_with_its_client(runs):
    from mlflow import MlflowClient

    state = runs["state"]["mlflow"]
    assert state["run_id"] == runs["first"]["state"]["mlflow"]["run_id"]
    assert state["tracking_uri"].startswith("sqlite:///") and state["tracking_uri"].endswith("run/mlflow.db")
    client = MlflowClient(tracking_uri=state["tracking_uri"])
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["final_model"] == str((runs["out"] / "final").resolve())
    assert run.data.params["max_steps"] == "4" and run.data.params["method"] == "lora"
    assert set(run.data.tags) >= {"a", "b"}
    history = {m.step: m.value for m in client.get_metric_history(state["run_id"], "train/loss")}
    assert history == pytest.approx({r["step"]: r["loss"] for r in runs["metrics"]})
    assert client.get_experiment(run.info.experiment_id).name == "tailor"


# ---- failures and checks ---------------------------------------------------------------------


class _Flaky:
    """A tracker that works once, then raises on every call."""

    def __init__(self):
        self.calls = 0

    def log(self, values, step):
        self.calls += 1
        if self.calls > 1:
            raise ConnectionError("tracker server went away")

    def finish(self, final):
        raise AssertionError("a dropped tracker is never called again")


def test_a_tracker_failing_mid_run_warns_once_and_the_run_finishes(tiny_model_dir, tmp_path, monkeypatch, capsys):
    flaky = _Flaky()
    monkeypatch.setattr(trackers, "_module", lambda name: type("M", (), {"start": staticmethod(lambda ctx: flaky)}))
    monkeypatch.setattr(trackers, "installed", lambda name: True)
    data = write_chat_jsonl(tmp_path / "train.jsonl", 16)
    result = train(TrainConfig(data=str(data), model=str(tiny_model_dir), out=str(tmp_path / "out"), max_steps=4,
                               batch_size=4, dtype="float32", eval_samples=0, report_to=["tensorboard"]), quiet=True)
    assert result.final is not None and (result.final / "adapter_config.json").is_file()
    assert [r["step"] for r in _jsonl(tmp_path / "out" / "metrics.jsonl")] == [1, 2, 3, 4]
    err = capsys.readouterr().err
    assert err.count("the tensorboard tracker failed") == 1 and "tracker server went away" in err
    assert flaky.calls == 2


def test_scalars_take_whatever_numbers_an_objective_logs():
    record = {"step": 3, "loss": 0.5, "rewards/chosen": 1.0, "margins": {"mean": 0.25}, "samples": [{"a": 1}],
              "note": "text", "skipped": True, "tokens": 12}
    assert trackers.scalars("train", record) == {"train/loss": 0.5, "train/rewards/chosen": 1.0,
                                                 "train/margins/mean": 0.25, "train/tokens": 12.0}


def test_report_to_names_and_problems(monkeypatch):
    assert trackers.names(["none"]) == [] and trackers.names(["tensorboard,wandb", "tensorboard"]) == [
        "tensorboard", "wandb"]
    assert "not a tracker" in trackers.problems(["comet"])[0]
    monkeypatch.setattr(trackers, "installed", lambda name: False)
    assert trackers.problems(["mlflow"]) == ["report_to: mlflow needs the `mlflow` package: "
                                             "pip install 'tailor[mlflow]'"]
    monkeypatch.setattr(trackers, "installed", lambda name: True)
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    assert "WANDB_API_KEY" in trackers.problems(["wandb"])[0]
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert trackers.problems(["wandb"]) == []


def test_cli_refuses_an_unknown_tracker_before_loading_anything(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.run([sys.executable, "-m", "tailor.cli", "train", "--data", "x.jsonl", "--report-to", "comet"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "report_to: 'comet' is not a tracker" in run.stderr
    assert "Traceback" not in run.stderr
