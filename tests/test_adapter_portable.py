"""Portable adapters: what a run records as its base loads on any machine, from any working
directory and any $TAILOR_HOME, with plain peft (base given explicitly) and with tailor (by the
recorded reference)."""

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from trainkit import write_chat_jsonl

from tailor import models
from tailor.errors import TailorError
from tailor.train import TrainConfig, train

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_REF = "default:SmolLM2-135M-Instruct.Q4_1"


def _train(model: str, data: Path, out: Path):
    cfg = TrainConfig(data=str(data), model=model, out=str(out), max_steps=3, batch_size=4, lr=2e-2,
                      dtype="float32", eval_samples=0, eval_every=100, lora_dropout=0.0)
    return train(cfg, quiet=True)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _ids():
    return torch.tensor([[1, 5, 40, 77, 120, 9, 33, 2]])


@pytest.fixture
def fake_default(tmp_path, monkeypatch, tiny_model_dir):
    """The embedded default without SmolLM2: a GGUF file of the real name whose 'conversion'
    copies the tiny model into $TAILOR_HOME/models, as convert_gguf lays it out."""
    gguf = tmp_path / "pkg" / DEFAULT_GGUF
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")

    def convert(path, exact=False):
        target = models.tailor_home() / "models" / f"{Path(path).stem}-0123456789abcdef"
        if not target.exists():
            shutil.copytree(tiny_model_dir, target)
            (target / "tailor-source.txt").write_text(f"converted from {Path(path).resolve()}\n")
        return target

    monkeypatch.setattr(models, "default_gguf_path", lambda: gguf)
    monkeypatch.setattr(models, "convert_gguf", convert)
    monkeypatch.setenv("TAILOR_HOME", str(tmp_path / "home-a"))
    return gguf


def test_adapter_from_a_relative_base_loads_elsewhere(tmp_path, tiny_model_dir, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    work = tmp_path / "work"
    shutil.copytree(tiny_model_dir, work / "bases" / "tiny")
    data = write_chat_jsonl(tmp_path / "train.jsonl", 16)
    monkeypatch.chdir(work)
    monkeypatch.setenv("TAILOR_HOME", str(tmp_path / "home-a"))
    final = _train("bases/tiny", data, work / "runs" / "x").final  # the base typed as a relative path
    base_abs = (work / "bases" / "tiny").resolve()
    recorded = json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(base_abs), "a local base is recorded as an absolute path"
    card = (final / "README.md").read_text()
    assert f"- Base model: `{base_abs}`" in card
    before = _logits(models.load(str(final), dtype="float32", device="cpu")[0], _ids())

    copied = tmp_path / "elsewhere" / "adapter"
    shutil.copytree(final, copied)
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    monkeypatch.setenv("TAILOR_HOME", str(tmp_path / "home-b"))
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_abs)), str(copied)).eval()
    torch.testing.assert_close(_logits(plain, _ids()), before, atol=1e-5, rtol=0)
    by_ref = models.load(str(copied), dtype="float32", device="cpu")[0]
    torch.testing.assert_close(_logits(by_ref, _ids()), before, atol=1e-5, rtol=0)


