"""Webhooks end to end: local receivers check every delivery with the openai SDK's
`client.webhooks.unwrap` and the endpoint's secret; a 500 is retried and a success ends the
retries; another project's events never arrive; tenants' URLs may not reach internal addresses."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest

from servekit import serving
from tiny import save_tiny
from trainkit import write_chat_jsonl

KEYS = {"sk-alice": "alice", "sk-bob": "bob"}
OPERATOR_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of 24 bytes
FAST = {"max_steps": 3, "dtype": "float32", "eval_samples": 0, "max_length": 128}


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that records each request and answers `codes` in turn (then 200)."""

    def __init__(self, codes=()):
        self.codes, self.got = list(codes), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                code = outer.codes.pop(0) if outer.codes else 200
                outer.got.append({"body": body, "headers": dict(self.headers.items()), "answered": code})
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, secret):
        """Every delivery answered 2xx, unwrapped (and so verified) with the SDK."""
        client = openai.OpenAI(api_key="unused", webhook_secret=secret)
        return [client.webhooks.unwrap(g["body"].decode(), g["headers"]) for g in self.got if g["answered"] < 300]

    def wait(self, n, timeout=60):
        deadline = time.time() + timeout
        while len(self.got) < n and time.time() < deadline:
            time.sleep(0.05)
        assert len(self.got) >= n, f"{len(self.got)} deliveries, expected {n}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry
    from tailor.service import Service
    from tailor.service.keys import Keyring
    from tailor.service.webhooks import Retry

    root = tmp_path_factory.mktemp("webhooks")
    mp = pytest.MonkeyPatch()
    mp.setenv("TAILOR_HOME", str(root / "home"))
    operator = Receiver()
    reg = Registry.load([str(save_tiny(root / "base"))], ["tiny"], dtype="float32", max_batch=2, max_len=256)
    service = Service(root / "state", max_upload_bytes=64 * 1024, webhooks={
        "operator_urls": [operator.url], "operator_secret": OPERATOR_SECRET, "allow_networks": ["127.0.0.0/8"],
        "retry": Retry(base_s=0.3, factor=2.0, attempts=4)})
    app = create_app(reg, api_key=Keyring(KEYS), service=service)
    with serving(app, join_timeout=60) as url:
        yield {"url": url, "service": service, "operator": operator}
    mp.undo()


def _client(server, key):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=key, max_retries=0, timeout=60)


def _http(server, method, path, key, **kw):
    return httpx.request(method, server["url"] + "/v1/tailor/webhooks" + path,
                         headers={"Authorization": f"Bearer {key}"}, timeout=30, **kw)


def _wait_job(client, job_id, timeout=240):
    deadline = time.time() + timeout
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.time() < deadline, job.status
        time.sleep(0.2)
    return job


@pytest.fixture(scope="module")
def ended(server, tmp_path_factory):
    """alice's endpoint answers 500 once; alice runs a job to success and cancels a queued one;
    bob has an endpoint of his own."""
    alice_rx, bob_rx = Receiver(codes=[500]), Receiver()
    made = _http(server, "POST", "", "sk-alice", json={"url": alice_rx.url})
    assert made.status_code == 200, made.text
    alice_ep = made.json()
    bob_ep = _http(server, "POST", "", "sk-bob", json={"url": bob_rx.url}).json()
    alice = _client(server, "sk-alice")
    path = write_chat_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", 12)
    f = alice.files.create(file=("train.jsonl", path.read_bytes()), purpose="fine-tune")
    alice.files.wait_for_processing(f.id, poll_interval=0.1)
    done = alice.fine_tuning.jobs.create(model="tiny", training_file=f.id, extra_body={"tailor": FAST})
    queued = alice.fine_tuning.jobs.create(model="tiny", training_file=f.id, extra_body={"tailor": FAST})
    assert alice.fine_tuning.jobs.cancel(queued.id).status == "cancelled"
    assert _wait_job(alice, done.id).status == "succeeded"
    alice_rx.wait(3)  # the cancel, the succeeded's 500, its retry
    return {"alice_rx": alice_rx, "bob_rx": bob_rx, "alice_ep": alice_ep, "bob_ep": bob_ep, "done": done.id,
            "queued": queued.id}


