"""The README walkthrough on the real default model (SmolLM2-135M-Instruct): upload the pirate
data, a short LoRA job, and chat with the fine-tuned model through the same server."""

import time
from pathlib import Path

import openai
import pytest
from servekit import serving

KEY = "sk-local"
PIRATE = Path(__file__).parent.parent / "examples" / "pirate.jsonl"


@pytest.mark.integration
def test_pirate_walkthrough_on_the_default_model(tmp_path):
    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry
    from tailor.service import Service

    reg = Registry.load(["default"], dtype="float32", max_batch=4, max_len=512)
    app = create_app(reg, api_key=KEY, service=Service(tmp_path / "state"))
    with serving(app, join_timeout=60) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
        f = client.files.create(file=PIRATE.open("rb"), purpose="fine-tune")
        assert client.files.wait_for_processing(f.id).status == "processed"
        job = client.fine_tuning.jobs.create(model="default", training_file=f.id, suffix="pirate",
                                             extra_body={"tailor": {"max_steps": 3, "eval_samples": 0}})
        deadline = time.time() + 900
        while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
            assert time.time() < deadline
            time.sleep(1)
        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model.startswith("ft:default:default:pirate:")
        assert [e.message for e in client.fine_tuning.jobs.list_events(job.id)][0] == "The job has successfully completed"
        r = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=16, temperature=0,
                                           messages=[{"role": "user", "content": "How many legs does a goat have?"}])
        assert r.choices[0].message.content
