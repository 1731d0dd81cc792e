"""The Files and Fine-tuning jobs API, driven by the official `openai` client against a real
uvicorn server on a free 127.0.0.1 port, serving a tiny model; jobs train it for a few steps
in their own processes."""

import json
import subprocess
import textwrap
import time
from pathlib import Path

import openai
import pytest

from trainkit import write_chat_jsonl, write_preference_jsonl
from servekit import assert_serves_folder, served_greedy, serving
from tiny import save_tiny

KEY = "sk-test-key"
FAST = {"max_steps": 3, "dtype": "float32", "eval_samples": 0, "max_length": 128}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry
    from tailor.service import Service
    from tailor.service.policy import Policy

    root = tmp_path_factory.mktemp("service")
    mp = pytest.MonkeyPatch()
    mp.setenv("TAILOR_HOME", str(root / "home"))  # the jobs' dataset cache, inherited by their processes
    base = save_tiny(root / "base")
    reg = Registry.load([str(base)], ["tiny"], dtype="float32", max_batch=4, max_len=256)
    # the operator opens nproc to tenants (--allow-option nproc) for the torchrun job below
    service = Service(root / "state", max_upload_bytes=64 * 1024, policy=Policy(allow_option=["nproc"]))
    app = create_app(reg, api_key=KEY, service=service)
    with serving(app, join_timeout=60) as url:
        yield {"url": url, "registry": reg, "service": service, "root": root}
    mp.undo()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def train_file(client, tmp_path_factory):
    path = write_chat_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", 12)
    return client.files.create(file=("train.jsonl", path.read_bytes()), purpose="fine-tune")


def _wait(client, job_id, statuses=("succeeded", "failed", "cancelled"), timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job.status}")


# ---- files -----------------------------------------------------------------------------------


def test_upload_is_checked_processed_and_readable(client, train_file, tmp_path):
    f = client.files.wait_for_processing(train_file.id, poll_interval=0.1)
    assert f.status == "processed" and f.purpose == "fine-tune" and f.filename == "train.jsonl"
    assert f.id.startswith("file-") and f.bytes > 0
    assert client.files.retrieve(f.id).id == f.id
    assert client.files.content(f.id).content.splitlines()[0].startswith(b'{"messages"')
    assert len(client.files.content(f.id).content) == f.bytes


def test_a_bad_file_ends_error_naming_the_line_and_field(client):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]})
    bad = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]})
    f = client.files.create(file=("bad.jsonl", (good + "\n" + bad + "\n").encode()), purpose="fine-tune")
    f = client.files.wait_for_processing(f.id, poll_interval=0.1)
    assert f.status == "error"
    assert "line 2" in f.status_details and "messages[1]" in f.status_details


def test_file_listing_pages_by_after_limit_order_and_purpose(client):
    made = [client.files.create(file=(f"n{i}.txt", b"x"), purpose="user_data").id for i in range(3)]
    page = client.files.list(purpose="user_data", limit=2)
    assert [f.id for f in page.data] == made[::-1][:2] and page.has_more
    rest = client.files.list(purpose="user_data", limit=2, after=page.data[-1].id)
    assert [f.id for f in rest.data] == made[:1] and not rest.has_more
    assert [f.id for f in client.files.list(purpose="user_data", order="asc")] == made
    assert client.files.list(purpose="user_data", after=made[0]).data == []


def test_delete_then_404_and_path_like_ids_are_404(client):
    f = client.files.create(file=("gone.txt", b"bye"), purpose="user_data")
    assert client.files.delete(f.id).deleted
    for bad in (f.id, "../service.db", "file-..%2F..%2Fservice.db", "blobs", "%2Fetc%2Fpasswd"):
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(bad)
        with pytest.raises(openai.NotFoundError):
            client.files.content(bad)


def test_an_upload_over_the_limit_is_413(client):
    with pytest.raises(openai.APIStatusError) as err:
        client.files.create(file=("big.jsonl", b"x" * (64 * 1024 + 10)), purpose="fine-tune")
    assert err.value.status_code == 413


# ---- job validation --------------------------------------------------------------------------


