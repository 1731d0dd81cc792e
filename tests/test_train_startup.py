"""What a run costs around its steps (issue 13: time to the first step, and after the last one):
the collector during set-up, the interpreter's exit, the GGUF metadata lookup, the loss curve."""

import gc
import subprocess
import sys

import numpy as np
import pytest
from trainkit import write_chat_jsonl

from tailor import gguf_header
from tailor.errors import TailorError
from tailor.train import TrainConfig, train


@pytest.fixture
def fresh_gc():
    gc.unfreeze()
    assert gc.isenabled()
    yield
    gc.unfreeze()
    gc.enable()


def _cfg(tiny_model_dir, data, out, **kw):
    return TrainConfig(data=str(data), model=str(tiny_model_dir), out=str(out), max_steps=2, batch_size=4,
                       eval_samples=0, dtype="float32", **kw)


def test_setup_runs_without_the_collector_and_the_steps_skip_its_objects(fresh_gc, tiny_model_dir, tmp_path,
                                                                         monkeypatch):
    from tailor.train import session, setup

    seen = {}
    real_load, real_log = setup.load_model, session.Session.log_step

    def load_model(*a, **k):
        seen.setdefault("collector on while loading", gc.isenabled())
        return real_load(*a, **k)

    def log_step(self, record):
        seen.setdefault("collector on at step 1", gc.isenabled())
        seen.setdefault("frozen at step 1", gc.get_freeze_count())
        real_log(self, record)

    monkeypatch.setattr(setup, "load_model", load_model)
    monkeypatch.setattr(session.Session, "log_step", log_step)
    data = write_chat_jsonl(tmp_path / "train.jsonl", 12)
    assert train(_cfg(tiny_model_dir, data, tmp_path / "run"), quiet=True).final is not None
    assert seen.pop("frozen at step 1") > 10_000, "set-up's objects (torch, the model) are frozen"
    assert seen == {"collector on while loading": False, "collector on at step 1": True}
    assert gc.isenabled() and gc.get_freeze_count() == 0, "the process gets its collector back as it was"


def test_a_setup_that_fails_gives_the_collector_back(fresh_gc, tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user"}]}\n')
    with pytest.raises(TailorError):
        train(_cfg(tiny_model_dir, bad, tmp_path / "run"), quiet=True)
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_an_outer_freeze_is_left_alone(fresh_gc, tiny_model_dir, tmp_path):
    """A host process that froze its own objects keeps them frozen after a run."""
    gc.freeze()
    data = write_chat_jsonl(tmp_path / "train.jsonl", 12)
    train(_cfg(tiny_model_dir, data, tmp_path / "run"), quiet=True)
    assert gc.isenabled() and gc.get_freeze_count() > 0, "the host's objects stay frozen"


def test_the_command_line_freezes_everything_before_the_interpreter_exits(fresh_gc, monkeypatch, capsys):
    """The interpreter's last collections walk every object torch and transformers made (~1.5 s
    on a 2-core CPU): the program skips them; a caller of main(argv) in a live process does not."""
    from tailor.cli import main

    assert main([]) == 2 and gc.get_freeze_count() == 0
    monkeypatch.setattr(sys, "argv", ["tailor"])
    assert main() == 2 and gc.get_freeze_count() > 0


def _write_gguf(path):
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), "llama")
    w.add_string("general.license", "apache-2.0")
    w.add_array("tokenizer.ggml.tokens", ["a", "bé", "<|im_end|>"] * 50)
    w.add_array("tokenizer.ggml.scores", [0.5, -1.0, 2.0])
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_bool("tokenizer.ggml.add_bos_token", False)
    w.add_string("tokenizer.ggml.pre", "smollm")
    w.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_field_reads_one_key_as_the_gguf_reader_does(tmp_path):
    from gguf import GGUFReader

    path = _write_gguf(tmp_path / "m.gguf")
    fields = GGUFReader(str(path)).fields
    for key in ("general.license", "tokenizer.ggml.pre", "llama.block_count", "llama.rope.freq_base",
                "tokenizer.ggml.add_bos_token", "tokenizer.ggml.tokens", "tokenizer.ggml.scores"):
        assert gguf_header.field(path, key) == pytest.approx(fields[key].contents()), key
    assert gguf_header.field(path, "general.nothing") is None


def test_gguf_field_refuses_a_file_that_is_not_gguf(tmp_path):
    f = tmp_path / "x.gguf"
    f.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="not a GGUF file"):
        gguf_header.field(f, "general.license")


def test_loss_curve_is_drawn_without_pyplot(tmp_path):
    """pyplot (a GUI backend registry, ~0.2 s to import) is not needed to write a PNG."""
    code = ("import sys; from pathlib import Path; from tailor.train.outputs import plot_losses; "
            f"p = plot_losses(Path({str(tmp_path)!r}), [{{'step': 1, 'loss': 2.0}}, {{'step': 2, 'loss': 1.5}}], "
            "[{'step': 2, 'val_loss': 1.7}]); "
            "assert 'matplotlib.pyplot' not in sys.modules; print(p)")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    png = (tmp_path / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_full_final_links_the_weights_of_the_last_checkpoint(tiny_model_dir, tmp_path):
    """finish() saves a checkpoint of the last step, then final/: the same weights, written once."""
    from transformers import AutoModelForCausalLM

    data = write_chat_jsonl(tmp_path / "train.jsonl", 12)
    res = train(_cfg(tiny_model_dir, data, tmp_path / "run", method="full", lr=1e-3), quiet=True)
    ckpt = res.out / "checkpoint-000002"
    assert (res.final / "model.safetensors").samefile(ckpt / "model.safetensors")
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "README.md",
            "loss.png"} <= {p.name for p in res.final.iterdir()}
    assert not list(res.out.glob(".*")), "no temporary folders left behind"
    final = AutoModelForCausalLM.from_pretrained(str(res.final))
    assert final.generation_config.eos_token_id is not None
    saved = AutoModelForCausalLM.from_pretrained(str(ckpt))
    for (name, a), (_, b) in zip(final.state_dict().items(), saved.state_dict().items()):
        assert a.equal(b), name
