"""Tenants of the fine-tuning service are untrusted: two projects on one server, driven through
the official SDK and raw HTTP, each finding of issue 20 a test that fails on the bug it names.
A job's options are an allowlist with bounds; model references are served ids, the project's
own fine-tunes or (when allowed) hub ids, never paths; a job's process sees no credential;
quotas and turns keep one project from taking the others' share; every status change is a
compare-and-set; uploads stream; and no text a tenant reads shows a server path."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from servekit import serving
from tiny import save_tiny
from trainkit import write_chat_jsonl

from tailor.errors import UsageError
from tailor.service import keys, procs
from tailor.service.policy import Policy

ALPHA, BETA = "sk-alpha-0123456789abcdef", "sk-beta-fedcba9876543210"
FAST = {"max_steps": 2, "dtype": "float32", "eval_samples": 0, "max_length": 128}
POLICY = dict(max_job_steps=40, max_project_jobs=3, max_project_files=12, max_project_storage_mb=1)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry
    from tailor.service import Service

    root = tmp_path_factory.mktemp("tenancy")
    mp = pytest.MonkeyPatch()
    mp.setenv("TAILOR_HOME", str(root / "home"))
    secret = root / "secret.txt"
    secret.write_text("SECRET-WORD-7f3a the operator's notes\n")
    base = save_tiny(root / "base")
    reg = Registry.load([str(base)], ["tiny"], dtype="float32", max_batch=4, max_len=256)
    ring = keys.Keyring({ALPHA: "alpha", BETA: "beta"}, hub_tokens={"beta": "hf_beta_own_token"})
    service = Service(root / "state", max_upload_bytes=4 * 1024 * 1024,
                      policy=Policy(**POLICY, push_tokens=ring.hub_tokens))
    app = create_app(reg, api_key=ring, service=service, max_uploads=1)
    with serving(app, join_timeout=60) as url:
        yield {"url": url, "root": root, "secret": secret, "base": base, "service": service, "registry": reg,
               "app": app}
    mp.undo()


def _client(server, key):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def alpha(server):
    return _client(server, ALPHA)


@pytest.fixture(scope="module")
def beta(server):
    return _client(server, BETA)


@pytest.fixture(scope="module")
def alpha_file(alpha, tmp_path_factory):
    data = write_chat_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", 12).read_bytes()
    return alpha.files.create(file=("train.jsonl", data), purpose="fine-tune")


def _refused(client, **kw):
    with pytest.raises(openai.APIStatusError) as err:
        client.fine_tuning.jobs.create(**kw)
    return err.value


def _wait(client, job_id, statuses=("succeeded", "failed", "cancelled"), timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job.status}")


def _no_server_paths(server, text: str) -> None:
    for path in (str(server["root"]), os.getcwd(), str(Path.home()), "/tmp/", "/etc/", "/proc/"):
        assert path not in text, f"a server path ({path}) in tenant-visible text: {text}"


# ---- options: an allowlist with bounds ---------------------------------------------------------


@pytest.mark.parametrize("template", [
    "SECRET",  # replaced by the secret file's absolute path in the test
    "../../../../../../../../etc/hostname",
    "/proc/self/cmdline",
    "~/.cache/huggingface/token",
])
def test_a_chat_template_that_names_a_server_file_is_refused(server, alpha, alpha_file, template):
    template = str(server["secret"]) if template == "SECRET" else template
    err = _refused(alpha, model="tiny", training_file=alpha_file.id, extra_body={"tailor": {**FAST,
                                                                                          "chat_template": template}})
    assert err.status_code == 400 and err.body["param"] == "tailor.chat_template"
    assert "SECRET-WORD" not in str(err.body) and template not in err.body["message"]


def test_a_named_or_inline_chat_template_is_a_tenant_option(server, alpha, alpha_file):
    inline = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}" \
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    for template in ("chatml", inline):
        job = alpha.fine_tuning.jobs.create(model="tiny", training_file=alpha_file.id,
                                            extra_body={"tailor": {**FAST, "chat_template": template}})
        alpha.fine_tuning.jobs.cancel(job.id)
    too_long = "{{ x }}" * 20000
    err = _refused(alpha, model="tiny", training_file=alpha_file.id, extra_body={"tailor": {"chat_template": too_long}})
    assert err.body["param"] == "tailor.chat_template" and err.body["code"] == "option_out_of_bounds"


@pytest.mark.parametrize("key, value", [
    ("keep_checkpoints", 100000), ("max_steps", 10 ** 12), ("lora_r", 10 ** 6), ("lora_r", "1000000"),
    ("grad_accum", 1000), ("max_length", 100000), ("rpo_alpha", 100.0),
])
def test_training_knobs_past_the_operators_bounds_are_refused(server, alpha, alpha_file, key, value):
    err = _refused(alpha, model="tiny", training_file=alpha_file.id, extra_body={"tailor": {key: value}})
    assert err.status_code == 400 and err.body["param"] == f"tailor.{key}"
    assert err.body["code"] == "option_out_of_bounds" and "at most" in err.body["message"]


@pytest.mark.parametrize("key, value", [
    ("nproc", 64), ("parallel", "fsdp"), ("device", "cuda"), ("compile", True), ("fused", False),
    ("push_to_hub", "operator/their-repo"), ("dpo_reference", "copy"),
])
def test_operator_only_options_are_refused_naming_the_key_and_why(server, alpha, alpha_file, key, value):
    err = _refused(alpha, model="tiny", training_file=alpha_file.id, extra_body={"tailor": {key: value}})
    assert err.status_code == 400 and err.body["param"] == f"tailor.{key}"
    assert err.body["code"] == "option_not_allowed" and ("operator" in err.body["message"])


def test_push_is_open_only_to_a_project_with_its_own_token_which_its_job_alone_gets(server, beta, tmp_path,
                                                                                    monkeypatch):
    data = write_chat_jsonl(tmp_path / "b.jsonl", 12).read_bytes()
    f = beta.files.create(file=("b.jsonl", data), purpose="fine-tune")
    job = beta.fine_tuning.jobs.create(model="tiny", training_file=f.id,
                                       extra_body={"tailor": {**FAST, "push_to_hub": "beta-org/model"}})
    beta.fine_tuning.jobs.cancel(job.id)
    worker = server["service"].worker
    monkeypatch.setenv("HF_TOKEN", "hf_OPERATOR_secret")
    assert worker.child_env("beta")["HF_TOKEN"] == "hf_beta_own_token"
    assert "HF_TOKEN" not in worker.child_env("alpha")


def test_a_jobs_process_gets_no_credential_from_the_servers_environment(server, monkeypatch):
    for name in ("HF_TOKEN", "TAILOR_API_KEY", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "WANDB_API_KEY"):
        monkeypatch.setenv(name, "secret-value")
    env = server["service"].worker.child_env("alpha")
    assert "secret-value" not in env.values()
    assert env["HF_TOKEN_PATH"] == os.devnull and env["HF_HUB_DISABLE_IMPLICIT_TOKEN"] == "1"  # no login cache
    assert env["OMP_NUM_THREADS"] == str(server["service"].worker.train_threads) and "PATH" in env
    monkeypatch.setenv("MY_OPERATOR_VAR", "passed")  # the operator names what else a job may see
    assert procs.job_env(1, extra=("MY_OPERATOR_VAR",))["MY_OPERATOR_VAR"] == "passed"


# ---- model references ---------------------------------------------------------------------------


def test_every_unknown_model_reference_gets_the_same_error_whatever_exists_on_disk(server, alpha, beta, alpha_file):
    beta_file = beta.files.create(file=("t.jsonl", alpha.files.content(alpha_file.id).read()), purpose="fine-tune")
    refs = ["/etc", "/no/such/folder", str(server["base"]), "../../etc", "base", "owner/hub-model",
            "ft:tiny:beta::abcdefgh", "default"]
    messages = set()
    for ref in refs:
        for client, fid in ((alpha, alpha_file.id), (beta, beta_file.id)):
            err = _refused(client, model=ref, training_file=fid)
            assert err.status_code == 400 and err.body["code"] == "model_not_found" and err.body["param"] == "model"
            messages.add(err.body["message"].replace(ref, "REF"))
            _no_server_paths(server, err.body["message"].replace(ref, "REF"))
    assert len(messages) == 1, messages  # the same words for a folder that exists and one that does not


# ---- quotas and fairness ---------------------------------------------------------------------------


def test_a_project_past_its_file_and_storage_quota_gets_400_and_the_other_project_is_unaffected(server, alpha, beta):
    made = []
    try:
        err = None
        for i in range(POLICY["max_project_files"] + 1):
            try:
                made.append(alpha.files.create(file=(f"f{i}.txt", b"x" * 10), purpose="user_data").id)
            except openai.BadRequestError as exc:
                err = exc
                break
        assert err is not None and err.body["code"] == "quota_exceeded"
        beta.files.create(file=("ok.txt", b"fine"), purpose="user_data")  # beta's own quota is untouched
    finally:
        for fid in made:
            alpha.files.delete(fid)
    big = b"y" * (900 * 1024)
    first = alpha.files.create(file=("a.txt", big), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as err:  # 2 x 900 KB > 1 MB
        alpha.files.create(file=("b.txt", big), purpose="user_data")
    assert err.value.body["code"] == "quota_exceeded"
    alpha.files.delete(first.id)


def test_a_project_past_its_job_quota_gets_429(server, tmp_path):
    svc = server["service"]  # a fresh project on the same store: the service object, no HTTP needed
    fid = svc.upload_bytes("q.jsonl", "fine-tune", write_chat_jsonl(tmp_path / "q.jsonl", 12).read_bytes(),
                           "gamma")["id"]
    svc.worker.max_jobs, saved = 0, svc.worker.max_jobs  # nothing starts: the jobs stay queued
    try:
        made = [svc.create_job({"model": "tiny", "training_file": fid, "tailor": FAST}, "gamma")
                for _ in range(POLICY["max_project_jobs"])]
        with pytest.raises(Exception) as err:
            svc.create_job({"model": "tiny", "training_file": fid, "tailor": FAST}, "gamma")
        assert err.value.kind == "rate_limit" and err.value.code == "rate_limit_exceeded"
        for job in made:
            svc.cancel_job(job["id"], "gamma")
        svc.create_job({"model": "tiny", "training_file": fid, "tailor": FAST}, "gamma")  # room again
    finally:
        for job in svc.store.all("jobs", project="gamma", where={"status": "queued"}):
            svc.cancel_job(job["id"], "gamma")
        svc.worker.max_jobs = saved


def test_a_429_reaches_the_sdk_in_openais_envelope(server, alpha, alpha_file):
    worker = server["service"].worker
    worker.max_jobs, saved = 0, worker.max_jobs
    made = []
    try:
        with pytest.raises(openai.RateLimitError) as err:
            for _ in range(POLICY["max_project_jobs"] + 1):
                made.append(alpha.fine_tuning.jobs.create(model="tiny", training_file=alpha_file.id,
                                                          extra_body={"tailor": FAST}))
        assert err.value.body["code"] == "rate_limit_exceeded" and len(made) <= POLICY["max_project_jobs"]
    finally:
        for job in made:
            alpha.fine_tuning.jobs.cancel(job.id)
        worker.max_jobs = saved


def test_projects_take_turns_so_one_queue_never_starves_another_projects_first_job(tmp_path):
    from tailor.service import jobs
    from tailor.service.store import Store
    from tailor.service.worker import Worker

    store = Store(tmp_path / "state")
    worker = Worker(store, max_jobs=1)

    def queued(project, n):
        out = []
        for _ in range(n):
            job = {"id": f"ftjob-{project}{len(store.all('jobs'))}", "status": "queued", "_project": project,
                   "created_at": int(time.time())}
            store.put("jobs", job, project=project)
            out.append(job["id"])
            time.sleep(0.002)
        return out

    a = queued("alpha", 3)  # alpha queued three long jobs first
    b = queued("beta", 1)
    assert worker.next_job()["id"] == a[0]
    worker._last_start["alpha"] = time.time()
    worker.runs["x"] = type("R", (), {"project": "alpha"})()  # alpha's first job is running
    assert worker.next_job()["id"] == b[0]  # beta's first job goes next, not alpha's second
    del worker.runs["x"]
    store.update("jobs", a[0], status="succeeded")
    worker._last_start["beta"] = time.time()
    assert worker.next_job()["id"] == a[1]  # turns, then FIFO within alpha
    assert jobs.ACTIVE == ("validating_files", "queued", "running", "paused")


def test_one_project_holds_at_most_its_share_of_the_engines_slots_while_another_waits():
    from tailor.infer.engine import Engine, Request
    from tailor.infer.sampling import SamplingParams

    class Backend:  # just enough engine backend to admit requests
        max_len, device = 64, "cpu"

        def prefill(self, slot, prompt, adapter, all_logits=False):
            import torch
            return torch.zeros(8)

        def release(self, slot):
            pass

    engine = Engine(Backend(), None, max_batch=4, max_share=0.5)
    params = SamplingParams(max_new_tokens=50, temperature=0)
    for _ in range(4):
        engine.submit(Request([1, 2], params, project="alpha"))
    engine.submit(Request([1, 2], params, project="beta"))
    engine._waiting.extend(engine._incoming.get_nowait() for _ in range(5))
    engine._admit()
    running = [r.project for r in engine._active]
    assert running.count("alpha") == 3 and running.count("beta") == 1  # beta did not wait behind alpha's 4th
    unfair = Engine(Backend(), None, max_batch=4)  # share 1.0: first come, first served
    for p in ("alpha",) * 4 + ("beta",):
        unfair._waiting.append(Request([1, 2], params, project=p))
    unfair._admit()
    assert [r.project for r in unfair._active] == ["alpha"] * 4


# ---- bounds on a running job and its lifecycle --------------------------------------------------


def test_a_job_past_the_step_bound_ends_failed_with_its_code(server, alpha, alpha_file):
    # 12 examples, batch 1, 5 epochs: far more than the operator's 40 steps
    job = alpha.fine_tuning.jobs.create(model="tiny", training_file=alpha_file.id,
                                        hyperparameters={"n_epochs": 5, "batch_size": 1},
                                        extra_body={"tailor": {"dtype": "float32", "eval_samples": 0,
                                                               "max_length": 128}})
    job = _wait(alpha, job.id)
    assert job.status == "failed" and job.error.code == "job_step_limit_exceeded", job.error
    assert "--max-job-steps" in job.error.message
    steps = [e.data["step"] for e in alpha.fine_tuning.jobs.list_events(job.id, limit=1000) if e.type == "metrics"]
    assert max(steps) > POLICY["max_job_steps"]  # the bound acts on what ran (a tiny model's steps take ms)


def test_a_cancel_that_races_the_start_ends_cancelled_and_starts_no_process(server, alpha, alpha_file, monkeypatch):
    worker = server["service"].worker
    prepare = worker.prepare
    seen = {}

    def prepare_then_cancel(job, folder):  # the cancel lands while the worker copies and merges
        seen["status"] = alpha.fine_tuning.jobs.retrieve(job["id"]).status
        alpha.fine_tuning.jobs.cancel(job["id"])
        return prepare(job, folder)

    monkeypatch.setattr(worker, "prepare", prepare_then_cancel)
    job = alpha.fine_tuning.jobs.create(model="tiny", training_file=alpha_file.id, extra_body={"tailor": FAST})
    job = _wait(alpha, job.id)
    assert seen["status"] == "running" and job.status == "cancelled"
    assert not (server["root"] / "state" / "jobs" / job.id / "train.log").exists()  # no process was started
    time.sleep(1)
    assert alpha.fine_tuning.jobs.retrieve(job.id).status == "cancelled"  # and it stays so


def test_a_cancel_before_the_claim_wins_the_compare_and_set(server):
    from tailor.service import jobs

    store = server["service"].store
    job = {"id": "ftjob-raceAAAAAAAAAAAAAAAAAAAAA", "status": "queued", "_project": "alpha", "created_at": 1}
    store.put("jobs", job, project="alpha")
    jobs.cancel(store, "alpha", job["id"])
    server["service"].worker._launch(job)  # the worker still holds the stale `queued` copy
    assert store.get("jobs", job["id"])["status"] == "cancelled"


def test_a_failure_while_finishing_ends_the_job_failed_and_the_next_job_still_runs(server, alpha, alpha_file,
                                                                                   monkeypatch):
    worker = server["service"].worker

    def disk_full(run, job, final):
        raise OSError(28, "No space left on device", str(final))

    monkeypatch.setattr(worker, "_succeed", disk_full)
    job = alpha.fine_tuning.jobs.create(model="tiny", training_file=alpha_file.id, extra_body={"tailor": FAST})
    job = _wait(alpha, job.id)
    assert job.status == "failed" and job.error.code == "server_error"
    assert "No space left on device" in job.error.message
    _no_server_paths(server, job.error.message)
    monkeypatch.undo()
    nxt = _wait(alpha, alpha.fine_tuning.jobs.create(model="tiny", training_file=alpha_file.id,
                                                     extra_body={"tailor": FAST}).id)
    assert nxt.status == "succeeded", nxt.error
    events = [e.message for e in alpha.fine_tuning.jobs.list_events(nxt.id, limit=100)]
    for text in events + [nxt.fine_tuned_model]:
        _no_server_paths(server, text)


def test_a_failed_jobs_error_names_file_ids_not_server_paths(server, alpha, tmp_path):
    long = tmp_path / "long.jsonl"  # every example far past max_length 16: nothing left to train on
    write_chat_jsonl(long, 12)
    f = alpha.files.create(file=("long.jsonl", long.read_bytes()), purpose="fine-tune")
    job = _wait(alpha, alpha.fine_tuning.jobs.create(model="tiny", training_file=f.id,
                                                     extra_body={"tailor": {**FAST, "max_length": 16}}).id)
    assert job.status == "failed"
    _no_server_paths(server, job.error.message)
    for e in alpha.fine_tuning.jobs.list_events(job.id, limit=100):
        _no_server_paths(server, e.message)


# ---- keys ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["", "   ", "\t\n"])
def test_an_empty_or_whitespace_key_refuses_to_start(env):
    with pytest.raises(UsageError, match="empty or only whitespace"):
        keys.load(None, None, env)
    with pytest.raises(UsageError):
        keys.Keyring({env: "x"})


def test_a_short_key_warns_and_a_keys_file_carries_each_projects_own_hub_token(tmp_path, caplog):
    f = tmp_path / "keys"
    f.write_text(f"k9Zq team-a\n{ALPHA} alpha hub_token=hf_alpha\n")
    with caplog.at_level("WARNING"):
        ring = keys.load(None, str(f), None)
    assert "guessable" in caplog.text and "k9Zq" not in caplog.text and "hf_alpha" not in caplog.text
    assert ring.hub_tokens == {"alpha": "hf_alpha"} and ring.project("k9Zq") == "team-a"


# ---- uploads stream --------------------------------------------------------------------------------


def test_an_upload_past_the_limit_is_413_while_streaming_and_leaves_nothing(server):
    blobs = server["root"] / "state" / "blobs"
    before = set(os.listdir(blobs))

    def body():  # no content-length: the limit must hold while streaming
        for _ in range(8):
            yield b"z" * (1024 * 1024)

    boundary = "tailorboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nuser_data\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()

    def stream():
        yield head
        yield from body()
        yield f"\r\n--{boundary}--\r\n".encode()

    r = httpx.post(server["url"] + "/v1/files", content=stream(), timeout=60,
                   headers={"Authorization": f"Bearer {ALPHA}", "content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert set(os.listdir(blobs)) == before  # the temporary file is gone


def test_uploads_beyond_the_concurrency_bound_get_429(server):
    gate = threading.Event()
    boundary = "b0undary"

    def slow():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nuser_data\r\n--{boundary}\r\n"
               "Content-Disposition: form-data; name=\"file\"; filename=\"s.txt\"\r\n\r\n").encode()
        gate.wait(30)  # hold the one upload slot (max_uploads=1) open
        yield f"hello\r\n--{boundary}--\r\n".encode()

    headers = {"Authorization": f"Bearer {BETA}", "content-type": f"multipart/form-data; boundary={boundary}"}
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", httpx.post(server["url"] + "/v1/files", content=slow(),
                                                                         headers=headers, timeout=60)))
    t.start()
    try:
        deadline = time.time() + 30
        while server["app"].state.uploads_running < 1 and time.time() < deadline:
            time.sleep(0.02)  # until the slow upload holds the one slot
        resp = httpx.post(server["url"] + "/v1/files", headers={"Authorization": f"Bearer {ALPHA}"},
                          files={"file": ("x.txt", b"x")}, data={"purpose": "user_data"}, timeout=30)
        assert resp.status_code == 429 and resp.headers.get("retry-after"), resp.text
    finally:
        gate.set()
        t.join(30)
    assert result["r"].status_code == 200, result["r"].text
    _client(server, BETA).files.delete(result["r"].json()["id"])


def test_health_and_streams_stay_responsive_during_a_500_mb_upload(tmp_path):
    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry
    from tailor.service import Service

    size = 512 * 1024 * 1024
    reg = Registry.load([str(save_tiny(tmp_path / "base"))], ["tiny"], dtype="float32", max_batch=2, max_len=128)
    service = Service(tmp_path / "state", max_upload_bytes=size + 1024)
    latencies, done = [], threading.Event()
    boundary = "bigboundary"

    def stream():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}\r\n"
               "Content-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n\r\n").encode()
        chunk = b"w" * (1024 * 1024)
        for _ in range(size // len(chunk)):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    gaps = []  # seconds between one streamed chunk and the next, for chats streaming meanwhile

    with serving(create_app(reg, service=service)) as url:
        def probe():
            with httpx.Client(timeout=30) as c:
                while not done.is_set():
                    t0 = time.perf_counter()
                    assert c.get(url + "/health").status_code == 200
                    latencies.append(time.perf_counter() - t0)
                    time.sleep(0.02)

        def chat():
            body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 40,
                    "temperature": 0, "stream": True}
            with httpx.Client(timeout=60) as c:
                while not done.is_set():
                    with c.stream("POST", url + "/v1/chat/completions", json=body) as r:
                        last = time.perf_counter()
                        for line in r.iter_lines():
                            if line.startswith("data: "):
                                now = time.perf_counter()
                                gaps.append(now - last)
                                last = now

        threads = [threading.Thread(target=probe), threading.Thread(target=chat)]
        for t in threads:
            t.start()
        try:
            r = httpx.post(url + "/v1/files", content=stream(), timeout=300,
                           headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        finally:
            done.set()
            for t in threads:
                t.join()
    assert r.status_code == 200 and r.json()["bytes"] == size, r.text
    for what, values in (("/health", latencies), ("a streaming chat's chunk gaps", gaps)):
        values.sort()
        p99 = values[int(0.99 * (len(values) - 1))]
        assert len(values) > 10 and p99 < 1.0, f"{what}: p99 {p99:.3f} s during the upload"


# ---- published models load on first use ----------------------------------------------------------


def test_published_full_models_load_on_first_use_into_a_bounded_lru(tmp_path):
    from tailor.serve.registry import Registry

    base = save_tiny(tmp_path / "base")
    reg = Registry.load([str(base)], ["tiny"], dtype="float32", max_batch=2, max_len=128, max_loaded=1)
    fulls = [save_tiny(tmp_path / f"ft{i}", seed=i + 1) for i in range(3)]
    t0 = time.perf_counter()
    for i in range(30):  # a restart with 30 published models loads none of them
        reg.publish(str(fulls[i % 3]), f"ft:tiny:alpha::{i:08d}", owned_by="alpha", project="alpha")
    assert time.perf_counter() - t0 < 1.0 and len(reg.engines) == 1
    assert {"ft:tiny:alpha::00000000", "tiny"} <= set(reg.visible("alpha")) and "ft:tiny:alpha::00000000" \
        not in reg.visible("beta")
    assert reg.get("ft:tiny:alpha::00000000", "beta") is None  # another project's: unknown, nothing loaded
    a = reg.get("ft:tiny:alpha::00000000", "alpha")
    assert len(reg.engines) == 2 and "ft:tiny:alpha::00000000" in reg.models
    b = reg.get("ft:tiny:alpha::00000001", "alpha")
    assert len(reg.engines) == 2 and "ft:tiny:alpha::00000000" not in reg.models  # a was idle: evicted
    assert a.engine not in reg.engines and b.engine in reg.engines
    again = reg.get("ft:tiny:alpha::00000000", "alpha")  # loads again on demand
    assert again is not None and again.engine is not a.engine


# ---- processes -------------------------------------------------------------------------------------


def test_a_trainer_dies_with_the_process_that_started_it(tmp_path):
    """What keeps torchrun's ranks from outliving a killed server: each link of the chain asks
    for PR_SET_PDEATHSIG (tailor.lifetime), so killing the top kills the bottom."""
    pidfile = tmp_path / "child.pid"
    child = ("import os, time; from tailor import lifetime; lifetime.inherit(); "
             f"open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)")
    parent = (f"import subprocess, sys, time; from tailor import lifetime; "
              f"subprocess.Popen([sys.executable, '-c', {child!r}], preexec_fn=lifetime.preexec); time.sleep(60)")
    env = {**os.environ, "TAILOR_DIE_WITH_PARENT": "1"}
    p = subprocess.Popen([sys.executable, "-c", parent], env=env)
    deadline = time.time() + 30
    while not pidfile.exists() and time.time() < deadline:
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    p.kill()
    p.wait()
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    raise AssertionError("the grandchild outlived its killed parent")


def test_a_restarted_server_kills_what_a_dead_one_left_running_in_a_jobs_folder(tmp_path):
    folder = tmp_path / "jobs" / "ftjob-leftover"
    folder.mkdir(parents=True)
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "tailor", str(folder / "job.yaml")],
                         start_new_session=True)
    deadline = time.time() + 10
    while time.time() < deadline and str(folder).encode() not in Path(f"/proc/{p.pid}/cmdline").read_bytes():
        time.sleep(0.01)  # until the child has exec'd: before that it wears the parent's command line
    assert procs.kill_leftovers(folder) == 1
    assert p.wait(10) == -9


def test_metrics_are_read_from_where_the_last_read_stopped(tmp_path):
    from tailor.service.worker import _Tail

    path = tmp_path / "metrics.jsonl"
    tail = _Tail(path)
    assert tail.read() == []
    path.write_text('{"step": 1}\n{"step": 2}\n{"st')
    assert [r["step"] for r in tail.read()] == [1, 2]  # the torn last line waits
    with path.open("a") as f:
        f.write('ep": 3}\n')
    assert [r["step"] for r in tail.read()] == [3]
    replaced = tmp_path / "new.jsonl"
    replaced.write_text('{"step": 1}\n')
    os.replace(replaced, path)  # a resumed run rewrites its file: read it again from the start
    assert [r["step"] for r in tail.read()] == [1]