@pytest.mark.parametrize("kw, param, code", [
    ({"model": "no/such-model-here"}, "model", "model_not_found"),
    ({"training_file": "file-nope"}, "training_file", "invalid_training_file"),
    ({"method": {"type": "dpo", "dpo": {}}}, "training_file", "invalid_training_file"),  # a supervised file
    ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}}}, "method.dpo.hyperparameters.beta", None),
    ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}}, "method.dpo.hyperparameters.beta", None),
    ({"method": {"type": "reinforcement"}}, "method.reinforcement.grader", "missing_required_parameter"),
    ({"method": {"type": "unsupervised"}}, "method.type", None),
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", None),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": "big"}}}},
     "method.supervised.hyperparameters.batch_size", None),
    ({"suffix": "x" * 65}, "suffix", None),
    ({"suffix": "a:b"}, "suffix", None),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", None),
    ({"extra_body": {"tailor": {"lora_r": 0}}}, "tailor", None),
    ({"extra_body": {"tailor": {"no_such_knob": 1}}}, "tailor.no_such_knob", "unknown_option"),
    ({"extra_body": {"tailor": {"data": "/etc/passwd"}}}, "tailor.data", None),
])
def test_invalid_job_requests_are_400_with_param(client, train_file, kw, param, code):
    args = {"model": "tiny", "training_file": train_file.id, **kw}
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(**args)
    assert err.value.body["param"] == param
    if code:
        assert err.value.body["code"] == code


def test_files_that_cannot_train_are_400(client, train_file):
    few = client.files.create(file=("few.jsonl", b"".join(
        json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}).encode() + b"\n" for i in range(3))), purpose="fine-tune")
    bad = client.files.create(file=("bad.jsonl", b"{not json\n"), purpose="fine-tune")
    other = client.files.create(file=("notes.txt", b"hello"), purpose="user_data")
    for fid, code, words in ((few.id, "invalid_n_examples", "3 example(s)"), (bad.id, "invalid_training_file", "line 1"),
                             (other.id, "invalid_training_file", "purpose")):
        with pytest.raises(openai.BadRequestError) as err:
            client.fine_tuning.jobs.create(model="tiny", training_file=fid)
        assert err.value.body["code"] == code and err.value.body["param"] == "training_file"
        assert words in err.value.body["message"]


# ---- a whole job -----------------------------------------------------------------------------

HELLO = [{"role": "user", "content": "hello"}]


def test_a_job_trains_reports_and_its_model_answers_at_once(client, train_file, server):
    # lr x50: three steps teach the tiny model the data's "Ahoy", so its answer is not its base's
    job = client.fine_tuning.jobs.create(model="tiny", training_file=train_file.id, suffix="pirate", seed=7,
                                         metadata={"run": "walkthrough"},
                                         method={"type": "supervised", "supervised": {"hyperparameters": {
                                             "n_epochs": "auto", "batch_size": 4, "learning_rate_multiplier": 50}}},
                                         extra_body={"tailor": {**FAST, "save_every": 2}})
    assert job.id.startswith("ftjob-") and job.status in ("queued", "running") and job.seed == 7
    assert job.hyperparameters.n_epochs == 8  # "auto" for 12 examples: min(25, 100 // 12)
    assert job.hyperparameters.batch_size == 4 and job.hyperparameters.learning_rate_multiplier == 50
    assert job.metadata == {"run": "walkthrough"}
    done = _wait(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:tiny:default:pirate:{job.id[6:14]}"
    assert done.finished_at >= done.created_at and done.trained_tokens > 0 and done.estimated_finish is not None

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    messages = [e.message for e in events]
    assert messages[0] == "The job has successfully completed" and messages[-1].startswith("Validating training file")
    steps = [e.data["step"] for e in events if e.type == "metrics" and "train_loss" in e.data]
    assert steps == [3, 2, 1]  # newest first, one per logged step
    first = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert len(first.data) == 2 and first.has_more
    second = client.fine_tuning.jobs.list_events(job.id, limit=2, after=first.data[-1].id)
    assert [e.id for e in second.data] == [e.id for e in events[2:4]]

    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert sorted(c.step_number for c in ckpts) == [2, 3]
    assert all(c.fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-{c.step_number}" for c in ckpts)

    csv = client.files.content(done.result_files[0]).text.splitlines()
    assert csv[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert [row.split(",")[0] for row in csv[1:]] == ["1", "2", "3"]

    cards = {m.id: m for m in client.models.list()}
    assert cards[done.fine_tuned_model].owned_by == "default"
    out = server["service"].store.root / "jobs" / job.id / "out"
    ckpt = min(ckpts, key=lambda c: c.step_number)
    base = served_greedy(client, "tiny", HELLO, 8)
    final = assert_serves_folder(client, done.fine_tuned_model, out / "final", HELLO)
    early = assert_serves_folder(client, ckpt.fine_tuned_model_checkpoint, out / f"checkpoint-{ckpt.step_number:06d}",
                                 HELLO)
    assert final[0] != base[0] and early[0] != base[0], "a fine-tune answers as its base does"
    assert early[1] != pytest.approx(final[1], abs=1e-3)  # the checkpoint is its own step's weights

    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"run": "walkthrough"})] == [job.id]
    again = client.fine_tuning.jobs.create(model=done.fine_tuned_model, training_file=train_file.id, suffix="more",
                                           extra_body={"tailor": {**FAST, "max_steps": 2}})  # a fine-tune of a fine-tune
    again = _wait(client, again.id)
    assert again.status == "succeeded", again.error
    assert again.fine_tuned_model.startswith("ft:tiny:default:more:")
    on_top = assert_serves_folder(client, again.fine_tuned_model,
                                  server["service"].store.root / "jobs" / again.id / "out" / "final", HELLO)
    assert on_top[1] != pytest.approx(final[1], abs=1e-3)  # its own LoRA, on top of the first one's
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)  # finished: a 400, never a retried 409


