"""Reinforcement fine-tuning through the Files and Fine-tuning jobs API (method reinforcement,
OpenAI's RFT), driven by the official `openai` client against a real server: the grader checked
at create (400s naming the field), the prompts checked against its {{item.*}}, the "auto"
hyperparameters, tenant bounds on tailor's own knobs, and whole jobs with a string_check and a
python grader whose events carry train_reward_mean and valid_reward_mean."""

import time

import openai
import pytest

from servekit import serving
from tiny import save_tiny
from trainkit import write_chat_jsonl, write_prompt_jsonl

KEY = "sk-test-key"
FAST = {"max_steps": 3, "dtype": "float32", "max_length": 96, "max_completion_tokens": 8, "num_generations": 3,
        "eval_samples": 1}
CHECK = {"type": "string_check", "name": "answer", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
         "operation": "ilike"}
PYTHON = {"type": "python", "name": "short",
          "source": "def grade(sample, item):\n    return 1.0 - min(len(sample['output_text']), 30) / 30\n"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry
    from tailor.service import Service
    from tailor.service.policy import Policy

    root = tmp_path_factory.mktemp("service")
    mp = pytest.MonkeyPatch()
    mp.setenv("TAILOR_HOME", str(root / "home"))
    base = save_tiny(root / "base")
    reg = Registry.load([str(base)], ["tiny"], dtype="float32", max_batch=4, max_len=256)
    service = Service(root / "state", max_upload_bytes=64 * 1024, policy=Policy(max_num_generations=12))
    app = create_app(reg, api_key=KEY, service=service)
    with serving(app, join_timeout=60) as url:
        yield {"url": url, "service": service, "root": root}
    mp.undo()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def files(client, tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    up = {}
    for name, n, seed in (("train", 16, 1), ("val", 4, 2)):
        path = write_prompt_jsonl(folder / f"{name}.jsonl", n, seed=seed)
        up[name] = client.files.wait_for_processing(
            client.files.create(file=(f"{name}.jsonl", path.read_bytes()), purpose="fine-tune").id, poll_interval=0.1)
    chat = write_chat_jsonl(folder / "chat.jsonl", 12)
    up["chat"] = client.files.create(file=("chat.jsonl", chat.read_bytes()), purpose="fine-tune")
    return up


def _method(grader=CHECK, **hyper):
    return {"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": hyper}}


def _wait(client, job_id, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job.status}")


def test_prompt_files_upload_as_processed(files):
    assert files["train"].status == "processed" and files["val"].status == "processed"


@pytest.mark.parametrize("change, param, code", [
    ({"validation_file": None}, "validation_file", "missing_required_parameter"),
    ({"method": _method({**CHECK, "operation": "near"})}, "method.reinforcement.grader.operation", None),
    ({"method": _method({"type": "label_model", "name": "x"})}, "method.reinforcement.grader.type", None),
    ({"method": _method({"type": "score_model", "name": "j", "model": "tiny", "input": [
        {"role": "user", "content": "{{sample.output_text}}"}]})}, "method.reinforcement.grader.type",
     "unsupported_grader"),
    ({"method": _method({**CHECK, "reference": "{{item.answr}}"})}, "training_file", "invalid_training_file"),
    ({"method": _method(reasoning_effort="extreme")}, "method.reinforcement.hyperparameters.reasoning_effort", None),
    ({"method": _method(compute_multiplier=20)}, "method.reinforcement.hyperparameters.compute_multiplier", None),
    ({"method": _method(compute_multiplier=2)}, "method.reinforcement.hyperparameters.compute_multiplier",
     "option_out_of_bounds"),  # 8 replies x 2 = 16, past the operator's 12
    ({"extra_body": {"tailor": {"num_generations": 13}}}, "tailor.num_generations", "option_out_of_bounds"),
    ({"extra_body": {"tailor": {"grader": "{}"}}}, "tailor.grader", None),
    ({"extra_body": {"tailor": {"reward": "os:getcwd"}}}, "tailor.reward", None),
    ({"extra_body": {"tailor": {"eval_every": 2}}}, "tailor.eval_every", None),
    ({"extra_body": {"tailor": {"judge_url": "http://x"}}}, "tailor.judge_url", "option_not_allowed"),
    ({"extra_body": {"tailor": {"grpo_loss": "ppo"}}}, "tailor", None),
    ({"training_file": "chat"}, "training_file", "invalid_training_file"),
])
def test_invalid_reinforcement_requests_are_400_naming_the_field(client, files, change, param, code):
    args = {"model": "tiny", "training_file": files["train"].id, "validation_file": files["val"].id,
            "method": _method(), **change}
    if args["training_file"] == "chat":
        args["training_file"] = files["chat"].id
    if args["validation_file"] is None:
        del args["validation_file"]
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(**args)
    assert err.value.body["param"] == param, err.value.body
    if code:
        assert err.value.body["code"] == code


def _reward_events(client, job_id):
    events = [e for e in client.fine_tuning.jobs.list_events(job_id, limit=100) if e.type == "metrics"]
    return ([e for e in events if "train_reward_mean" in e.data], [e for e in events if "valid_reward_mean" in e.data])


def test_a_string_check_job_runs_and_reports_rewards(client, files, server):
    """Unchanged SDK code: method reinforcement with a string_check grader, "auto" values
    resolved by the written rule, events and the result file carrying the reward metrics, and
    the fine-tune answering."""
    job = client.fine_tuning.jobs.create(
        model="tiny", training_file=files["train"].id, validation_file=files["val"].id, suffix="rft",
        method=_method(batch_size=2, eval_interval=2, compute_multiplier="auto", eval_samples="auto",
                       reasoning_effort="low"),
        extra_body={"tailor": {**FAST, "beta": 0.04}})
    hp = job.method.reinforcement.hyperparameters
    assert job.method.type == "reinforcement" and job.method.reinforcement.grader.type == "string_check"
    assert (hp.batch_size, hp.eval_interval, hp.eval_samples, hp.compute_multiplier, hp.reasoning_effort) == (
        2, 2, 1, 1.0, "low")
    assert hp.n_epochs == 6 and hp.learning_rate_multiplier == 1.0  # auto: min(25, 100 // 16); 1
    done = _wait(client, job.id)
    assert done.status == "succeeded", done.error
    saved = (server["service"].store.root / "jobs" / job.id / "out" / "config.yaml").read_text()
    assert "objective: grpo" in saved and "num_generations: 3" in saved and "beta: 0.04" in saved
    train, valid = _reward_events(client, job.id)
    assert sorted(e.data["step"] for e in train) == [1, 2, 3] and sorted(e.data["step"] for e in valid) == [2, 3]
    for e in train:
        assert 0.0 <= e.data["train_reward_mean"] <= 1.0 and "train mean reward=" in e.message
        assert e.data["scores"]["train_reward_mean"] == e.data["train_reward_mean"] and "train_kl" in e.data
    assert "full validation mean reward=" in valid[0].message
    csv = client.files.content(done.result_files[0]).text.splitlines()
    assert "train_reward_mean" in csv[0] and "valid_reward_mean" in csv[0] and len(csv) == 4
    r = client.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=2)
    assert r.usage.completion_tokens >= 1


def test_a_python_grader_inside_multi_reports_each_grader(client, files):
    """A multi grader of a python grader (run in the sandbox pool) and a string_check: each
    sub-grader's mean reward is in the events (OpenAI's scores.graders)."""
    multi = {"type": "multi", "name": "both", "graders": {"short": PYTHON, "answer": CHECK},
             "calculate_output": "0.8 * short + 0.2 * answer"}
    job = client.fine_tuning.jobs.create(model="tiny", training_file=files["train"].id,
                                         validation_file=files["val"].id, method=_method(multi, batch_size=2),
                                         extra_body={"tailor": {**FAST, "max_steps": 2}})
    done = _wait(client, job.id)
    assert done.status == "succeeded", done.error
    train, valid = _reward_events(client, job.id)
    assert len(train) == 2 and valid
    data = train[0].data
    names = {g["name"] for g in data["scores"]["graders"]}
    assert names == {"short", "answer"} and 0 < data["train_reward_short_mean"] <= 1
    assert data["train_reward_mean"] == pytest.approx(0.8 * data["train_reward_short_mean"]
                                                      + 0.2 * data["train_reward_answer_mean"], abs=1e-6)
    assert data["train_grader_errors"] == 0
