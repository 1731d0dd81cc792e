"""A real uvicorn server on a free loopback port, in a thread, for tests that talk HTTP."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app, *, join_timeout: float = 15):
    """Run `app` until the block ends; yields its base URL (http://127.0.0.1:PORT)."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline and thread.is_alive():
        time.sleep(0.05)
    assert srv.started, "the test server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(join_timeout)



def greedy_from_folder(folder, messages: list[dict], n: int, base=None) -> tuple[list[int], list[float], object]:
    """A saved model loaded with plain transformers/peft (a full model; or a LoRA adapter, on
    `base` when given, else on the base its config names): n greedy tokens for `messages`, their
    log-probabilities, and the tokenizer. No stop token ends it: the caller cuts where the server
    stopped."""
    from pathlib import Path

    import torch
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    elif base is None:
        model = AutoPeftModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    else:  # e.g. the embedded default, which an adapter names in a form peft cannot fetch
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                                          str(folder))
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    start, logprobs = len(ids), []
    with torch.no_grad():
        for _ in range(n):
            row = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
            ids.append(int(row.argmax()))
            logprobs.append(float(row[ids[-1]]))
    return ids[start:], logprobs, tok


def served_greedy(client, model: str, messages: list[dict], n: int) -> tuple[list[str], list[float], str]:
    """A served model's greedy answer through the API: its tokens (as text), their log-probabilities,
    and the finish reason."""
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=n, temperature=0, logprobs=True)
    assert r.model == model
    content = r.choices[0].logprobs.content
    return [c.token for c in content], [c.logprob for c in content], r.choices[0].finish_reason


def assert_serves_folder(client, model: str, folder, messages: list[dict], n: int = 8, base=None):
    """The served `model` answers as the saved `folder` loaded with plain transformers/peft: the
    same greedy tokens with the same log-probabilities, stopping where the folder's model emits
    its end of turn (which the server reports as the last token, as vLLM does). Returns the
    served (tokens, log-probabilities)."""
    import pytest

    tokens, logprobs, finish = served_greedy(client, model, messages, n)
    want, want_logprobs, tok = greedy_from_folder(folder, messages, len(tokens), base)
    assert tokens == [tok.decode([t]) for t in want], model
    assert logprobs == pytest.approx(want_logprobs, abs=1e-4), model
    if finish == "stop":
        assert tok.convert_ids_to_tokens(want[-1]) in ("<|im_end|>", tok.eos_token), model
    else:
        assert finish == "length" and len(tokens) == n, model
    return tokens, logprobs
