"""Whole runs on the tiny model: artifacts, equivalences, determinism, outputs that load without tailor."""

import json

import pytest
import torch
from trainkit import write_chat_jsonl

from tailor.errors import TailorError, UsageError
from tailor.train import TrainConfig, train



@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_chat_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", 48)


def _cfg(tiny_model_dir, data_file, out, **kw):
    base = dict(data=str(data_file), model=str(tiny_model_dir), out=str(out), max_steps=6, batch_size=4,
                lr=5e-3, dtype="float32", eval_samples=1, sample_max_tokens=8, lora_dropout=0.0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    return train(_cfg(tiny_model_dir, data_file, out, max_steps=12, lr=1e-2, eval_every=6, save_every=4,
                      lora_dropout=0.1, dtype="auto"), quiet=True)


def test_lora_run_writes_standard_outputs(lora_run):
    out = lora_run.out
    assert lora_run.final == out / "final"
    assert {p.name for p in out.iterdir()} >= {"metrics.jsonl", "eval.jsonl", "loss.png", "config.yaml", "final"}
    ckpts = sorted(p.name for p in out.glob("checkpoint-*"))
    assert ckpts == ["checkpoint-000008", "checkpoint-000012"], "keep-checkpoints 2 keeps the newest two"
    assert not list(out.glob(".*")), "no temporary folders left behind"
    meta = json.loads((out / "checkpoint-000012" / "meta.json").read_text())
    assert meta["step"] == 12 and meta["config"]["method"] == "lora" and len(meta["losses"]) == 12
    assert {"adapter_model.safetensors", "adapter_config.json", "state.pt", "tokenizer.json"} <= {
        p.name for p in (out / "checkpoint-000012").iterdir()}
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 13))
    assert set(lines[0]) >= {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "trained_tokens"}
    assert lines[-1]["loss"] < lines[0]["loss"], "the loss goes down"
    evals = [json.loads(ln) for ln in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [6, 12]
    assert evals[-1]["samples"] and {"prompt", "reference", "answer"} <= set(evals[-1]["samples"][0])
    final = {p.name for p in (out / "final").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md",
            "generation_config.json"} <= final
    card = (out / "final" / "README.md").read_text()
    assert "final validation loss" in card and "lora_r" in card


def test_lora_adapter_loads_with_plain_peft(lora_run, tiny_model_dir):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = lora_run.final
    cfg = json.loads((final / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_model_dir)
    model = AutoPeftModelForCausalLM.from_pretrained(str(final)).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(final))
    ids = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, base(ids).logits), "the adapter changes the output"
    gen = json.loads((final / "generation_config.json").read_text())
    assert tok.convert_tokens_to_ids("<|im_end|>") in ([gen["eos_token_id"]] if isinstance(gen["eos_token_id"], int) else gen["eos_token_id"])