def test_a_two_process_job_trains_through_torchrun_and_is_served(client, train_file, server):
    """tailor.nproc 2: the job's process re-launches itself as 2 ranks (batch 2 each, so the
    job's batch 4 is the global one); the model is served when it ends."""
    job = client.fine_tuning.jobs.create(model="tiny", training_file=train_file.id, suffix="two",
                                         method={"type": "supervised", "supervised": {"hyperparameters": {
                                             "batch_size": 2}}},
                                         extra_body={"tailor": {**FAST, "max_steps": 2, "nproc": 2}})
    done = _wait(client, job.id)
    assert done.status == "succeeded", done.error
    saved = (server["service"].store.root / "jobs" / job.id / "out" / "config.yaml").read_text()
    assert "nproc: 2" in saved and "x 2 processes" in saved
    r = client.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=2)
    assert r.usage.completion_tokens >= 1


def test_cancel_a_running_job_and_a_queued_one(client, train_file):
    long = {**FAST, "max_steps": 500}
    running = client.fine_tuning.jobs.create(model="tiny", training_file=train_file.id, extra_body={"tailor": long},
                                             hyperparameters={"batch_size": 2})  # the older top-level form
    queued = client.fine_tuning.jobs.create(model="tiny", training_file=train_file.id, extra_body={"tailor": long})
    _wait(client, running.id, ("running",))
    assert client.fine_tuning.jobs.retrieve(queued.id).status == "queued"  # one job at a time
    assert client.fine_tuning.jobs.cancel(queued.id).status == "cancelled"
    deadline = time.time() + 120
    while not [e for e in client.fine_tuning.jobs.list_events(running.id) if e.type == "metrics"]:
        assert time.time() < deadline
        time.sleep(0.2)
    client.fine_tuning.jobs.cancel(running.id)
    done = _wait(client, running.id)
    assert done.status == "cancelled" and done.fine_tuned_model is None
    assert client.fine_tuning.jobs.list_events(running.id).data[0].message == "Fine-tuning job cancelled"


def test_job_ids_that_do_not_exist_are_404(client):
    for bad in ("ftjob-nope", "../service.db", "ftjob-x%2F..%2F.."):
        with pytest.raises(openai.NotFoundError):
            client.fine_tuning.jobs.retrieve(bad)
        with pytest.raises(openai.NotFoundError):
            client.fine_tuning.jobs.list_events(bad)


def test_a_job_whose_training_fails_ends_failed_with_the_reason(client, train_file):
    job = client.fine_tuning.jobs.create(model="tiny", training_file=train_file.id,
                                         extra_body={"tailor": {**FAST, "max_length": 4}})  # drops every example
    done = _wait(client, job.id)
    assert done.status == "failed" and done.finished_at is not None
    assert done.error.code == "invalid_training_file"
    assert done.error.message.startswith(f"{train_file.id}: no example is left to train on")
    assert "lines 1, 2, 3" in done.error.message  # names the lines, never the job folder's path
    assert client.fine_tuning.jobs.list_events(job.id).data[0].level == "error"


