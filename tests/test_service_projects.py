"""Keys as projects: with several API keys each key sees only its own files, jobs and fine-tuned
models, and another project's ids answer 404 exactly as unknown ids do. Driven by the official
`openai` client against a real uvicorn server serving a tiny model."""

import time

import openai
import pytest

from servekit import serving
from tiny import save_tiny
from trainkit import write_chat_jsonl

from tailor.errors import UsageError
from tailor.service import keys

ALICE, BOB = "sk-alice-0123456789", "sk-bob-9876543210"
FAST = {"max_steps": 2, "dtype": "float32", "eval_samples": 0, "max_length": 128, "save_every": 1}


# ---- the keyring on its own ------------------------------------------------------------------


def test_one_key_is_the_default_project_and_several_are_named(tmp_path):
    assert keys.load(None, None, "sk-env").project("sk-env") == "default"  # $TAILOR_API_KEY, as before
    assert keys.load(["sk-one"], None, "sk-env").project("sk-env") is None  # a flag wins over the env
    assert not keys.load(None, None, None)  # no key: no guard
    f = tmp_path / "keys.txt"
    f.write_text(f"# team keys\n{ALICE} alice\n\n{BOB}   bob\nsk-anon\n")
    ring = keys.load(["sk-cli research"], str(f), None)
    assert [ring.project(k) for k in (ALICE, BOB, "sk-cli", "sk-nope", "")] == ["alice", "bob", "research", None, None]
    anon = ring.project("sk-anon")  # a key without a name: a stable fingerprint, never the key
    assert anon == keys.fingerprint("sk-anon") and anon.startswith("key-") and "anon" not in anon
    assert ring.projects == sorted(["alice", "bob", "research", anon])


@pytest.mark.parametrize("cli, text, words", [
    (["sk-a a", "sk-a b"], None, "given twice"),
    (["sk-a bad:name"], None, "not valid"),
    (["sk-a b c"], None, "KEY NAME"),
    (None, "\n# nothing\n", "no keys"),
])
def test_bad_keys_are_a_usage_error_that_never_shows_the_key(tmp_path, cli, text, words):
    path = None
    if text is not None:
        path = tmp_path / "keys.txt"
        path.write_text(text)
    with pytest.raises(UsageError) as err:
        keys.load(cli, str(path) if path else None, None)
    assert words in str(err.value) and "sk-a" not in str(err.value)


# ---- two projects on one server --------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry
    from tailor.service import Service

    root = tmp_path_factory.mktemp("projects")
    mp = pytest.MonkeyPatch()
    mp.setenv("TAILOR_HOME", str(root / "home"))
    reg = Registry.load([str(save_tiny(root / "base"))], ["tiny"], dtype="float32", max_batch=4, max_len=256)
    ring = keys.Keyring({ALICE: "alice", BOB: "bob"})
    with serving(create_app(reg, api_key=ring, service=Service(root / "state")), join_timeout=60) as url:
        yield {"url": url, "root": root}
    mp.undo()