def test_each_delivery_verifies_with_the_sdk_and_carries_openais_payload(ended):
    events = ended["alice_rx"].events(ended["alice_ep"]["secret"])
    assert {(type(e).__name__, e.type, e.data.id) for e in events} == {
        ("FineTuningJobCancelledWebhookEvent", "fine_tuning.job.cancelled", ended["queued"]),
        ("FineTuningJobSucceededWebhookEvent", "fine_tuning.job.succeeded", ended["done"])}
    for e in events:
        assert e.id.startswith("evt_") and e.object == "event" and abs(e.created_at - time.time()) < 600
    headers = ended["alice_rx"].got[0]["headers"]
    assert headers["content-type"] == "application/json" and headers["webhook-signature"].startswith("v1,")


def test_a_500_is_retried_with_the_same_id_and_a_success_ends_the_retries(server, ended):
    time.sleep(1.5)  # past the next retries' times: none may come
    answers: dict[str, list[int]] = {}  # webhook-id -> what each try was answered
    for g in ended["alice_rx"].got:
        answers.setdefault(g["headers"]["webhook-id"], []).append(g["answered"])
    assert sorted(answers.values()) == [[200], [500, 200]], "one retry after the 500, none after a 200"
    retried = next(k for k, v in answers.items() if v == [500, 200])
    log = _http(server, "GET", f"/{ended['alice_ep']['id']}/deliveries", "sk-alice").json()["data"]
    assert len(log) == 2 and all(d["status"] == "succeeded" for d in log)
    by_id = {d["webhook_id"]: d for d in log}
    assert [a["status_code"] for a in by_id[retried]["attempts"]] == [500, 200]
    assert "_payload" not in log[0] and "whsec_" not in json.dumps(log)


def test_a_wrong_secret_fails_verification(ended):
    from tailor.service.webhook_http import new_secret

    with pytest.raises(openai.InvalidWebhookSignatureError):
        ended["alice_rx"].events(new_secret())
    with pytest.raises(openai.InvalidWebhookSignatureError):
        ended["alice_rx"].events(ended["bob_ep"]["secret"])


def test_another_projects_events_never_arrive_nor_show(server, ended):
    assert ended["bob_rx"].got == []
    assert _http(server, "GET", f"/{ended['alice_ep']['id']}/deliveries", "sk-bob").status_code == 404
    assert _http(server, "DELETE", f"/{ended['alice_ep']['id']}", "sk-bob").status_code == 404
    listed = _http(server, "GET", "", "sk-bob").json()["data"]
    assert [e["id"] for e in listed] == [ended["bob_ep"]["id"]] and "secret" not in listed[0]


def test_the_operators_endpoint_gets_every_projects_events(server, ended):
    server["operator"].wait(2)
    events = server["operator"].events(OPERATOR_SECRET)
    assert {(e.type, e.data.id) for e in events} >= {("fine_tuning.job.succeeded", ended["done"]),
                                                    ("fine_tuning.job.cancelled", ended["queued"])}


def test_an_eval_run_event_goes_out_through_emit(server, ended):
    rx = Receiver()
    ep = _http(server, "POST", "", "sk-bob", json={"url": rx.url, "events": ["eval.run.succeeded"]}).json()
    server["service"].webhooks.emit("bob", "eval.run.succeeded", "evalrun_123")
    server["service"].webhooks.emit("bob", "fine_tuning.job.failed", "ftjob-x")  # not among its events
    rx.wait(1)
    time.sleep(0.5)
    (event,) = rx.events(ep["secret"])
    assert type(event).__name__ == "EvalRunSucceededWebhookEvent" and event.data.id == "evalrun_123"
    assert _http(server, "DELETE", f"/{ep['id']}", "sk-bob").json()["deleted"] is True


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "http://10.1.2.3/x", "http://[::1]/x",
                                 "ftp://127.0.0.1/x", "http://user:pw@127.0.0.1/x", "http://no-such-host.invalid/"])