# A job's `tailor train` process with a hold at one step: after logging it, the run waits there
# (up to 2 minutes) until it gets SIGTERM, so a pause or cancel lands mid-run on any machine. The
# hold happens once per gate folder: `held` appears in it when the run is held.
HOLD_DRIVER = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    gate, at = Path(sys.argv.pop(1)), int(sys.argv.pop(1))
    from tailor.train.session import Session
    real_log = Session.log_step

    def log_then_hold(self, record):
        real_log(self, record)
        if record["step"] != at or (gate / "held").exists():
            return
        got, handler = [], signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum) or handler(signum, frame))
        (gate / "held").touch()
        deadline = time.monotonic() + 120
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        signal.signal(signal.SIGTERM, handler)

    Session.log_step = log_then_hold
    from tailor.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture
def hold_at(monkeypatch, tmp_path):
    """hold_at(step) -> the gate folder: from then on, the job processes the worker starts run
    through HOLD_DRIVER (a subclass of Popen rewrites `python -m tailor.cli train ...`)."""
    driver = tmp_path / "hold.py"
    driver.write_text(HOLD_DRIVER)

    def arm(step: int) -> Path:
        gate = tmp_path / "gate"
        gate.mkdir()

        class HeldPopen(subprocess.Popen):
            def __init__(self, args, *a, **kw):
                if isinstance(args, list) and args[1:4] == ["-m", "tailor.cli", "train"]:
                    args = [args[0], str(driver), str(gate), str(step), *args[3:]]
                super().__init__(args, *a, **kw)

        monkeypatch.setattr(subprocess, "Popen", HeldPopen)
        return gate

    return arm


def _until(check, what: str, timeout: float = 120):
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _step_losses(client, job_id) -> dict[int, list[float]]:
    """Each training step's reported losses (a step reported twice would show two)."""
    losses: dict[int, list[float]] = {}
    for e in client.fine_tuning.jobs.list_events(job_id, limit=100).data:
        if e.type == "metrics" and "train_loss" in e.data:
            losses.setdefault(e.data["step"], []).append(e.data["train_loss"])
    return losses


def test_pause_then_resume_continues_exactly_reporting_each_step_once(client, train_file, hold_at):
    """Paused mid-run (held at step 3 until the pause's SIGTERM lands), resumed from the checkpoint
    it saves there: each step is reported once, with the very losses of an uninterrupted job."""
    args = dict(model="tiny", training_file=train_file.id, seed=11, hyperparameters={"batch_size": 2},
                extra_body={"tailor": {**FAST, "max_steps": 12, "save_every": 2}})
    whole = _wait(client, client.fine_tuning.jobs.create(**args).id)
    assert whole.status == "succeeded", whole.error
    gate = hold_at(3)
    job = client.fine_tuning.jobs.create(**args)
    _until(lambda: (gate / "held").exists(), "the job to reach step 3")
    client.fine_tuning.jobs.pause(job.id)
    paused = _wait(client, job.id, ("paused", "succeeded", "failed", "cancelled"))
    assert paused.status == "paused", paused.error
    assert sorted(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data) == [2, 3]
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.pause(job.id)
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    done = _wait(client, job.id)
    assert done.status == "succeeded", done.error
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert {"Fine-tuning job paused", "Fine-tuning job resumed"} <= {e.message for e in events}
    resumed, reference = _step_losses(client, job.id), _step_losses(client, whole.id)
    assert sorted(resumed) == list(range(1, 13)) and all(len(v) == 1 for v in resumed.values())
    assert [resumed[s][0] for s in range(1, 13)] == pytest.approx([reference[s][0] for s in range(1, 13)],
                                                                  abs=1e-6, rel=0)
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.resume(job.id)


def test_a_queued_job_whose_file_was_deleted_fails_and_the_queue_moves_on(client, server, train_file, tmp_path):
    data = write_chat_jsonl(tmp_path / "t.jsonl", 12, seed=5).read_bytes()
    f = client.files.create(file=("t.jsonl", data), purpose="fine-tune")
    service = server["service"]
    service.worker.max_jobs = 0  # hold the queue while the file goes away
    try:
        doomed = client.fine_tuning.jobs.create(model="tiny", training_file=f.id, extra_body={"tailor": FAST})
        after = client.fine_tuning.jobs.create(model="tiny", training_file=train_file.id,
                                               extra_body={"tailor": FAST})
        client.files.delete(f.id)
    finally:
        service.worker.max_jobs = 1
    failed = _wait(client, doomed.id)
    assert failed.status == "failed" and failed.error.code == "invalid_training_file"
    assert f.id in failed.error.message
    assert _wait(client, after.id).status == "succeeded"


