"""The README walkthrough on the real default model (SmolLM2-135M-Instruct): upload the pirate
data, a short LoRA job, and chat with the fine-tuned model through the same server."""

import time
from pathlib import Path

import openai
import pytest
from servekit import assert_serves_folder, served_greedy, serving

KEY = "sk-local"
PIRATE = Path(__file__).parent.parent / "examples" / "pirate.jsonl"


@pytest.mark.integration
def test_pirate_walkthrough_on_the_default_model(tmp_path):
    from tailor import models
    from tailor.serve.app import create_app
    from tailor.serve.registry import Registry
    from tailor.service import Service

    reg = Registry.load(["default"], dtype="float32", max_batch=4, max_len=512)
    service = Service(tmp_path / "state")
    app = create_app(reg, api_key=KEY, service=service)
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
        # the served fine-tune is the saved adapter (loaded here with plain peft), not its base
        question = [{"role": "user", "content": "How many legs does a goat have?"}]
        tokens, _ = assert_serves_folder(client, job.fine_tuned_model, service.store.root / "jobs" / job.id / "out" /
                                         "final", question, 16, base=models.local_folder("default"))
        assert tokens != served_greedy(client, "default", question, 16)[0], "the fine-tune answers as its base"
