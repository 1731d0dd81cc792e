"""A tiny served model that always answers the same text: a 2-layer Llama built by hand as a
bigram table. Its attention and MLP outputs are zero, so each position's hidden state is its
own token's embedding; the embeddings of the tokens in the chain "\\n" -> reply tokens ->
<|im_end|> are orthogonal, and the untied output head maps each to the next. Greedy or not
(the margin is ~240 nats), it answers `reply` to any chat prompt: real enough to test model
graders and eval runs through the real registry and engine, with known answers."""

from __future__ import annotations

from pathlib import Path

from tiny import make_model, make_tokenizer


def save_fixed_reply(folder: Path, reply: str) -> Path:
    import torch

    tok = make_tokenizer()
    model = make_model(tok, tie=False)
    last = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)[-1]
    chain = [last] + tok.encode(reply, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
    assert len(set(chain)) == len(chain), f"{reply!r} repeats a token; pick another reply"
    hidden = model.config.hidden_size
    assert len(chain) < hidden
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.zero_()
        emb = model.get_input_embeddings().weight
        emb.zero_()
        emb[:, hidden - 1] = 1.0  # every other token points one way...
        for i, t in enumerate(chain):
            emb[t].zero_()
            emb[t, i] = 1.0  # ...each chain token its own
        head = model.get_output_embeddings().weight
        head.zero_()
        for i, t in enumerate(chain[1:]):
            head[t, i] = 30.0  # after chain[i] comes chain[i + 1]
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