def _client(server, key):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def alice_job(server, tmp_path_factory):
    """Alice's file and a finished job with its model and checkpoints."""
    alice = _client(server, ALICE)
    data = write_chat_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", 12).read_bytes()
    f = alice.files.create(file=("train.jsonl", data), purpose="fine-tune")
    job = alice.fine_tuning.jobs.create(model="tiny", training_file=f.id, suffix="mine", extra_body={"tailor": FAST})
    deadline = time.time() + 240
    while (job := alice.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.time() < deadline
        time.sleep(0.2)
    assert job.status == "succeeded", job.error
    return f, job


def test_the_owner_sees_and_uses_its_own_job_and_model(server, alice_job):
    alice = _client(server, ALICE)
    f, job = alice_job
    assert job.fine_tuned_model.startswith("ft:tiny:alice:mine:")  # {owner} is the project's name
    assert job.organization_id == "org-alice"
    cards = {m.id: m for m in alice.models.list()}
    assert cards[job.fine_tuned_model].owned_by == "alice" and "tiny" in cards
    assert alice.models.retrieve(job.fine_tuned_model).id == job.fine_tuned_model
    ckpt = alice.fine_tuning.jobs.checkpoints.list(job.id).data[0].fine_tuned_model_checkpoint
    for model in (job.fine_tuned_model, ckpt):
        r = alice.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert r.usage.completion_tokens >= 1
    assert [x.id for x in alice.files.list()] == [job.result_files[0], f.id]


def test_another_project_gets_404_for_every_id_of_it(server, alice_job):
    bob = _client(server, BOB)
    f, job = alice_job
    ckpt = _client(server, ALICE).fine_tuning.jobs.checkpoints.list(job.id).data[0].fine_tuned_model_checkpoint
    calls = [lambda: bob.files.retrieve(f.id), lambda: bob.files.content(f.id), lambda: bob.files.delete(f.id),
             lambda: bob.files.retrieve(job.result_files[0]),
             lambda: bob.fine_tuning.jobs.retrieve(job.id), lambda: bob.fine_tuning.jobs.list_events(job.id),
             lambda: bob.fine_tuning.jobs.checkpoints.list(job.id), lambda: bob.fine_tuning.jobs.cancel(job.id),
             lambda: bob.fine_tuning.jobs.pause(job.id), lambda: bob.fine_tuning.jobs.resume(job.id)]
    for model in (job.fine_tuned_model, ckpt):
        calls.append(lambda m=model: bob.models.retrieve(m))
        calls.append(lambda m=model: bob.chat.completions.create(model=m, messages=[{"role": "user", "content": "x"}]))
        calls.append(lambda m=model: bob.completions.create(model=m, prompt="x"))
    for bad in ("../service.db", "file-..%2F..%2Fservice.db", "%2Fetc%2Fpasswd", "ftjob-x%2F..%2F.."):
        calls += [lambda b=bad: bob.files.retrieve(b), lambda b=bad: bob.fine_tuning.jobs.retrieve(b),
                  lambda b=bad: bob.fine_tuning.jobs.list_events(b)]
    for call in calls:
        with pytest.raises(openai.NotFoundError):
            call()
    assert _client(server, ALICE).files.retrieve(f.id).id == f.id  # Bob's delete did nothing


def test_another_project_lists_none_of_it_and_cannot_train_on_it(server, alice_job):
    bob = _client(server, BOB)
    f, job = alice_job
    assert f.id not in [x.id for x in bob.files.list()] and bob.fine_tuning.jobs.list().data == []
    ids = [m.id for m in bob.models.list()]
    assert "tiny" in ids and not [i for i in ids if i.startswith("ft:")]  # base models stay visible to all
    with pytest.raises(openai.BadRequestError) as err:
        bob.fine_tuning.jobs.create(model="tiny", training_file=f.id)
    assert err.value.body["param"] == "training_file" and "not found" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        bob.fine_tuning.jobs.create(model=job.fine_tuned_model, training_file=f.id)
    assert err.value.body["code"] == "model_not_found"


def test_a_wrong_key_is_401_and_keys_are_never_stored(server, alice_job):
    with pytest.raises(openai.AuthenticationError):
        _client(server, ALICE + "x").models.list()
    with pytest.raises(openai.AuthenticationError):
        _client(server, ALICE[:-1]).files.list()
    state = server["root"] / "state"
    stored = b"".join(p.read_bytes() for p in state.rglob("*") if p.is_file() and "jobs" not in p.parts)
    assert b"alice" in stored  # rows hold the project's name ...
    assert ALICE.encode() not in stored and BOB.encode() not in stored  # ... never its key


# ---- the command line ------------------------------------------------------------------------


def test_tailor_serve_takes_repeated_keys_and_a_keys_file_and_never_prints_them(tmp_path):
    import os
    import subprocess
    import sys

    import httpx

    from servekit import free_port

    keyfile = tmp_path / "keys.txt"
    keyfile.write_text(f"{BOB} bob\n")
    port = free_port()
    cmd = [sys.executable, "-m", "tailor.cli", "serve", str(save_tiny(tmp_path / "base")), "--name", "tiny",
           "--port", str(port), "--state", str(tmp_path / "state"), "--dtype", "float32",
           "--api-key", f"{ALICE} alice", "--api-keys", str(keyfile), "--train-threads", "1"]
    env = {**os.environ, "TAILOR_HOME": str(tmp_path / "home"), "TAILOR_API_KEY": "sk-env-ignored"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1/models"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        for key, status in ((ALICE, 200), (BOB, 200), ("sk-env-ignored", 401), (f"{ALICE} alice", 401)):
            assert httpx.get(url, headers={"Authorization": f"Bearer {key}"}).status_code == status
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[0].decode()
    assert "projects (one per API key): alice, bob" in out
    assert ALICE not in out and BOB not in out


def test_tailor_serve_refuses_zero_train_threads_before_loading_anything(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "tailor.cli", "serve", "no/such-model", "--train-threads", "0",
                        "--state", str(tmp_path / "state")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--train-threads is 0" in r.stderr and "Traceback" not in r.stderr