def test_default_base_is_recorded_by_its_stable_name(tmp_path, tiny_model_dir, monkeypatch, fake_default):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = write_chat_jsonl(tmp_path / "train.jsonl", 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        final = _train("default", data, tmp_path / "run").final
    # peft cannot read a config behind `default:...`: saving must not make it guess (and warn)
    assert not [w for w in caught if "Could not find a config file" in str(w.message)]
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == DEFAULT_REF
    card = (final / "README.md").read_text()
    assert f"- Base model: `{DEFAULT_REF}`" in card
    assert "PeftModel.from_pretrained(" in card and "home-a" in card, "load instructions and provenance"
    before = _logits(models.load(str(final), dtype="float32", device="cpu")[0], _ids())

    copied = tmp_path / "copy" / "final"
    shutil.copytree(final, copied)
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    monkeypatch.setenv("TAILOR_HOME", str(tmp_path / "home-b"))  # a machine that never converted it
    by_ref = models.load(str(copied), dtype="float32", device="cpu")[0]
    torch.testing.assert_close(_logits(by_ref, _ids()), before, atol=1e-5, rtol=0)
    assert (tmp_path / "home-b" / "models").is_dir(), "the default was converted into the new home"
    base = AutoModelForCausalLM.from_pretrained(str(models.local_folder(DEFAULT_REF)))
    plain = PeftModel.from_pretrained(base, str(copied)).eval()
    torch.testing.assert_close(_logits(plain, _ids()), before, atol=1e-5, rtol=0)

    from tailor.cli import main

    assert main(["merge", str(copied), "--out", "merged"]) == 0
    merged = AutoModelForCausalLM.from_pretrained("merged").eval()
    torch.testing.assert_close(_logits(merged, _ids()), before, atol=1e-4, rtol=0)


def test_portable_ref_of_each_kind(tmp_path, tiny_model_dir, monkeypatch, fake_default):
    assert models.portable_ref(None) == DEFAULT_REF
    assert models.portable_ref("default") == DEFAULT_REF
    assert models.portable_ref(DEFAULT_REF) == DEFAULT_REF
    assert models.portable_ref("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    cache = models.local_folder("default")
    assert models.portable_ref(str(cache)) == DEFAULT_REF, "tailor's GGUF cache is recorded as its GGUF"
    assert models.portable_ref(str(fake_default)) == DEFAULT_REF
    other = tmp_path / "mine.gguf"
    other.write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    assert models.portable_ref("mine.gguf") == str(other.resolve())
    assert models.portable_ref(str(tiny_model_dir)) == str(tiny_model_dir.resolve())


def test_a_default_name_of_another_gguf_is_refused(fake_default):
    with pytest.raises(TailorError, match="SmolLM2-135M-Instruct.Q8_0.*ships SmolLM2-135M-Instruct.Q4_1"):
        models.resolve("default:SmolLM2-135M-Instruct.Q8_0")


def _adapter_recording(tmp_path, tiny_model_dir, base: str) -> Path:
    from infer_kit import save_lora

    folder = save_lora(tiny_model_dir, tmp_path / "runs" / "x" / "final")
    meta = json.loads((folder / "adapter_config.json").read_text())
    meta["base_model_name_or_path"] = base
    (folder / "adapter_config.json").write_text(json.dumps(meta))
    return folder


def test_old_adapters_with_a_cache_path_still_load(tmp_path, tiny_model_dir, fake_default):
    """Before portable references, the default was recorded as the training machine's cache path."""
    stale = "/home/someone/.cache/tailor/models/SmolLM2-135M-Instruct.Q4_1-633dbcd9e5fcc268"
    adapter = _adapter_recording(tmp_path, tiny_model_dir, stale)
    assert models.adapter_base(adapter) == DEFAULT_REF
    model, _ = models.load(str(adapter), dtype="float32", device="cpu")
    assert model.config.num_hidden_layers == 2


def test_old_adapters_with_a_relative_path_still_load(tmp_path, tiny_model_dir, monkeypatch):
    """A relative base was relative to where training ran: found from the adapter's folders."""
    shutil.copytree(tiny_model_dir, tmp_path / "bases" / "tiny")
    adapter = _adapter_recording(tmp_path, tiny_model_dir, "bases/tiny")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert Path(models.adapter_base(adapter)) == tmp_path / "bases" / "tiny"
    model, _ = models.load(str(adapter), dtype="float32", device="cpu")
    assert model.config.num_hidden_layers == 2


def test_a_missing_base_names_the_adapter_and_the_fix(tmp_path, tiny_model_dir):
    adapter = _adapter_recording(tmp_path, tiny_model_dir, str(tmp_path / "gone" / "base"))
    with pytest.raises(TailorError, match=f"Adapter {adapter}.*gone/base.*base_model_name_or_path"):
        models.load(str(adapter), dtype="float32", device="cpu")


@pytest.mark.integration
def test_real_default_adapter_records_stable_name_and_loads(tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = write_chat_jsonl(tmp_path / "train.jsonl", 8)
    cfg = TrainConfig(data=str(data), model="default", out=str(tmp_path / "run"), max_steps=1, batch_size=2,
                      dtype="float32", eval_samples=0, eval_every=100, val_split=0, lora_r=4)
    final = train(cfg, quiet=True).final
    ref = json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert ref == f"default:{models.default_gguf_path().stem}"
    ids = torch.tensor([[1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2]])
    copied = tmp_path / "copy"
    shutil.copytree(final, copied)
    monkeypatch.chdir(tmp_path)
    by_ref = models.load(str(copied), dtype="float32", device="cpu")[0]
    # the cached default is stored in bf16 (models._storage_dtype): compare both in fp32
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(models.local_folder(ref)),
                                                                           dtype=torch.float32), str(copied)).eval()
    torch.testing.assert_close(_logits(plain, ids), _logits(by_ref, ids), atol=1e-5, rtol=0)