def test_merge_equals_base_plus_adapter(lora_run, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from tailor.cli import main

    assert main(["merge", str(lora_run.final), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    peft_model = AutoPeftModelForCausalLM.from_pretrained(str(lora_run.final)).eval()
    ids = torch.randint(3, merged.config.vocab_size, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft_model(ids).logits, atol=1e-4, rtol=0)
    assert (tmp_path / "merged" / "tokenizer.json").is_file()


def test_full_run_output_loads_in_plain_transformers(tiny_model_dir, data_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = train(_cfg(tiny_model_dir, data_file, tmp_path, method="full", lr=1e-3, max_steps=4), quiet=True)
    final = res.final
    assert (final / "model.safetensors").is_file() and (final / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(str(final))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    changed = [n for (n, p), (_, q) in zip(model.named_parameters(), base.named_parameters()) if not torch.equal(p, q)]
    assert len(changed) == len(list(base.parameters())), "every weight was trained"
    tok = AutoTokenizer.from_pretrained(str(final))
    assert "<|im_start|>" in tok.chat_template
    assert res.losses[-1] < res.losses[0]


def test_grad_accum_equals_one_big_batch(tiny_model_dir, data_file, tmp_path):
    """4 micro-batches of 1 and one batch of 4: same loss, same gradient norm, same weights after."""
    runs = []
    for name, kw in (("big", dict(batch_size=4, grad_accum=1)), ("accum", dict(batch_size=1, grad_accum=4))):
        res = train(_cfg(tiny_model_dir, data_file, tmp_path / name, method="full", lr=1e-3, max_steps=3,
                         eval_every=100, **kw), quiet=True)
        metrics = [json.loads(ln) for ln in (res.out / "metrics.jsonl").read_text().splitlines()]
        from safetensors.torch import load_file

        runs.append((metrics, load_file(str(res.final / "model.safetensors"))))
    (m1, w1), (m2, w2) = runs
    for a, b in zip(m1, m2):
        assert a["trained_tokens"] == b["trained_tokens"]
        assert abs(a["loss"] - b["loss"]) < 1e-5
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-5 * max(1.0, a["grad_norm"])
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=0)


def test_same_seed_same_losses(tiny_model_dir, data_file, tmp_path):
    a = train(_cfg(tiny_model_dir, data_file, tmp_path / "a", lora_dropout=0.1, dtype="auto", eval_every=100), quiet=True)
    b = train(_cfg(tiny_model_dir, data_file, tmp_path / "b", lora_dropout=0.1, dtype="auto", eval_every=100), quiet=True)
    c = train(_cfg(tiny_model_dir, data_file, tmp_path / "c", lora_dropout=0.1, dtype="auto", eval_every=100,
                   seed=7), quiet=True)
    assert a.losses == b.losses
    assert a.losses != c.losses


def test_bad_dataset_stops_before_the_model_loads(tiny_model_dir, tmp_path, monkeypatch):
    import transformers

    from tailor.data import DataError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                   '{"messages": [{"role": "user", "content": "hi"}\n')

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model)
    with pytest.raises(DataError, match="line 2"):
        train(_cfg(tiny_model_dir, bad, tmp_path / "o"), quiet=True)


def test_cli_config_file_flags_and_unknown_keys(tiny_model_dir, data_file, tmp_path, capsys):
    from tailor.cli import main

    yml = tmp_path / "run.yaml"
    yml.write_text(f"model: {tiny_model_dir}\ndata: {data_file}\nmax_steps: 50\nlr: 0.01\ndtype: float32\n")
    out = tmp_path / "out"
    assert main(["train", str(yml), "--max-steps", "2", "--out", str(out), "--eval-samples", "0", "--quiet"]) == 0
    saved = (out / "config.yaml").read_text()
    assert "max_steps: 2" in saved and "lr: 0.01" in saved, "flags override the file, the file the defaults"
    yml.write_text("data: x.jsonl\nlearning_rate: 0.1\n")
    assert main(["train", str(yml)]) == 2
    err = capsys.readouterr().err
    assert "learning_rate" in err and "Valid keys" in err and "max_steps" in err


def test_qlora_on_cpu_is_a_clear_error(tiny_model_dir, data_file, tmp_path):
    with pytest.raises(TailorError, match="CUDA"):
        train(_cfg(tiny_model_dir, data_file, tmp_path, qlora=True, device="cpu"), quiet=True)


def test_method_defaults_and_validation():
    from tailor.train.config import resolve

    assert resolve(TrainConfig(data="x", method="lora")).lr == 2e-4
    assert resolve(TrainConfig(data="x", method="full")).lr == 2e-5
    assert resolve(TrainConfig(data="x", method="full", lr=1e-4)).lr == 1e-4
    with pytest.raises(UsageError) as err:
        resolve(TrainConfig(data="x", batch_size=0, grad_accum=0, val_split=2))
    assert "batch_size" in str(err.value) and "grad_accum" in str(err.value) and "val_split" in str(err.value)