def test_job_listing_pages_newest_first_with_has_more(client, server, train_file):
    server["service"].worker.max_jobs = 0  # hold the queue: these jobs only need to exist
    try:
        made = [client.fine_tuning.jobs.create(model="tiny", training_file=train_file.id, metadata={"page": "yes"},
                                               extra_body={"tailor": FAST}).id for _ in range(3)]
        page = client.fine_tuning.jobs.list(limit=2, metadata={"page": "yes"})
        assert [j.id for j in page.data] == made[::-1][:2] and page.has_more
        rest = client.fine_tuning.jobs.list(limit=2, after=page.data[-1].id, metadata={"page": "yes"})
        assert [j.id for j in rest.data] == made[:1] and not rest.has_more
        every = client.fine_tuning.jobs.list(limit=2, metadata={"page": "yes"})  # iterating follows the pages
        assert [j.id for j in every] == made[::-1]
        for jid in made:
            assert client.fine_tuning.jobs.cancel(jid).status == "cancelled"
    finally:
        server["service"].worker.max_jobs = 1


# ---- preference tuning (method dpo) ------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs_file(client, tmp_path_factory):
    path = write_preference_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", 16, seed=4)
    return client.files.create(file=("pairs.jsonl", path.read_bytes()), purpose="fine-tune")


def test_a_file_of_the_wrong_kind_for_the_method_is_400_with_line_and_field(client, train_file, pairs_file):
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="tiny", training_file=train_file.id, method={"type": "dpo"})
    body = err.value.body
    assert body["param"] == "training_file" and body["code"] == "invalid_training_file"
    assert "line 1" in body["message"] and "'preferred_output'" in body["message"] and "'supervised'" in body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="tiny", training_file=pairs_file.id)  # supervised by default
    assert err.value.body["param"] == "training_file" and "use method 'dpo'" in err.value.body["message"]
    bad = b"".join(json.dumps({"input": {"messages": [{"role": "user", "content": f"q{i}"}]},
                               "preferred_output": [{"role": "assistant", "content": "a"}],
                               "non_preferred_output": [] if i == 3 else [{"role": "assistant", "content": "b"}]}
                              ).encode() + b"\n" for i in range(12))
    f = client.files.wait_for_processing(client.files.create(file=("bad.jsonl", bad), purpose="fine-tune").id,
                                         poll_interval=0.1)
    assert f.status == "error" and "line 4, non_preferred_output" in f.status_details
    with pytest.raises(openai.BadRequestError) as err:
        client.fine_tuning.jobs.create(model="tiny", training_file=f.id, method={"type": "dpo"})
    assert "line 4" in err.value.body["message"]


def test_dpo_on_an_sft_model_the_two_stage_flow(client, train_file, pairs_file, server):
    """SFT first, then DPO on the ft: model it made, with unchanged SDK calls; the DPO job reports
    the values it used (beta auto = 0.1), its events and result file carry the DPO metrics, and
    both models answer."""
    sft = _wait(client, client.fine_tuning.jobs.create(model="tiny", training_file=train_file.id, suffix="stage1",
                                                       extra_body={"tailor": {**FAST, "max_steps": 2}}).id)
    assert sft.status == "succeeded", sft.error
    job = client.fine_tuning.jobs.create(
        model=sft.fine_tuned_model, training_file=pairs_file.id, suffix="stage2",
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": "auto", "batch_size": 4, "n_epochs": 1}}},
        extra_body={"tailor": {**FAST, "max_steps": 3}})
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.1
    assert job.method.dpo.hyperparameters.batch_size == 4 and job.hyperparameters.n_epochs == 1
    done = _wait(client, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model.startswith("ft:") and ":stage2:" in done.fine_tuned_model
    saved = (server["service"].store.root / "jobs" / job.id / "out" / "config.yaml").read_text()
    assert "objective: dpo" in saved and "beta: 0.1" in saved
    steps = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"
             and "train_loss" in e.data]
    assert len(steps) == 3 and all("train_rewards_margin" in e.data and "train_rewards_accuracy" in e.data
                                   for e in steps)
    assert "reward margin=" in steps[-1].message
    first = min(steps, key=lambda e: e.data["step"])
    assert abs(first.data["train_loss"] - 0.6931) < 1e-3  # step 0: the policy is its reference, the SFT model
    csv = client.files.content(done.result_files[0]).text.splitlines()
    assert "train_rewards_margin" in csv[0] and "valid_rewards_accuracy" in csv[0] and len(csv) == 4
    for model in (sft.fine_tuned_model, done.fine_tuned_model):
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert r.usage.completion_tokens >= 1
