"""A job's `integrations` (OpenAI's W&B shape, and tensorboard / trackio / mlflow like it): checked
into 400s that name the field, echoed by the job, and reported to by the job's training run
with the operator's settings only."""

import time

import openai
import pytest

from servekit import serving
from tiny import save_tiny
from trainkit import write_chat_jsonl

KEY = "sk-integrations"
FAST = {"max_steps": 3, "dtype": "float32", "eval_samples": 0, "max_length": 128}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry
    from tailor.service import Service

    root = tmp_path_factory.mktemp("integrations")
    mp = pytest.MonkeyPatch()
    mp.setenv("TAILOR_HOME", str(root / "home"))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # each job's own OUT/mlflow.db
    mp.delenv("WANDB_ENTITY", raising=False)
    reg = Registry.load([str(save_tiny(root / "base"))], ["tiny"], dtype="float32", max_batch=2, max_len=256)
    service = Service(root / "state", max_upload_bytes=64 * 1024)
    with serving(create_app(reg, api_key=KEY, service=service), join_timeout=60) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        path = write_chat_jsonl(root / "train.jsonl", 12)
        f = client.files.create(file=("train.jsonl", path.read_bytes()), purpose="fine-tune")
        client.files.wait_for_processing(f.id, poll_interval=0.1)
        yield {"client": client, "file": f.id, "root": root, "monkeypatch": mp}
    mp.undo()


def _create(server, integrations, **extra):
    return server["client"].fine_tuning.jobs.create(model="tiny", training_file=server["file"],
                                                    integrations=integrations,
                                                    extra_body={"tailor": {**FAST, **extra}})


def test_a_job_reports_to_tensorboard_and_mlflow_and_echoes_its_integrations(server):
    pytest.importorskip("tensorboard"), pytest.importorskip("mlflow")
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    asked = [{"type": "tensorboard", "tensorboard": None},
             {"type": "mlflow", "mlflow": {"project": "tenant-exp", "tags": ["blue"]}}]
    job = _create(server, asked)
    echoed = [i.to_dict() for i in job.integrations]  # the fields the server sent
    assert echoed == [{"type": "tensorboard", "tensorboard": {"project": None, "name": None, "entity": None,
                                                              "tags": None}},
                      {"type": "mlflow", "mlflow": {"project": "tenant-exp", "name": None, "entity": None,
                                                    "tags": ["blue"]}}]
    deadline = time.time() + 240
    while (job := server["client"].fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed"):
        assert time.time() < deadline
        time.sleep(0.3)
    assert job.status == "succeeded", job.error
    assert [i.type for i in job.integrations] == ["tensorboard", "mlflow"]
    out = server["root"] / "state" / "jobs" / job.id / "out"
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tenant-exp").experiment_id])
    assert run.info.run_name == job.id and run.info.status == "FINISHED"
    assert {"blue", "tailor/finetune", f"tailor/{job.id}"} <= set(run.data.tags)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3]


@pytest.mark.parametrize("integrations, param", [
    ([{"type": "comet"}], "integrations[0].type"),
    ([{"type": "wandb", "wandb": {"name": "x"}}], "integrations[0].wandb.project"),
    ([{"type": "wandb", "wandb": {"project": "p", "api_key": "k"}}], "integrations[0].wandb.api_key"),
    ([{"type": "mlflow", "mlflow": {"project": "../../etc"}}], "integrations[0].mlflow.project"),
    ([{"type": "trackio", "trackio": {"tags": ["ok", "no spaces"]}}], "integrations[0].trackio.tags"),
    ([{"type": "tensorboard"}, {"type": "tensorboard"}], "integrations[1].type"),
    ({"type": "wandb"}, "integrations"),
])
def test_bad_integrations_are_400s_naming_the_field(server, integrations, param):
    with pytest.raises(openai.BadRequestError) as e:
        _create(server, integrations)
    assert e.value.body["param"] == param, e.value.body


def test_trackers_are_set_through_integrations_only(server):
    with pytest.raises(openai.BadRequestError) as e:
        _create(server, None, report_to=["mlflow"])
    assert e.value.body["param"] == "tailor.report_to" and "integrations" in e.value.body["message"]


def test_a_tracker_this_server_lacks_is_a_400_before_the_job_queues(server):
    from tailor.train import trackers

    mp = server["monkeypatch"]
    mp.setattr(trackers, "installed", lambda name: name != "trackio")
    try:
        with pytest.raises(openai.BadRequestError) as e:
            _create(server, [{"type": "trackio", "trackio": {"project": "p"}}])
    finally:
        mp.undo()
    assert e.value.body["param"] == "integrations[0].type" and e.value.body["code"] == "integration_unavailable"
    assert "pip install 'tailor[trackio]'" in e.value.body["message"]
    listed = server["client"].fine_tuning.jobs.list().data
    assert all(j.integrations == [] or j.integrations[0].type != "trackio" for j in listed)