def test_a_tenant_url_that_may_not_be_reached_is_a_400_naming_url(server, url):
    r = _http(server, "POST", "", "sk-alice", json={"url": url})
    assert r.status_code == 400 and r.json()["error"]["param"] == "url", r.text


def test_the_default_rule_refuses_internal_addresses_and_allows_public_ones():
    from tailor.service.webhook_http import Policy

    default = Policy()
    for address in ("127.0.0.1", "169.254.169.254", "10.0.0.1", "172.16.5.4", "192.168.1.1", "100.64.0.1", "::1",
                    "fe80::1", "fd00::1", "::ffff:127.0.0.1", "0.0.0.0", "224.0.0.1"):
        assert not default.allows(address), address
    for address in ("8.8.8.8", "2606:4700::1111"):
        assert default.allows(address)
    assert Policy(["10.0.0.0/8"]).allows("10.9.9.9") and not Policy(["10.0.0.0/8"]).allows("192.168.0.1")


def test_bad_operator_settings_are_usage_errors(tmp_path):
    from tailor.errors import UsageError
    from tailor.service import Service

    with pytest.raises(UsageError, match="TAILOR_WEBHOOK_SECRET"):
        Service(tmp_path / "a", webhooks={"operator_urls": ["http://127.0.0.1:9/x"]})
    with pytest.raises(UsageError, match="whsec_"):
        Service(tmp_path / "b", webhooks={"operator_urls": ["http://127.0.0.1:9/x"], "operator_secret": "plain"})


@pytest.mark.parametrize("args, words", [
    (["--webhook", "http://127.0.0.1:9/x"], "TAILOR_WEBHOOK_SECRET"),
    (["--webhook", "http://127.0.0.1:9/x", "--webhook-secret-file", "/nonexistent/secret"], "cannot read it"),
    (["--webhook-allow-network", "ten-net"], "not a network"),
])
def test_tailor_serve_refuses_bad_webhook_flags_before_loading_models(tmp_path, args, words):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TAILOR_WEBHOOK_SECRET"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, "-m", "tailor.cli", "serve", "/nonexistent/model", "--state",
                          str(tmp_path / "state"), *args], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and words in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]


def test_an_eval_run_that_ends_sends_eval_run_succeeded_to_its_project_only(server):
    rx, other = Receiver(), Receiver()
    ep = _http(server, "POST", "", "sk-bob", json={"url": rx.url, "events": ["eval.run.succeeded"]}).json()
    ep2 = _http(server, "POST", "", "sk-alice", json={"url": other.url}).json()
    bob = _client(server, "sk-bob")
    ev = bob.evals.create(name="exact", data_source_config={"type": "custom", "item_schema": {
        "type": "object", "properties": {"a": {"type": "string"}}}, "include_sample_schema": False},
        testing_criteria=[{"type": "string_check", "name": "is-yes", "operation": "eq",
                           "input": "{{item.a}}", "reference": "yes"}])
    run = bob.evals.runs.create(ev.id, data_source={"type": "jsonl", "source": {
        "type": "file_content", "content": [{"item": {"a": "yes"}}, {"item": {"a": "no"}}]}})
    rx.wait(1)
    (event,) = rx.events(ep["secret"])
    assert event.type == "eval.run.succeeded" and event.data.id == run.id
    assert bob.evals.runs.retrieve(run.id, eval_id=ev.id).result_counts.passed == 1
    time.sleep(0.5)
    assert [e for e in other.events(ep2["secret"]) if e.type.startswith("eval.")] == []  # alice's endpoint: nothing
    for key, e in (("sk-bob", ep), ("sk-alice", ep2)):
        _http(server, "DELETE", f"/{e['id']}", key)
