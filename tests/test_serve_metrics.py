"""GET /metrics: Prometheus text that prometheus_client's own parser reads, before and after
traffic and a fine-tuning job, with the counters moving by what the responses say."""

import threading
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from servekit import free_port, serving
from tiny import save_tiny
from trainkit import write_chat_jsonl

KEY = "sk-metrics"
FAST = {"max_steps": 3, "dtype": "float32", "eval_samples": 0, "max_length": 128}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry
    from tailor.service import Service

    root = tmp_path_factory.mktemp("metrics")
    mp = pytest.MonkeyPatch()
    mp.setenv("TAILOR_HOME", str(root / "home"))
    base = save_tiny(root / "base")
    # one slot and no queue: a second request while one decodes is a 429
    reg = Registry.load([str(base)], ["tiny"], dtype="float32", max_batch=1, max_len=256, max_queue=0)
    service = Service(root / "state", max_upload_bytes=64 * 1024)
    app = create_app(reg, api_key=KEY, service=service)
    with serving(app, join_timeout=60) as url:
        yield {"url": url, "app": app, "root": root}
    mp.undo()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def scrape(url, key=KEY) -> dict:
    """{(sample name, sorted labels): value} from the text prometheus_client's parser reads."""
    r = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {key}"} if key else {})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_need_the_key_on_the_main_port(server):
    assert httpx.get(server["url"] + "/metrics").status_code == 401


def test_traffic_moves_the_request_and_token_counters(server, client):
    before = scrape(server["url"])
    assert value(before, "tailor:num_requests_running", model_name="tiny") == 0
    assert ("tailor:num_requests_waiting", (("model_name", "tiny"),)) in before
    assert value(before, "tailor:kv_cache_usage_perc", model_name="tiny") == 0
    prompt = completion = 0
    for _ in range(2):
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                           temperature=0)
        prompt, completion = prompt + r.usage.prompt_tokens, completion + r.usage.completion_tokens
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                            max_tokens=4, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    usage = [c.usage for c in stream if c.usage][0]
    prompt, completion = prompt + usage.prompt_tokens, completion + usage.completion_tokens
    after = scrape(server["url"])
    tiny = {"model_name": "tiny"}
    assert value(after, "tailor:prompt_tokens_total", **tiny) - value(before, "tailor:prompt_tokens_total", **tiny) \
        == prompt
    assert value(after, "tailor:generation_tokens_total", **tiny) - value(
        before, "tailor:generation_tokens_total", **tiny) == completion
    assert value(after, "tailor:time_to_first_token_seconds_count", **tiny) - value(
        before, "tailor:time_to_first_token_seconds_count", **tiny) == 3
    assert value(after, "tailor:e2e_request_latency_seconds_count", **tiny) - value(
        before, "tailor:e2e_request_latency_seconds_count", **tiny) == 3
    assert value(after, "tailor:e2e_request_latency_seconds_sum", **tiny) > 0
    assert value(after, "tailor:request_success_total", model_name="tiny", finished_reason="length") >= 1
    assert value(after, "tailor:num_requests_running", **tiny) == 0


def test_a_decoding_request_is_running_holds_cache_and_a_second_one_is_a_counted_429(server, client):
    before = scrape(server["url"])
    opened, release = threading.Event(), threading.Event()

    def long_stream():
        s = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "go"}],
                                           max_tokens=200, temperature=0, stream=True)
        for _ in s:
            opened.set()
            if release.wait(0):
                break
        s.close()

    t = threading.Thread(target=long_stream)
    t.start()
    try:
        assert opened.wait(30)
        during = scrape(server["url"])
        assert value(during, "tailor:num_requests_running", model_name="tiny") == 1
        assert value(during, "tailor:kv_cache_usage_perc", model_name="tiny") > 0
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    finally:
        release.set()
        t.join(60)
    after = scrape(server["url"])
    assert value(after, "tailor:rate_limited_requests_total") - value(before, "tailor:rate_limited_requests_total") == 1
    deadline = time.time() + 10
    while value(after, "tailor:num_requests_running", model_name="tiny") and time.time() < deadline:
        time.sleep(0.1)
        after = scrape(server["url"])
    assert value(after, "tailor:num_requests_running", model_name="tiny") == 0, "a left stream frees its slot"
    assert value(after, "tailor:num_requests_waiting", model_name="tiny") == 0, "the refused request is not waiting"


def test_a_job_moves_the_job_status_gauge_and_the_step_counter(server, client, tmp_path):
    before = scrape(server["url"])
    assert value(before, "tailor:fine_tuning_jobs", status="succeeded") == 0
    assert ("tailor:fine_tuning_steps_total", ()) in before
    path = write_chat_jsonl(tmp_path / "train.jsonl", 12)
    f = client.files.create(file=("train.jsonl", path.read_bytes()), purpose="fine-tune")
    client.files.wait_for_processing(f.id, poll_interval=0.1)
    job = client.fine_tuning.jobs.create(model="tiny", training_file=f.id, extra_body={"tailor": FAST})
    deadline = time.time() + 240
    while client.fine_tuning.jobs.retrieve(job.id).status not in ("succeeded", "failed", "cancelled"):
        assert time.time() < deadline
        time.sleep(0.3)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
    after = scrape(server["url"])
    assert value(after, "tailor:fine_tuning_jobs", status="succeeded") == 1
    assert value(after, "tailor:fine_tuning_jobs", status="running") == 0
    assert value(after, "tailor:fine_tuning_steps_total") - value(before, "tailor:fine_tuning_steps_total") == 3


def test_a_tenant_scrape_shows_only_its_models_and_no_job_metrics(server):
    text = server["app"].state.meter.text(visible={"another-model"}).decode()
    assert 'model_name="tiny"' not in text and "tailor:fine_tuning_" not in text
    assert "tailor:rate_limited_requests_total" in text
    full = server["app"].state.meter.text().decode()
    assert 'model_name="tiny"' in full and "tailor:fine_tuning_jobs" in full


def test_metrics_port_serves_without_a_key_and_the_main_port_then_has_none(tmp_path):
    from tailor.serve import metrics
    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry

    reg = Registry.load([str(save_tiny(tmp_path / "base"))], ["tiny"], dtype="float32", max_batch=2, max_len=128)
    app = create_app(reg, api_key=KEY, metrics_route=False)
    port = free_port()
    side = metrics.serve_separately(app.state.meter, "127.0.0.1", port)
    try:
        with serving(app) as url:
            assert httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404
            openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0).completions.create(
                model="tiny", prompt="hello", max_tokens=3, temperature=0)
            deadline = time.time() + 10
            while not side.started and time.time() < deadline:
                time.sleep(0.05)
            samples = scrape(f"http://127.0.0.1:{port}", key=None)
            assert value(samples, "tailor:generation_tokens_total", model_name="tiny") == 3
            assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 404
    finally:
        side.should_exit = True
