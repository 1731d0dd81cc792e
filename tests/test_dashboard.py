"""The web dashboard in a real browser: Debian's headless Chromium, driven by Selenium through
Debian's chromedriver (tests/browserkit.py), against a real uvicorn server with an API key, a tiny
model and the fine-tuning service. Skipped, saying why, when the browser, the driver or selenium
is absent. (docs/screenshots.py takes the README's pictures the same way, on the default model.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

import pytest

from browserkit import by as _by, chromium, messages as _msgs, until as _until
from servekit import serving
from tiny import save_tiny
from trainkit import write_chat_jsonl

KEY = "sk-dashboard-test"
FAST = {"max_steps": 6, "dtype": "float32", "eval_samples": 0, "max_length": 128, "save_every": 3}

needs_browser = pytest.mark.needs("browser")  # skipped without one, failed in CI (conftest.py)


# ---- fixtures: one server, one browser for the module ------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry
    from tailor.service import Service

    root = tmp_path_factory.mktemp("dash")
    mp = pytest.MonkeyPatch()
    mp.setenv("TAILOR_HOME", str(root / "home"))
    base = save_tiny(root / "base")
    reg = Registry.load([str(base)], ["tiny"], dtype="float32", max_batch=4, max_len=256)
    app = create_app(reg, api_key=KEY, service=Service(root / "state", max_upload_bytes=64 * 1024))
    with serving(app, join_timeout=60) as url:
        yield {"url": url, "root": root}
    mp.undo()


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


@pytest.fixture()
def page(browser, server):
    """The dashboard, unlocked with the key."""
    if not browser.current_url.startswith(server["url"]):
        browser.get(server["url"] + "/")
    if "locked" in browser.find_element("tag name", "body").get_attribute("class"):
        browser.execute_script("sessionStorage.setItem('tailor.api_key', arguments[0])", KEY)
        browser.get(server["url"] + "/")
        _until(browser, lambda: "locked" not in browser.find_element("tag name", "body").get_attribute("class"))
    return browser


def _upload(driver, path: Path):
    driver.get(driver.current_url.split("#")[0] + "#data")
    _by(driver, "#pick").send_keys(str(path))
    _until(driver, lambda: path.name in _by(driver, "#report-title").text, what=f"the report on {path.name}")


# ---- the page's files and the /v1/tailor extension, over plain HTTP --------------------------


def test_the_page_loads_without_the_key_and_the_api_still_needs_it(server):
    for path, kind in (("/", "text/html"), ("/app.js", "text/javascript"), ("/style.css", "text/css")):
        r = httpx.get(server["url"] + path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind), path
    assert "/v1/tailor/files/" in httpx.get(server["url"] + "/app.js").text
    for path in ("/v1/models", "/v1/files", "/v1/tailor/files/file-x/check", "/index.html", "/app.js/x"):
        assert httpx.get(server["url"] + path).status_code == 401, path


def _api(server, method, path, **kw):
    return httpx.request(method, server["url"] + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=60, **kw)


def test_check_reports_every_problem_and_token_statistics_with_a_served_model(server, tmp_path):
    lines = [json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]}),
             json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]})]
    fid = _api(server, "POST", "/v1/files", files={"file": ("two.jsonl", "\n".join(lines).encode())},
               data={"purpose": "fine-tune"}).json()["id"]
    r = _api(server, "GET", f"/v1/tailor/files/{fid}/check").json()
    assert r["file"] == "two.jsonl" and r["format"] == "chat" and r["examples"] == 1 and r["errors"] == 1
    assert {(p["line"], p["path"], p["kind"]) for p in r["problems"] if p["severity"] == "error"} == \
        {(2, "messages[1].content", "message_missing_key")}
    assert "tokens" not in r
    r = _api(server, "GET", f"/v1/tailor/files/{fid}/check", params={"model": "tiny", "max_length": 8}).json()
    assert r["model"] == "tiny" and r["tokens"]["total"] > 0 and r["tokens"]["over_max_length"] == 1
    assert any(p["kind"] == "too_long" for p in r["problems"])
    bad_model = _api(server, "GET", f"/v1/tailor/files/{fid}/check", params={"model": "runs/x"})
    assert bad_model.status_code == 404 and bad_model.json()["error"]["code"] == "model_not_found"
    assert _api(server, "GET", "/v1/tailor/files/file-nope/check").status_code == 404


def test_show_marks_the_reply_and_its_end_of_turn_as_trained(server):
    conv = {"messages": [{"role": "user", "content": "Ahoy?"}, {"role": "assistant", "content": "Arr matey."}]}
    fid = _api(server, "POST", "/v1/files", files={"file": ("one.jsonl", json.dumps(conv).encode())},
               data={"purpose": "fine-tune"}).json()["id"]
    r = _api(server, "GET", f"/v1/tailor/files/{fid}/show", params={"model": "tiny"}).json()
    text = "".join(s["text"] for s in r["segments"])
    assert text.startswith("<|im_start|>system") and "<|im_start|>user\nAhoy?<|im_end|>" in text
    assert "".join(s["text"] for s in r["segments"] if s["trained"]).strip() == "Arr matey.<|im_end|>"
    assert r["line"] == 1 and 0 < r["trained_tokens"] < r["tokens"]
    out = _api(server, "GET", f"/v1/tailor/files/{fid}/show", params={"model": "tiny", "index": 3})
    assert out.status_code == 400 and "1 valid example" in out.json()["error"]["message"]


def test_show_gives_both_completions_of_a_preference_pair(server):
    pair = {"input": {"messages": [{"role": "user", "content": "Capital of France?"}]},
            "preferred_output": [{"role": "assistant", "content": "Paris."}],
            "non_preferred_output": [{"role": "assistant", "content": "Great question! It is Paris."}]}
    fid = _api(server, "POST", "/v1/files", files={"file": ("pair.jsonl", json.dumps(pair).encode())},
               data={"purpose": "fine-tune"}).json()["id"]
    r = _api(server, "GET", f"/v1/tailor/files/{fid}/show", params={"model": "tiny"}).json()
    assert r["examples"] == 1 and r["line"] == 1
    trained = [s["text"].strip() for s in r["segments"] if s["trained"]]
    assert trained == ["Paris.<|im_end|>", "Great question! It is Paris.<|im_end|>"]
    text = "".join(s["text"] for s in r["segments"])
    assert text.index("--- chosen ---") < text.index("Paris.") < text.index("--- rejected ---")
    check = _api(server, "GET", f"/v1/tailor/files/{fid}/check", params={"model": "tiny"}).json()
    assert check["kind"] == "preference" and check["examples"] == 1 and check["errors"] == 0


def test_another_projects_file_is_unknown_to_the_extension(tmp_path):
    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry
    from tailor.service import Service
    from tailor.service.keys import Keyring

    reg = Registry.load([str(save_tiny(tmp_path / "base"))], ["tiny"], dtype="float32", max_batch=2, max_len=128)
    app = create_app(reg, api_key=Keyring({"sk-a": "a", "sk-b": "b"}), service=Service(tmp_path / "state"))
    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]}
    with serving(app) as url:
        auth = {"a": {"Authorization": "Bearer sk-a"}, "b": {"Authorization": "Bearer sk-b"}}
        fid = httpx.post(url + "/v1/files", headers=auth["a"], files={"file": ("a.jsonl", json.dumps(conv).encode())},
                         data={"purpose": "fine-tune"}).json()["id"]
        for route in ("check", "show?model=tiny"):
            assert httpx.get(f"{url}/v1/tailor/files/{fid}/{route}", headers=auth["a"]).status_code == 200, route
            assert httpx.get(f"{url}/v1/tailor/files/{fid}/{route}", headers=auth["b"]).status_code == 404, route


# ---- scenarios in the browser -------------------------------------------------------------------------------


@needs_browser
def test_with_a_key_the_page_shows_nothing_until_the_key_is_entered(browser, server):
    browser.get(server["url"] + "/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(server["url"] + "/")
    gate = _until(browser, lambda: _by(browser, "#gate").is_displayed() and _by(browser, "#gate"), what="the key gate")
    assert not _by(browser, "#app").is_displayed() and not _by(browser, "#nav").is_displayed()
    assert "API key" in gate.text and not _by(browser, "#gate-msg").text  # asked, not yet refused
    _by(browser, "#gate-key").send_keys("sk-wrong")
    _by(browser, "#gate-form button").click()
    _until(browser, lambda: "refused" in _by(browser, "#gate-msg").text, what="the refusal")
    assert not _by(browser, "#app").is_displayed()
    _by(browser, "#gate-key").send_keys(KEY)
    _by(browser, "#gate-form button").click()
    _until(browser, lambda: _by(browser, "#tab-data").is_displayed(), what="the Data tab after the key")
    assert not _by(browser, "#gate").is_displayed()
    assert KEY not in browser.current_url and browser.execute_script("return sessionStorage.getItem('tailor.api_key')") == KEY


@needs_browser
def test_a_bad_file_shows_every_problem_by_line_field_and_fix(page, tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]}
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n" + "{not json\n")
    _upload(page, path)
    rows = [[td.text for td in tr.find_elements("tag name", "td")] for tr in page.find_elements("css selector", "#problems tbody tr")]
    by_line = {r[0]: r for r in rows}
    assert by_line["2"][1] == "error" and by_line["2"][2].startswith("messages[1]") and by_line["2"][4]  # a fix
    assert by_line["3"][1] == "error"
    assert "error(s): this file cannot train" in _by(page, "#data-msg").text


@needs_browser
def test_a_good_file_trains_and_the_curve_gains_points_until_succeeded(page, server, tmp_path):
    from selenium.webdriver.support.ui import Select

    path = write_chat_jsonl(tmp_path / "train.jsonl", 12)
    Select(_by(page, "#data-model")).select_by_value("tiny")
    _upload(page, path)
    assert _by(page, "#report-none").is_displayed()
    counts = _by(page, "#report-counts").text
    assert "12 of 12 line(s)" in counts and "Tokens total" in counts  # token statistics with a model chosen
    _by(page, "#show-btn").click()
    marks = _until(page, lambda: page.find_elements("css selector", "#example mark"), what="the trained tokens")
    assert any("Ahoy!" in m.text for m in marks) and "<|im_start|>user" in _by(page, "#example").text
    assert not any("<|im_start|>user" in m.text for m in marks)  # the prompt is context only

    fid = _file_id(page)
    page.get(server["url"] + "/#jobs")
    _until(page, lambda: Select(_by(page, "#job-train")).options, what="the training file picker")
    Select(_by(page, "#job-model")).select_by_value("tiny")
    Select(_by(page, "#job-train")).select_by_value(fid)
    _by(page, "#job-suffix").send_keys("pirate")
    _by(page, "#job-tailor").send_keys(json.dumps(FAST))
    _by(page, "#job-create").click()
    _until(page, lambda: _by(page, "#tab-job").is_displayed(), what="the job page")
    canvas, seen = _by(page, "#curve"), []
    deadline = time.time() + 120
    while _by(page, "#job-status").text != "succeeded" and time.time() < deadline:
        assert _by(page, "#job-status").text not in ("failed", "cancelled"), _by(page, "#events").text
        seen.append(int(canvas.get_attribute("data-train-points") or 0))
        time.sleep(0.2)
    assert _by(page, "#job-status").text == "succeeded", _by(page, "#events").text
    _until(page, lambda: canvas.get_attribute("data-train-points") == "6", what="all six points")
    assert seen[0] == 0 and seen == sorted(seen)  # the same page drew the points as they came
    assert "Step 6/6: training loss=" in _by(page, "#events").text
    links = page.find_elements("link text", "chat with this checkpoint")
    assert links and page.find_elements("css selector", "#results button.download")
    page.get(server["url"] + "/#jobs")
    _until(page, lambda: "succeeded" in _by(page, "#jobs tbody").text, what="the job list")


@needs_browser
def test_a_reinforcement_job_draws_its_reward_curve(page, server, tmp_path):
    """A job of method reinforcement (made through the API: the form makes supervised jobs): its
    page draws the train and validation mean reward, and says the grader."""
    from trainkit import write_prompt_jsonl

    ids = {}
    for name, n in (("train", 12), ("val", 3)):
        data = write_prompt_jsonl(tmp_path / f"{name}.jsonl", n, seed=n).read_bytes()
        ids[name] = _api(server, "POST", "/v1/files", files={"file": (f"{name}.jsonl", data)},
                         data={"purpose": "fine-tune"}).json()["id"]
    grader = {"type": "string_check", "name": "answer", "input": "{{sample.output_text}}",
              "reference": "{{item.answer}}", "operation": "ilike"}
    job = _api(server, "POST", "/v1/fine_tuning/jobs", json={
        "model": "tiny", "training_file": ids["train"], "validation_file": ids["val"],
        "method": {"type": "reinforcement", "reinforcement": {"grader": grader,
                                                              "hyperparameters": {"batch_size": 2, "eval_interval": 2}}},
        "tailor": {"max_steps": 4, "dtype": "float32", "max_length": 96, "max_completion_tokens": 6,
                   "num_generations": 2}}).json()
    page.get(server["url"] + "/#job=" + job["id"])
    _until(page, lambda: _by(page, "#job-status").text == "succeeded", what="the job to succeed", timeout=180)
    canvas = _by(page, "#reward-curve")
    _until(page, lambda: canvas.get_attribute("data-train-points") == "4", what="four reward points")
    assert canvas.get_attribute("data-valid-points") == "2" and _by(page, "#reinforcement").is_displayed()
    assert "grader string_check" in _by(page, "#job-facts").text and "Last mean reward" in _by(page, "#job-facts").text
    assert "train mean reward=" in _by(page, "#events").text


def _file_id(driver) -> str:
    return driver.find_element("css selector", "#data-file").get_attribute("value")


@needs_browser
def test_the_playground_streams_both_answers(page, server):
    from selenium.webdriver.support.ui import Select

    page.get(server["url"] + "/#play")
    _until(page, lambda: Select(_by(page, "#play-a")).options, what="the model pickers")
    Select(_by(page, "#play-a")).select_by_value("tiny")
    _by(page, "#play-sys").send_keys("You are a pirate.")
    for field, value in (("#play-max", "12"), ("#play-seed", "7")):
        _by(page, field).clear()
        _by(page, field).send_keys(value)
    b_model = Select(_by(page, "#play-b")).first_selected_option.get_attribute("value")
    assert "from openai import OpenAI" in page.execute_script("return document.getElementById('play-code').textContent")
    _by(page, "#play-send").click()
    for side in ("a", "b"):
        out = _by(page, f"#out-{side}")
        _until(page, lambda: out.get_attribute("data-state") in ("done", "error"), what=f"answer {side}")
        assert out.get_attribute("data-state") == "done", _msgs(page)
        assert int(out.get_attribute("data-chunks")) >= 2 and out.text  # arrived in pieces
    assert _by(page, "#out-b-title").text == b_model



@needs_browser
def test_the_evals_tab_lists_pass_rates_and_shows_two_runs_side_by_side(page, server):
    import openai

    c = openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0, timeout=60)
    ev = c.evals.create(name="browser-eval", data_source_config={"type": "custom", "item_schema": {
        "type": "object", "properties": {"q": {"type": "string"}}}, "include_sample_schema": True},
        testing_criteria=[{"type": "string_check", "name": "said-something", "operation": "ne",
                           "input": "{{sample.output_text}}", "reference": ""}])
    questions = [{"item": {"q": q}} for q in ("Hello!", "What is 2 + 2?", "Name a colour.")]
    for name, temperature in (("greedy", 0), ("sampled", 1)):
        c.evals.runs.create(ev.id, name=name, data_source={
            "type": "completions", "model": "tiny", "sampling_params": {"temperature": temperature, "seed": 3,
                                                                         "max_completion_tokens": 6},
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]},
            "source": {"type": "file_content", "content": questions}})
    page.get(server["url"] + "/#evals")
    row = f'#evals tr[data-eval="{ev.id}"]'
    _until(page, lambda: page.find_elements("css selector", row) and "greedy" in _by(page, row).text
           and "sampled" in _by(page, row).text and "in_progress" not in _by(page, row).text
           and "queued" not in _by(page, row).text, what="both runs in the evals table", timeout=120)
    assert "browser-eval" in _by(page, row).text and "said-something" in _by(page, row).text
    assert "(3/3)" in _by(page, row).text or "/3)" in _by(page, row).text  # each run: passed / total
    _by(page, row + " a").click()
    _until(page, lambda: len(page.find_elements("css selector", "#runs tbody tr")) == 2, what="the eval's two runs")
    rates = [e.text for e in page.find_elements("css selector", "#runs td.rate")]
    assert all(r.endswith("%") for r in rates), rates
    _by(page, "#cmp-show").click()
    _until(page, lambda: len(page.find_elements("css selector", "#compare tbody tr")) == 3, what="the side-by-side rows")
    heads = (_by(page, "#cmp-a-head").text, _by(page, "#cmp-b-head").text)
    assert {h.split(" ")[0] for h in heads} == {"greedy", "sampled"}, heads
    cells = page.find_elements("css selector", "#compare td.cmp")
    assert len(cells) == 6 and all(("pass" in td.text or "fail" in td.text) for td in cells)
    assert "What is 2 + 2?" in _by(page, "#compare tbody").text


@needs_browser
def test_at_a_phone_width_nothing_overflows_and_the_pair_stacks(page, server):
    page.get(server["url"] + "/#play")
    _until(page, lambda: _by(page, "#tab-play").is_displayed(), what="the playground")
    page.set_window_size(390, 844)
    try:
        _until(page, lambda: page.execute_script("return window.innerWidth") <= 400, what="the narrow window")
        for tab in ("play", "jobs", "data"):
            page.get(server["url"] + "/#" + tab)
            _until(page, lambda: _by(page, f"#tab-{tab}").is_displayed(), what=f"the {tab} tab")
            assert page.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"), tab
        page.get(server["url"] + "/#play")
        _until(page, lambda: _by(page, "#tab-play").is_displayed(), what="the playground")
        assert _by(page, "#out-b").location["y"] > _by(page, "#out-a").location["y"]  # one column
    finally:
        page.set_window_size(1280, 900)
