"""The grader endpoints and the Evals API end to end, driven by the official `openai` SDK
against a real uvicorn server. The served models are tests/fixedreply.py's: each always gives
the same answer, so pass rates are known in advance."""

import json
import time

import httpx
import openai
import pytest

from fixedreply import save_fixed_reply
from servekit import serving

# the SDK warns that OpenAI retires its own Evals; these tests are of tailor's
pytestmark = pytest.mark.filterwarnings("ignore:The Evals API is deprecated:DeprecationWarning")

ALICE, BOB = "sk-alice-graders", "sk-bob-graders"
QUESTIONS = [{"q": "Capital of France?", "answer": "Paris"}, {"q": "Capital of Italy?", "answer": "Rome"},
             {"q": "Where is the Louvre?", "answer": "Paris"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tailor.graders.sandbox import Limits
    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry
    from tailor.service import Service
    from tailor.service.keys import Keyring

    root = tmp_path_factory.mktemp("graders")
    mp = pytest.MonkeyPatch()
    mp.setenv("TAILOR_HOME", str(root / "home"))
    refs = [save_fixed_reply(root / name, reply) for name, reply in
            (("paris", "Paris"), ("rome", "Rome"), ("judge", "0.75"), ("labeler", "yes"))]
    reg = Registry.load([str(r) for r in refs], ["paris", "rome", "judge", "labeler"], dtype="float32",
                        max_batch=8, max_len=256)
    service = Service(root / "state")
    app = create_app(reg, api_key=Keyring({ALICE: "alice", BOB: "bob"}), service=service,
                     graders_options={"python_limits": Limits(wall_seconds=3, cpu_seconds=3, memory_mb=256)})
    with serving(app, join_timeout=60) as url:
        yield {"url": url, "state": root / "state"}
    mp.undo()


def client(server, key=ALICE):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=key, max_retries=0, timeout=60)


def grade(server, grader, sample="", item=None):
    return client(server).fine_tuning.alpha.graders.run(grader=grader, model_sample=sample, item=item or {})


# ---- graders/run and validate -------------------------------------------------------------------


def test_run_and_validate_through_the_sdk(server):
    c = client(server)
    g = {"type": "string_check", "name": "match", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
         "operation": "ilike"}
    out = c.fine_tuning.alpha.graders.run(grader=g, model_sample="It is PARIS.", item={"answer": "paris"})
    assert out.reward == 1.0 and out.metadata.type == "string_check" and out.metadata.name == "match"
    assert out.metadata.errors.invalid_variable_error is False and out.metadata.execution_time >= 0
    assert c.fine_tuning.alpha.graders.validate(grader=g).grader.operation == "ilike"
    with pytest.raises(openai.BadRequestError) as err:
        c.fine_tuning.alpha.graders.validate(grader=dict(g, operation="neq"))
    assert err.value.body["param"] == "grader.operation"
    with pytest.raises(openai.BadRequestError):  # label_model is for evals, as on OpenAI
        c.fine_tuning.alpha.graders.validate(grader={"type": "label_model"})


def test_score_model_grades_with_a_served_model(server):
    g = {"type": "score_model", "name": "judge", "model": "judge", "range": [0, 1],
         "input": [{"role": "user", "content": "Is {{sample.output_text}} the answer to {{item.q}}?"}]}
    out = grade(server, g, "Paris", QUESTIONS[0])
    assert out.reward == 0.75 and out.metadata.sampled_model_name == "judge"
    # "0.75" is four tokens, and the end of turn that stops it counts too (as OpenAI and vLLM count it)
    assert out.api_model_grader_token_usage_per_model["judge"]["completion_tokens"] == 5
    multi = {"type": "multi", "name": "m", "calculate_output": "0.5 * judge + 0.5 * exact", "graders": {
        "judge": g, "exact": {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                              "reference": "Paris", "operation": "eq"}}}
    out = grade(server, multi, "Paris", QUESTIONS[0])
    assert out.reward == pytest.approx(0.875) and out.sub_rewards == {"judge": 0.75, "exact": 1.0}
    bob = client(server, BOB).fine_tuning.alpha.graders.run(grader=dict(g, model="nope"), model_sample="x",
                                                            item=QUESTIONS[0])
    assert bob.metadata.errors.api_model_grader_server_error is True and bob.reward == 0


# ---- the python sandbox --------------------------------------------------------------------------


def _python(server, body):
    return grade(server, {"type": "python", "name": "p", "source": "def grade(sample, item):\n" + body},
                 "hello", {"n": 2})


def test_a_python_grader_computes_its_reward(server):
    out = _python(server, "    import json, math\n    return len(sample['output_text']) * item['n'] / 10")
    assert out.reward == 1.0 and not out.metadata.errors.python_grader_runtime_error


@pytest.mark.parametrize("body, words", [
    ("    return open(SERVER_FILE).read()", "Permission denied"),
    ("    return open('/etc/passwd').read()", "Permission denied"),
    ("    import socket\n    socket.create_connection(('127.0.0.1', PORT))\n    return 1", "Operation not permitted"),
    ("    import os\n    os.kill(os.getppid(), 9)\n    return 1", "Operation not permitted"),
    ("    import subprocess\n    return subprocess.run(['true']).returncode", "Operation not permitted"),
    ("    while True:\n        pass", "time limit"),
    ("    x = [0] * (10 ** 10)\n    return 1", "MemoryError"),
    ("    open('out.txt', 'w').write('x')\n    return 1", "Permission denied"),
    ("    raise ValueError('no good')", "ValueError: no good"),
    ("    return 'high'", "not a number"),
])
def test_the_sandbox_refuses_or_stops_what_a_grader_must_not_do(server, body, words):
    port = server["url"].rsplit(":", 1)[1]
    body = body.replace("SERVER_FILE", repr(str(server["state"] / "service.db"))).replace("PORT", port)
    started = time.time()
    out = _python(server, body)
    errors = out.metadata.errors
    assert out.reward == 0 and errors.python_grader_runtime_error is True, errors
    assert words in errors.python_grader_runtime_error_details
    details = errors.python_grader_runtime_error_details
    assert "site-packages" not in details and "/tailor/" not in details  # only the grader's own lines
    assert time.time() - started < 10
    assert httpx.get(server["url"] + "/health").json()["status"] == "ok"  # the server stays healthy


def test_a_1mb_source_is_refused_and_the_server_stays_healthy(server):
    source = "def grade(sample, item):\n    return 1\n" + "#" * (1 << 20)
    with pytest.raises(openai.BadRequestError) as err:
        grade(server, {"type": "python", "name": "big", "source": source})
    assert err.value.body["param"] == "grader.source" and "at most 262144" in err.value.body["message"]
    assert _python(server, "    return 0.5").reward == 0.5


# ---- evals ----------------------------------------------------------------------------------------

CRITERIA = [{"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
             "reference": "{{item.answer}}", "operation": "eq"},
            {"type": "python", "name": "short", "source": "def grade(sample, item):\n"
             "    return 1.0 if len(sample['output_text']) <= 5 else 0.0", "pass_threshold": 1},
            {"type": "label_model", "name": "judged", "model": "labeler", "labels": ["yes", "no"],
             "passing_labels": ["yes"], "input": [{"role": "user", "content": "Is {{sample.output_text}} right?"}]}]


def _eval(c):
    return c.evals.create(
        name="capitals", testing_criteria=CRITERIA,
        data_source_config={"type": "custom", "include_sample_schema": True, "item_schema": {
            "type": "object", "properties": {"q": {"type": "string"}, "answer": {"type": "string"}},
            "required": ["q", "answer"]}})


def _wait(c, ev, run):
    deadline = time.time() + 120
    while (run := c.evals.runs.retrieve(run.id, eval_id=ev.id)).status in ("queued", "in_progress"):
        assert time.time() < deadline
        time.sleep(0.1)
    return run


def _completions(model):
    return {"type": "completions", "model": model, "sampling_params": {"temperature": 0, "max_completion_tokens": 8},
            "input_messages": {"type": "template", "template": [
                {"role": "developer", "content": "Answer with one word."}, {"role": "user", "content": "{{item.q}}"}]},
            "source": {"type": "file_content", "content": [{"item": q} for q in QUESTIONS]}}


def test_an_eval_runs_on_two_served_models_and_a_jsonl_file(server):
    c = client(server)
    ev = _eval(c)
    assert ev.data_source_config.schema_["properties"]["item"]["required"] == ["q", "answer"]
    assert [e.id for e in c.evals.list()] == [ev.id] and c.evals.retrieve(ev.id).name == "capitals"
    runs = {m: c.evals.runs.create(ev.id, name=m, data_source=_completions(m)) for m in ("paris", "rome")}
    lines = "\n".join(json.dumps({"item": q, "sample": {"output_text": "Paris"}}) for q in QUESTIONS)
    f = c.files.create(file=("rows.jsonl", lines.encode()), purpose="evals")
    runs["file"] = c.evals.runs.create(ev.id, data_source={"type": "jsonl", "source": {"type": "file_id", "id": f.id}})
    for name, run in runs.items():
        run = _wait(c, ev, run)
        assert run.status == "completed", run.error
        outputs = {"paris": "Paris", "rome": "Rome", "file": "Paris"}[name]
        want = sum(q["answer"] == outputs for q in QUESTIONS)  # the direct computation
        assert (run.result_counts.total, run.result_counts.passed, run.result_counts.failed,
                run.result_counts.errored) == (3, want, 3 - want, 0), name
        per = {r.testing_criteria.rsplit("-", 5)[0]: (r.passed, r.failed) for r in run.per_testing_criteria_results}
        assert per == {"exact": (want, 3 - want), "short": (3, 0), "judged": (3, 0)}
        items = list(c.evals.runs.output_items.list(run.id, eval_id=ev.id))
        assert [i.datasource_item_id for i in items] == [0, 1, 2]
        assert [i.status for i in items] == ["pass" if q["answer"] == outputs else "fail" for q in QUESTIONS]
        assert all(i.sample.output[0].content == outputs for i in items)
        fails = c.evals.runs.output_items.list(run.id, eval_id=ev.id, status="fail").data
        assert len(fails) == 3 - want
        one = c.evals.runs.output_items.retrieve(items[0].id, eval_id=ev.id, run_id=run.id)
        assert one.results[0].name == "exact" and one.datasource_item == QUESTIONS[0]
    usage = {u.run_model_name: u for u in c.evals.runs.retrieve(runs["paris"].id, eval_id=ev.id).per_model_usage}
    assert usage["paris"].invocation_count == 3 and usage["labeler"].invocation_count == 3
    assert {r.name for r in c.evals.runs.list(ev.id)} == {"paris", "rome", "jsonl"}


def test_a_bad_run_is_a_400_naming_the_field(server):
    c = client(server)
    ev = _eval(c)
    bad = {"type": "jsonl", "source": {"type": "file_content", "content": [{"item": {"q": "x"}}]}}
    with pytest.raises(openai.BadRequestError) as err:
        c.evals.runs.create(ev.id, data_source=bad)
    assert err.value.body["param"] == "data_source.source.content[0].item" and "answer" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        c.evals.runs.create(ev.id, data_source=dict(_completions("paris"), model="gpt-unknown"))
    assert err.value.body["param"] == "data_source.model"
    with pytest.raises(openai.BadRequestError) as err:
        c.evals.create(name="x", data_source_config={"type": "custom", "item_schema": {"type": "object"}},
                       testing_criteria=[dict(CRITERIA[0], operation="nope")])
    assert err.value.body["param"] == "testing_criteria[0].operation"


def test_another_projects_evals_answer_404(server):
    alice, bob = client(server), client(server, BOB)
    ev = _eval(alice)
    run = _wait(alice, ev, alice.evals.runs.create(ev.id, data_source=_completions("paris")))
    item = alice.evals.runs.output_items.list(run.id, eval_id=ev.id).data[0]
    calls = [lambda: bob.evals.retrieve(ev.id), lambda: bob.evals.update(ev.id, name="mine"),
             lambda: bob.evals.delete(ev.id), lambda: bob.evals.runs.list(ev.id),
             lambda: bob.evals.runs.retrieve(run.id, eval_id=ev.id), lambda: bob.evals.runs.cancel(run.id, eval_id=ev.id),
             lambda: bob.evals.runs.delete(run.id, eval_id=ev.id),
             lambda: bob.evals.runs.create(ev.id, data_source=_completions("paris")),
             lambda: bob.evals.runs.output_items.list(run.id, eval_id=ev.id),
             lambda: bob.evals.runs.output_items.retrieve(item.id, eval_id=ev.id, run_id=run.id)]
    for call in calls:
        with pytest.raises(openai.NotFoundError):
            call()
    assert ev.id not in [e.id for e in bob.evals.list()]
    assert alice.evals.retrieve(ev.id).name == "capitals"  # untouched


def test_update_cancel_and_delete(server):
    c = client(server)
    ev = _eval(c)
    assert c.evals.update(ev.id, name="renamed", metadata={"team": "a"}).name == "renamed"
    run = _wait(c, ev, c.evals.runs.create(ev.id, data_source=_completions("paris")))
    with pytest.raises(openai.BadRequestError):  # a finished run cannot be canceled (400, never a retried 409)
        c.evals.runs.cancel(run.id, eval_id=ev.id)
    assert c.evals.runs.delete(run.id, eval_id=ev.id).deleted
    with pytest.raises(openai.NotFoundError):
        c.evals.runs.retrieve(run.id, eval_id=ev.id)
    assert c.evals.delete(ev.id).deleted
    with pytest.raises(openai.NotFoundError):
        c.evals.retrieve(ev.id)


def test_the_dashboard_has_an_evals_tab_over_the_public_api(server):
    page = httpx.get(server["url"] + "/").text
    script = httpx.get(server["url"] + "/app.js").text
    assert 'data-tab="evals"' in page and 'id="compare"' in page and 'id="cmp-a"' in page
    assert '"/v1/evals?limit=100' in script and "/output_items?limit=100" in script
